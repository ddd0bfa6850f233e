"""The HTTP API: the editor's contract, plus list, events, preflight and health.

Thin on purpose: parse, check access, call the cluster API, map errors (``errors.py``).
Every handler is async and only awaits actor calls, so a replica never blocks its loop.
Status polls and event streams are answered from the replica's status cache (fed by the
status actor's change feed, ``cluster/status_cache.py``): a poll is a lookup of bytes
rendered once per version.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import (
    FileResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi_offline import FastAPIOffline
from ray.exceptions import RayError

from cluster.api import CutfarmCluster
from cluster.errors import ClusterError, JobNotFoundError
from cluster.jobs import JobState, JobStatus
from cluster.settings import Settings
from render.config import is_valid_job_id
from render.errors import ConfigError, RenderError
from render.objectstore import content_disposition, presigned_get

from .errors import NOT_FOUND, HTTPProblem, problem_response
from .security import BodyLimit, check_bearer, check_download, download_url

log = logging.getLogger("cutfarm.http")
#: Bytes per message of a download streamed from an export folder.
DOWNLOAD_CHUNK_BYTES = 1 << 20
MEDIA_TYPES = {"mp4": "video/mp4", "webm": "video/webm"}
#: How long an events stream waits for a change before sending a keep-alive comment (under
#: the 30-60 s idle timeouts of common proxies and load balancers).
EVENT_KEEPALIVE_SECONDS = 15.0
#: What an EventSource waits before reconnecting (the ``retry:`` field), in milliseconds.
EVENT_RETRY_MS = 2000
DEFAULT_PAGE = 100
MAX_PAGE = 1000
#: A rendered status answer with a signed download link is rendered again after this long,
#: so a link handed out stays valid for nearly its full lifetime.
LINK_RENDER_SECONDS = 60.0

ClusterProvider = Callable[[], CutfarmCluster]


def create_app(settings: Settings, get_cluster: ClusterProvider) -> FastAPI:
    # FastAPIOffline: the same FastAPI app, with /docs served from bundled assets, not a CDN.
    app = FastAPIOffline(
        title="cutfarm",
        version="1",
        description="Frame-accurate server-side export for browser video editors.",
    )
    app.state.settings = settings
    app.state.get_cluster = get_cluster
    # The last middleware added is the outermost: CORS must wrap the body limit so a 413
    # still carries CORS headers the browser needs to let the editor read it.
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST", "DELETE", "HEAD", "OPTIONS"],
                           allow_headers=["Authorization", "Content-Type", "Range"],
                           expose_headers=["Content-Disposition", "Content-Length", "ETag"])
    for kind in (HTTPProblem, RenderError, ClusterError, RayError):
        app.add_exception_handler(kind, _problem)
    app.include_router(router)
    return app


async def _problem(_: Request, exc: Exception) -> JSONResponse:
    return problem_response(exc)


def _token(request: Request) -> str | None:
    token: str | None = request.app.state.settings.token
    return token


def _authorized(request: Request) -> None:
    check_bearer(_token(request), request.headers.get("authorization"))


def _cluster(request: Request) -> CutfarmCluster:
    cluster: CutfarmCluster = request.app.state.get_cluster()
    return cluster


def _job_id(job_id: str) -> str:
    if not is_valid_job_id(job_id):
        raise HTTPProblem(404, NOT_FOUND)
    return job_id


def _view(request: Request, status: JobStatus) -> dict[str, Any]:
    return _status_view(status, _token(request))


def _status_view(status: JobStatus, token: str | None) -> dict[str, Any]:
    """The status object of the API (the editor's fields first, then ours)."""
    body = status.editor_view()
    if status.download_url is not None:
        body["downloadUrl"] = download_url(status.job_id, token)
    body.update(stage=status.stage, etaSeconds=status.eta_seconds,
                createdAt=status.created_at, updatedAt=status.updated_at)
    if status.warnings:
        body["warnings"] = status.warnings
    if status.interrupted_at is not None:
        body["interruptedAt"] = status.interrupted_at
    return body


def _status_answer(status: JobStatus, token: str | None) -> tuple[bytes, float | None]:
    """The bytes of the status answer, exactly as ``JSONResponse`` renders them, and how
    long they may be served again (a signed download link is renewed)."""
    body = json.dumps(_status_view(status, token), ensure_ascii=False, allow_nan=False,
                      indent=None, separators=(",", ":")).encode("utf-8")
    renew = token is not None and status.download_url is not None
    return body, (LINK_RENDER_SECONDS if renew else None)


async def _read_config(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ConfigError("the body must be a JSON object")
    return data


router = APIRouter()


@router.post("/api/export", summary="Create an export job (the editor's config, schema v1)")
async def create_export(request: Request) -> JSONResponse:
    _authorized(request)
    status = await _cluster(request).submit(await _read_config(request))
    body: dict[str, Any] = {"jobId": status.job_id, "status": status.status.value,
                            "message": "Export job created"}
    if status.warnings:  # only added: a clean config gets exactly the editor's answer
        body["warnings"] = status.warnings
    return JSONResponse(body)


@router.post("/api/export/plan", summary="Preflight: the plan for a config, no job created")
async def plan_export(request: Request) -> JSONResponse:
    _authorized(request)
    preflight = await _cluster(request).preflight(await _read_config(request))
    return JSONResponse(preflight.summary)


@router.get("/api/export", summary="List jobs in arrival order, by state, a page at a time")
async def list_exports(request: Request, status: str | None = None,
                       limit: int = DEFAULT_PAGE, cursor: str | None = None) -> JSONResponse:
    _authorized(request)
    states = None
    if status:
        try:
            states = [JobState(s.strip()) for s in status.split(",") if s.strip()]
        except ValueError:
            allowed = ", ".join(s.value for s in JobState)
            raise HTTPProblem(400, f"status must be one of {allowed}") from None
    if not 1 <= limit <= MAX_PAGE:
        raise HTTPProblem(400, f"limit must be between 1 and {MAX_PAGE}")
    after = 0
    if cursor:
        if not cursor.isascii() or not cursor.isdigit() or len(cursor) > 18:
            raise HTTPProblem(400, "cursor is not one this server gave out (use nextCursor)")
        after = int(cursor)
    jobs, nxt = await _cluster(request).list_page(states, after, limit)
    return JSONResponse({"jobs": [_view(request, j) for j in jobs],
                         "nextCursor": str(nxt) if nxt is not None else None})


@router.get("/api/export/{job_id}/status", summary="A job's status (the editor polls this)")
async def export_status(request: Request, job_id: str) -> Response:
    _authorized(request)
    token = _token(request)
    body = await _cluster(request).status_body(_job_id(job_id), token,
                                               lambda s: _status_answer(s, token))
    return Response(body, media_type="application/json")


@router.get("/api/export/{job_id}/pieces",
            summary="Where each piece of a running or finished job ran (operators)")
async def export_pieces(request: Request, job_id: str) -> JSONResponse:
    _authorized(request)
    pieces = await _cluster(request).pieces(_job_id(job_id))
    return JSONResponse({"jobId": job_id, "pieces": [
        {"index": p.index, "kind": p.kind, "nodeId": p.node_id, "attempt": p.attempt}
        for p in pieces]})


@router.get("/api/export/{job_id}/events", summary="Server-Sent Events of status changes")
async def export_events(request: Request, job_id: str) -> StreamingResponse:
    _authorized(request)
    cluster = _cluster(request)
    cluster.status_cache()  # started on first use: streams then wait on it, not the actor
    first = await cluster.cached(_job_id(job_id))
    # A reconnecting EventSource sends the id of the last event it got: send only newer.
    seen = request.headers.get("last-event-id", "")
    last_seen = int(seen) if seen.isascii() and seen.isdigit() and len(seen) < 19 else -1

    async def stream() -> AsyncIterator[bytes]:
        status = first
        yield f"retry: {EVENT_RETRY_MS}\n\n".encode()
        # Not "newer than": versions of progress ticks may be lost when the status actor
        # restarts, so a client ahead of us is stale, not done.
        if status.version != last_seen or status.status.terminal:
            yield _sse(_view(request, status), status.version)
        # No request.is_disconnected() poll here: under Serve every poll is a call to the
        # proxy that stays pending there, and 20 open streams piled up enough of them to
        # make status answers take seconds (load benchmark). StreamingResponse already
        # ends this generator when the client goes away.
        try:
            async for nxt in cluster.follow(status, EVENT_KEEPALIVE_SECONDS):
                if nxt is None:
                    yield b": keep-alive\n\n"
                else:
                    yield _sse(_view(request, nxt), nxt.version)
        except (ClusterError, RayError):
            return  # the cluster is going away: end the stream, the client reconnects

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


class _LargeChunkFileResponse(FileResponse):
    """Starlette reads 64 KiB per ASGI message: each costs a thread hop and a send, which
    held a 1 GiB download to ~200 MB/s. 1 MiB messages cost a sixteenth of that."""

    chunk_size = DOWNLOAD_CHUNK_BYTES


@router.head("/api/export/{job_id}/download", summary="Headers of the finished file",
             operation_id="export_download_head")
@router.get("/api/export/{job_id}/download", summary="The finished file (Range supported)",
            operation_id="export_download")
async def export_download(request: Request, job_id: str, expires: str | None = None,
                          sig: str | None = None) -> Response:
    job_id = _job_id(job_id)
    check_download(_token(request), job_id, request.headers.get("authorization"), expires, sig)
    cluster = _cluster(request)
    try:
        status = await cluster.get(job_id)
    except JobNotFoundError:
        raise HTTPProblem(404, NOT_FOUND) from None
    found = await asyncio.to_thread(cluster.finished_output, status)
    if found is None:
        raise HTTPProblem(404, NOT_FOUND)
    ext = found.suffix.lstrip(".") if isinstance(found, Path) else found.ref.name.rsplit(".")[-1]
    config = await asyncio.to_thread(cluster.read_config, job_id)
    name = str(config.get("projectName") or job_id)
    media_type = MEDIA_TYPES.get(ext, "application/octet-stream")
    disposition = content_disposition(f"{name}.{ext}")
    if isinstance(found, Path):
        # FileResponse streams from disk and answers Range/If-Range with 206 by itself.
        return _LargeChunkFileResponse(found, media_type=media_type,
                            headers={"Content-Disposition": disposition})
    if request.method == "HEAD":
        # A signed URL is signed for GET only: HEAD is answered here, from the object's HEAD.
        return Response(headers={
            "Content-Type": media_type, "Content-Length": str(found.size),
            "Content-Disposition": disposition, "Accept-Ranges": "bytes",
            "ETag": found.etag})
    # The bytes never pass through Serve: the client follows to the store, Range included.
    url = await asyncio.to_thread(
        presigned_get, found.ref, expires=cluster.settings.download_url_seconds,
        filename=f"{name}.{ext}")
    return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})


@router.delete("/api/export/{job_id}",
                summary="Cancel a pending or running export; remove a finished one")
async def cancel_export(request: Request, job_id: str) -> JSONResponse:
    _authorized(request)
    status, removed = await _cluster(request).delete(_job_id(job_id))
    if removed:
        message = "Export deleted"
    elif status.status == JobState.CANCELLED:
        message = "Export cancelled"
    else:  # it finished while we were stopping it; its output stays
        message = f"Export already {status.status.value}"
    return JSONResponse({"jobId": status.job_id, "status": status.status.value,
                         "message": message})


@router.get("/api/health", summary="Liveness of the API and the cluster's actors")
async def health(request: Request) -> JSONResponse:
    try:
        jobs = await _cluster(request).list_jobs([JobState.PENDING, JobState.PROCESSING])
    except ClusterError as exc:
        return JSONResponse({"status": "unavailable", "error": str(exc)}, status_code=503)
    return JSONResponse({"status": "ok", "active": len(jobs)})


def _sse(data: dict[str, Any], version: int) -> bytes:
    """One event; its id (the status version) lets a reconnect resume after it."""
    return f"id: {version}\nevent: status\ndata: {json.dumps(data)}\n\n".encode()
