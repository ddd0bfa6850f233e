"""The real Serve app over real HTTP on a local Ray: the editor's flow and every guard."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray

from cluster.api import CutfarmCluster
from cluster.coordinator import COORDINATOR_NAME, STATUS_NAME
from cluster.jobs import JobState, JobStatus
from tests import mediagen as mg
from tests.conftest import MediaRoot as Media
from tests.http_support import Api, poll, running_api
from tests.procs import descendants

FILES = ["h264_a.mp4", "h264_b.mp4", "notes.mp4", "truncated.mp4", "h264_640.mp4"]
MULTICAM = [(0, 0.4, 2.5), (1, 2.5, 4.1), (0, 4.1, 5.55)]


@pytest.fixture(scope="module")
def api(media_root: Media, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    root = tmp_path_factory.mktemp("http-media")
    (root / "sources").mkdir()
    for name in FILES:
        (root / "sources" / name).hardlink_to(media_root.sources / name)
    (root / "outside.mp4").write_bytes(b"secret")
    (root / "sources" / "link.mp4").symlink_to(root / "outside.mp4")
    with running_api(root) as running:
        yield running


@pytest.fixture
def client(api: Api) -> Iterator[httpx.Client]:
    with api.client() as c:
        yield c


def editor_config(job_id: str, segments: list[tuple[int, float, float]] = MULTICAM,
                  files: tuple[str, ...] = ("h264_a.mp4", "h264_b.mp4"),
                  **output: Any) -> dict[str, Any]:
    """Shaped exactly like the editor's config (tests/fixtures/editor-config.json)."""
    return {
        "version": 1,
        "id": job_id,
        "projectId": "7c98c8d8-e3ab-40f5-ac00-b8bd14b63934",
        "projectName": "My Podcast \"Episode\" 12 – ü",
        "createdAt": "2026-02-27T11:16:00.000Z",
        "sources": [{"id": f"media-{i}", "name": f, "filePath": f, "width": 320, "height": 180,
                     "duration": 6.0, "fps": 30, "hasAudio": True} for i, f in enumerate(files)],
        "segments": [{"sourceIndex": s, "startTime": a, "endTime": b, "audioFromSource": True}
                     for s, a, b in segments],
        "output": {"filePath": f"exports/{job_id}/output.mp4", "format": "mp4", "width": 320,
                   "height": 180, "fps": 30, "codec": "copy", "includeAudio": True, **output},
        "status": "pending",
    }


def test_editor_flow_post_poll_download(api: Api, client: httpx.Client,
                                        media_root: Media, tmp_path: Path) -> None:
    cfg = editor_config("export-flow")
    r = client.post("/api/export", json=cfg)
    assert r.status_code == 200
    assert r.json() == {"jobId": "export-flow", "status": "pending",
                        "message": "Export job created"}
    final = poll(client, "export-flow")
    assert final["status"] == "completed" and final["progress"] == 1.0
    assert final["downloadUrl"] == "/api/export/export-flow/download"
    # A plain browser GET: no custom headers at all.
    r = httpx.get(api.base + final["downloadUrl"], timeout=60)
    assert r.status_code == 200
    assert r.headers["content-type"] == "video/mp4"
    assert r.headers["content-disposition"] == (
        "attachment; filename=\"My Podcast _Episode_ 12 _ u.mp4\"; "
        "filename*=UTF-8''My%20Podcast%20%22Episode%22%2012%20%E2%80%93%20%C3%BC.mp4")
    assert int(r.headers["content-length"]) == len(r.content)
    out = tmp_path / "download.mp4"
    out.write_bytes(r.content)
    plan = client.post("/api/export/plan", json=cfg).json()
    cams = {0: media_root.camera("h264_a.mp4"), 1: media_root.camera("h264_b.mp4")}
    want = [(cams[s["sourceIndex"]], f) for s in plan["segments"]
            for f in range(s["firstFrame"], s["lastFrame"] + 1)]
    decoded = mg.decode_video(out)
    assert decoded.errors == 0 and decoded.stamps == want
    job_dir = api.root / "exports" / "export-flow"
    assert json.loads((job_dir / "config.json").read_text())["id"] == "export-flow"


def test_range_head_and_etag(api: Api, client: httpx.Client) -> None:
    client.post("/api/export", json=editor_config("export-range"))
    final = poll(client, "export-range")
    url = final["downloadUrl"]
    full = client.get(url).content
    head = client.head(url)
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == len(full)
    etag = head.headers["etag"]
    part = client.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.content == full[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(full)}"
    tail = client.get(url, headers={"Range": "bytes=-50"})
    assert tail.status_code == 206 and tail.content == full[-50:]
    stale = client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"not-the-etag"'})
    assert stale.status_code == 200 and len(stale.content) == len(full)
    fresh = client.get(url, headers={"Range": "bytes=0-9", "If-Range": etag})
    assert fresh.status_code == 206 and fresh.content == full[:10]


def test_unknown_and_unfinished_downloads_are_404(client: httpx.Client) -> None:
    r = client.get("/api/export/export-nope/download")
    assert r.status_code == 404
    assert r.json() == {"error": "Export not found or not completed"}
    assert client.get("/api/export/export-nope/status").status_code == 404
    for bad in ("..%2F..%2Fetc%2Fpasswd", "%2e%2e", "a%00b", "x" * 200):
        r = client.get(f"/api/export/{bad}/status")
        assert r.status_code == 404, bad


@pytest.mark.parametrize(("mutate", "field", "words"), [
    (lambda c: c.update(version=2), "version", "version"),
    (lambda c: c.update(sources=[]), "sources", "sources"),
    (lambda c: c.update(segments=[]), "segments", "segments"),
    (lambda c: c["segments"][1].update(sourceIndex=7), "segments[1].sourceIndex", "only 2"),
    (lambda c: c["segments"][0].update(endTime=0.1), "segments[0].endTime", "greater than"),
    (lambda c: c["segments"][2].update(endTime=60.0), "segments[2].endTime", "beyond the end"),
    (lambda c: c.update(id="../../etc"), "id", "letters, digits"),
    (lambda c: c["sources"][0].update(filePath="missing.mp4"), "sources[0].filePath",
     "not found"),
    (lambda c: c["sources"][0].update(filePath="notes.mp4"), "sources[0].filePath",
     "not a video"),
    (lambda c: c["sources"][0].update(filePath="truncated.mp4"), "sources[0].filePath",
     "truncated"),
    (lambda c: c["output"].update(format="avi"), "output.format", "output.format"),
])
def test_validation_errors_name_the_field(client: httpx.Client, mutate: Any, field: str,
                                          words: str) -> None:
    cfg = editor_config("export-invalid")
    mutate(cfg)
    r = client.post("/api/export", json=cfg)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error"].startswith("Invalid config: ")
    assert words in body["error"]
    assert body.get("field") == field
    assert client.get("/api/export/export-invalid/status").status_code == 404


def test_malformed_bodies(client: httpx.Client, api: Api) -> None:
    r = client.post("/api/export", content=b"{not json", headers={
        "content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    r = client.post("/api/export", json=[1, 2])
    assert r.status_code == 400 and "JSON object" in r.json()["error"]
    big = b"[" + b"1," * (api.settings.max_body_bytes // 2) + b"1]"
    r = client.post("/api/export", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.mp4", "link.mp4",
                                  "sources/../../outside.mp4", "..\\outside.mp4"])
def test_sources_outside_the_media_root_are_refused(client: httpx.Client, path: str) -> None:
    cfg = editor_config("export-escape")
    cfg["sources"][0]["filePath"] = path
    r = client.post("/api/export", json=cfg)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "sources[0].filePath"


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/hook", "http://localhost/x",
                                 "http://169.254.169.254/latest/meta-data", "http://[::1]/x",
                                 "http://10.0.0.8/x"])
def test_callbacks_to_internal_addresses_are_refused_by_default(client: httpx.Client,
                                                                url: str) -> None:
    cfg = editor_config("export-ssrf")
    cfg["callbackUrl"] = url
    r = client.post("/api/export", json=cfg)
    assert r.status_code == 400 and r.json()["field"] == "callbackUrl"


def test_output_path_cannot_escape_the_job_directory(api: Api, client: httpx.Client) -> None:
    cfg = editor_config("export-outpath", segments=[(0, 0.0, 1.0)])
    cfg["output"]["filePath"] = "../../../../tmp/evil.mp4"
    assert client.post("/api/export", json=cfg).status_code == 200
    assert poll(client, "export-outpath")["status"] == "completed"
    assert (api.root / "exports" / "export-outpath" / "output.mp4").is_file()
    assert not Path("/tmp/evil.mp4").exists()


def test_same_id_same_config_is_idempotent_and_different_config_conflicts(
        client: httpx.Client) -> None:
    cfg = editor_config("export-twice", segments=[(0, 0.0, 1.0)])
    assert client.post("/api/export", json=cfg).status_code == 200
    again = client.post("/api/export", json=cfg)
    assert again.status_code == 200 and again.json()["jobId"] == "export-twice"
    other = editor_config("export-twice", segments=[(0, 0.0, 2.0)])
    r = client.post("/api/export", json=other)
    assert r.status_code == 409
    assert "different config" in r.json()["error"]


def test_cancel_mid_job(api: Api, client: httpx.Client) -> None:
    cfg = editor_config("export-stop", segments=[(0, 0.0, 6.0), (1, 0.0, 6.0)],
                        files=("h264_640.mp4", "h264_a.mp4"), codec="h264")
    assert client.post("/api/export", json=cfg).status_code == 200
    deadline = time.monotonic() + 60
    while client.get("/api/export/export-stop/status").json()["status"] == "pending":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    r = client.delete("/api/export/export-stop")
    assert r.status_code == 200
    assert r.json()["jobId"] == "export-stop" and r.json()["status"] == "cancelled"
    assert client.get("/api/export/export-stop/status").json()["status"] == "cancelled"
    assert client.get("/api/export/export-stop/download").status_code == 404
    job_dir = api.root / "exports" / "export-stop"
    assert sorted(p.name for p in job_dir.iterdir()) == ["config.json", "status.json"]
    # Cancelled is finished: a second DELETE removes the record too.
    second = client.delete("/api/export/export-stop")
    assert second.json()["message"] == "Export deleted" and not job_dir.exists()


def test_list_events_plan_and_health(client: httpx.Client) -> None:
    before = {j["jobId"] for j in client.get("/api/export").json()["jobs"]}
    plan = client.post("/api/export/plan", json=editor_config("export-preflight"))
    assert plan.status_code == 200
    body = plan.json()
    assert [s["frames"] for s in body["segments"]] == [63, 48, 44]
    assert all(s["copiedFrames"] + s["reencodedFrames"] == s["frames"]
               for s in body["segments"])
    assert body["estimatedBytes"] > 0 and body["estimatedSeconds"] > 0
    after = {j["jobId"] for j in client.get("/api/export").json()["jobs"]}
    assert after == before  # preflight created nothing
    assert client.post("/api/export", json=editor_config("export-events")).status_code == 200
    events = []
    with client.stream("GET", "/api/export/export-events/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
                if events[-1]["status"] in ("completed", "failed"):
                    break
    assert events[-1]["status"] == "completed"
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress) and len(events) >= 2
    done = client.get("/api/export", params={"status": "completed"}).json()["jobs"]
    assert "export-events" in {j["jobId"] for j in done}
    assert client.get("/api/export", params={"status": "bogus"}).status_code == 400
    health = client.get("/api/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert client.get("/openapi.json").json()["paths"]["/api/export"]


def test_twenty_submissions_at_once(client: httpx.Client, api: Api) -> None:
    results: dict[str, int] = {}

    def submit(n: int) -> None:
        cfg = editor_config(f"export-burst-{n}", segments=[(n % 2, 0.0, 2.0)])
        cfg["accuracy"] = "keyframe"
        with api.client() as c:
            results[cfg["id"]] = c.post("/api/export", json=cfg).status_code

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results.values()) == [200] * 20
    for job_id in results:
        assert poll(client, job_id, timeout=300)["status"] == "completed"
        assert (api.root / "exports" / job_id / "output.mp4").stat().st_size > 0


# --------------------------------------------------------------------------- issue 8


def test_unknown_fields_are_reported_as_warnings(api: Api, client: httpx.Client) -> None:
    """Typos in optional fields used to be ignored silently and the export ran with audio."""
    cfg = editor_config("export-typos")
    cfg["segments"][0]["audioFromSorce"] = False
    cfg["output"]["includeAudo"] = False
    cfg["acuracy"] = "keyframe"
    r = client.post("/api/export", json=cfg)
    assert r.status_code == 200, r.text
    warnings = r.json()["warnings"]
    assert warnings == [
        "acuracy is not a known field and was ignored; did you mean 'accuracy'?",
        "output.includeAudo is not a known field and was ignored; did you mean "
        "'includeAudio'?",
        "segments[0].audioFromSorce is not a known field and was ignored; did you mean "
        "'audioFromSource'?"]
    assert client.post("/api/export/plan", json=cfg).json()["warnings"] == warnings
    assert poll(client, "export-typos")["warnings"] == warnings
    clean = client.post("/api/export/plan", json=editor_config("export-clean")).json()
    assert clean["warnings"] == []


def test_source_not_found_says_where_it_looked(api: Api, client: httpx.Client) -> None:
    (api.root / "upstairs.mp4").hardlink_to(api.root / "sources" / "h264_a.mp4")
    cfg = editor_config("export-where", files=("upstairs.mp4", "h264_b.mp4"))
    r = client.post("/api/export", json=cfg)
    assert r.status_code == 400
    error = r.json()["error"]
    assert f"was not found in {api.root / 'sources'}/" in error, error
    assert f"it is in {api.root}/ itself: move it into {api.root / 'sources'}/" in error
    cfg = editor_config("export-where", files=("nowhere.mp4", "h264_b.mp4"))
    error = client.post("/api/export", json=cfg).json()["error"]
    assert f"not found in {api.root / 'sources'}/" in error and "move it" not in error


def test_delete_removes_a_finished_export(api: Api, client: httpx.Client) -> None:
    """The old backend's DELETE was cancel/cleanup: a finished export goes, output and all."""
    assert client.post("/api/export", json=editor_config("export-gone")).status_code == 200
    assert client.post("/api/export", json=editor_config("export-stays")).status_code == 200
    assert poll(client, "export-gone")["status"] == "completed"
    assert poll(client, "export-stays")["status"] == "completed"
    job_dir = api.root / "exports" / "export-gone"
    assert (job_dir / "output.mp4").is_file()
    r = client.delete("/api/export/export-gone")
    assert r.status_code == 200
    assert r.json() == {"jobId": "export-gone", "status": "completed",
                        "message": "Export deleted"}
    assert not job_dir.exists()
    assert client.get("/api/export/export-gone/status").status_code == 404
    assert client.get("/api/export/export-gone/download").status_code == 404
    again = client.delete("/api/export/export-gone")
    assert again.status_code == 404 and "not found" in again.json()["error"]
    listed = {j["jobId"] for j in client.get("/api/export").json()["jobs"]}
    assert "export-gone" not in listed and "export-stays" in listed
    assert client.get("/api/export/export-stays/download").status_code == 200


def test_docs_page_needs_no_cdn(client: httpx.Client) -> None:
    page = client.get("/docs").text
    assets = [a for a in ("swagger-ui-bundle.js", "swagger-ui.css") if a in page]
    assert len(assets) == 2
    for line in page.splitlines():
        if "src=" in line or "href=" in line:
            assert "http://" not in line and "https://" not in line, line
    for url in ("/static-offline-docs/swagger-ui-bundle.js",
                "/static-offline-docs/swagger-ui.css"):
        r = client.get(url)
        assert r.status_code == 200 and len(r.content) > 10_000, url


# --------------------------------------------------------------------------- issue 12


def test_list_is_paged_with_a_cursor(client: httpx.Client) -> None:
    for n in range(3):
        cfg = editor_config(f"export-page-{n}", segments=[(0, 0.0, 1.0)])
        cfg["accuracy"] = "keyframe"
        assert client.post("/api/export", json=cfg).status_code == 200
    everything = client.get("/api/export", params={"limit": 1000}).json()
    assert everything["nextCursor"] is None
    ids = [j["jobId"] for j in everything["jobs"]]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/export", params=params).json()
        assert len(page["jobs"]) <= 2
        seen += [j["jobId"] for j in page["jobs"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == ids and {"export-page-0", "export-page-2"} <= set(seen)
    for bad in ({"limit": 0}, {"limit": 5000}, {"cursor": "abc"}, {"cursor": "-1"}):
        r = client.get("/api/export", params=bad)
        assert r.status_code == 400 and r.json()["error"], bad


def test_events_carry_ids_and_a_reconnect_resumes_after_them(client: httpx.Client) -> None:
    assert client.post("/api/export", json=editor_config("export-ids")).status_code == 200
    assert poll(client, "export-ids")["status"] == "completed"
    with client.stream("GET", "/api/export/export-ids/events") as stream:
        lines = list(stream.iter_lines())
    assert lines[0].startswith("retry: ")
    ids = [int(line[4:]) for line in lines if line.startswith("id: ")]
    assert len(ids) == 1  # finished: one event, its final status
    # A reconnect after the last event still learns the final state (and nothing twice).
    with client.stream("GET", "/api/export/export-ids/events",
                       headers={"Last-Event-ID": str(ids[0])}) as stream:
        again = [line for line in stream.iter_lines() if line.startswith("data:")]
    assert len(again) == 1 and json.loads(again[0][5:])["status"] == "completed"


# --------------------------------------------------------------------------- issue 12: cache
# Status polls and event streams are answered from the replica's status cache, fed by the
# status actor's change feed. These jobs are records made straight on the status actor
# (no coordinator runs them), so each change is made by the test, from outside the replica.


def _actors(api: Api) -> tuple[Any, Any]:
    ns = api.settings.namespace
    return ray.get_actor(STATUS_NAME, namespace=ns), ray.get_actor(COORDINATOR_NAME, namespace=ns)


def _record(status_actor: Any, job_id: str) -> JobStatus:
    doc: JobStatus = ray.get(status_actor.create.remote(job_id, {"version": 1, "id": job_id},
                                                        0, []))[0]
    return doc


def _until(client: httpx.Client, job_id: str, done: Any, timeout: float = 3.0) -> float:
    """Seconds until GET status satisfies ``done`` (fails after ``timeout``)."""
    start = time.monotonic()
    while True:
        r = client.get(f"/api/export/{job_id}/status")
        if r.status_code == 200 and done(r.json()):
            return time.monotonic() - start
        assert time.monotonic() - start < timeout, r.text
        time.sleep(0.02)


def _editor_bytes(doc: JobStatus, **extra: Any) -> bytes:
    """The status answer as the API has always rendered it (JSONResponse of the view)."""
    view = {"jobId": doc.job_id, "status": doc.status.value, "progress": round(doc.progress, 4),
            "message": doc.message, **extra, "stage": doc.stage, "etaSeconds": doc.eta_seconds,
            "createdAt": doc.created_at, "updatedAt": doc.updated_at}
    return json.dumps(view, ensure_ascii=False, separators=(",", ":")).encode()


def test_changes_made_elsewhere_reach_the_poll_in_the_editors_shape(
        api: Api, client: httpx.Client) -> None:
    status_actor, coordinator = _actors(api)
    doc = _record(status_actor, "export-elsewhere")
    r = client.get("/api/export/export-elsewhere/status")
    assert r.headers["content-type"] == "application/json"
    assert r.content == _editor_bytes(doc)
    # Changed by the status actor's other clients, not through this replica.
    ray.get(status_actor.update.remote("export-elsewhere", {
        "status": JobState.PROCESSING, "stage": "planning", "message": "Planning the export"}))
    assert _until(client, "export-elsewhere", lambda b: b["stage"] == "planning") < 2.0
    doc = ray.get(status_actor.get.remote("export-elsewhere"))
    assert client.get("/api/export/export-elsewhere/status").content == _editor_bytes(doc)
    ray.get(coordinator.cancel.remote("export-elsewhere"))
    assert _until(client, "export-elsewhere", lambda b: b["status"] == "cancelled") < 2.0
    # A finished job's answer, download link included, is what it always was.
    _record(status_actor, "export-done-elsewhere")
    done = ray.get(status_actor.update.remote("export-done-elsewhere", {
        "status": JobState.COMPLETED, "stage": "done", "message": "Export complete",
        "download_url": "/api/export/export-done-elsewhere/download"}))
    _until(client, "export-done-elsewhere", lambda b: b["status"] == "completed")
    assert client.get("/api/export/export-done-elsewhere/status").content == _editor_bytes(
        done, downloadUrl="/api/export/export-done-elsewhere/download")


def test_writes_through_the_api_are_read_at_once(api: Api, client: httpx.Client) -> None:
    status_actor, _ = _actors(api)
    for n in range(8):
        job_id = f"export-rw-{n}"
        _record(status_actor, job_id)
        assert client.get(f"/api/export/{job_id}/status").json()["status"] == "pending"
        assert client.delete(f"/api/export/{job_id}").json()["status"] == "cancelled"
        assert client.get(f"/api/export/{job_id}/status").json()["status"] == "cancelled"
        assert client.delete(f"/api/export/{job_id}").json()["message"] == "Export deleted"
        assert client.get(f"/api/export/{job_id}/status").status_code == 404
    cfg = editor_config("export-rw-submit", segments=[(0, 0.0, 1.0)])
    cfg["accuracy"] = "keyframe"
    assert client.post("/api/export", json=cfg).status_code == 200
    assert client.get("/api/export/export-rw-submit/status").status_code == 200
    assert poll(client, "export-rw-submit")["status"] == "completed"


def _read_events(api: Api, job_id: str, into: list[tuple[int, dict[str, Any]]],
                 headers: dict[str, str] | None = None) -> threading.Thread:
    def read() -> None:
        with api.client() as c, c.stream("GET", f"/api/export/{job_id}/events",
                                         headers=headers or {}) as stream:
            event_id = -1
            for line in stream.iter_lines():
                if line.startswith("id: "):
                    event_id = int(line[4:])
                elif line.startswith("data:"):
                    into.append((event_id, json.loads(line[5:])))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def _wait_len(items: list[Any], n: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while len(items) < n:
        assert time.monotonic() < deadline, items
        time.sleep(0.02)


def test_event_streams_deliver_every_state_in_order_and_resume(api: Api) -> None:
    status_actor, _ = _actors(api)
    _record(status_actor, "export-states")
    events: list[tuple[int, dict[str, Any]]] = []
    reader = _read_events(api, "export-states", events)
    _wait_len(events, 1)
    ray.get(status_actor.update.remote("export-states", {
        "status": JobState.PROCESSING, "stage": "planning"}))
    # Three changes back to back, faster than the stream is read: it still shows each
    # state the job entered. Each call is awaited before the next, as the coordinator
    # does: an async actor does not promise to start calls in the order they were sent.
    for fields in ({"stage": "rendering"}, {"stage": "assembling"},
                   {"status": JobState.COMPLETED, "stage": "done",
                    "download_url": "/api/export/export-states/download"}):
        ray.get(status_actor.update.remote("export-states", fields))
    reader.join(10)
    assert not reader.is_alive()
    states = [(e["status"], e["stage"]) for _, e in events]
    assert states == [("pending", "queued"), ("processing", "planning"),
                      ("processing", "rendering"), ("processing", "assembling"),
                      ("completed", "done")]
    ids = [i for i, _ in events]
    assert ids == sorted(set(ids))
    # Resume: a client that has the current version gets nothing until the next change.
    doc = _record(status_actor, "export-resume")
    resumed: list[tuple[int, dict[str, Any]]] = []
    reader = _read_events(api, "export-resume", resumed, {"Last-Event-ID": str(doc.version)})
    time.sleep(0.5)
    assert resumed == []
    ray.get(status_actor.update.remote("export-resume", {"message": "later"}))
    _wait_len(resumed, 1)
    assert resumed[0][0] > doc.version and resumed[0][1]["message"] == "later"
    ray.get(status_actor.update.remote("export-resume", {"status": JobState.FAILED,
                                                         "error": "stop"}))
    reader.join(10)
    assert [e["status"] for _, e in resumed] == ["pending", "failed"]


def test_a_restarted_status_actor_is_followed_again(api: Api, client: httpx.Client) -> None:
    """Last in this module: it restarts the status actor under the running app."""
    status_actor, coordinator = _actors(api)
    _record(status_actor, "export-restart")
    assert client.get("/api/export/export-restart/status").status_code == 200

    async def feed_across_a_restart() -> None:
        # The replica's code, in this process: watch its feed notice and recover.
        cluster = CutfarmCluster(api.settings, status_actor, coordinator)
        cache = cluster.status_cache()
        assert cache is not None
        try:
            await _eventually(lambda: cache.live, 30)
            epoch = cache.epoch
            assert (await cluster.get("export-restart")).status == JobState.PENDING
            ray.kill(status_actor, no_restart=False)
            await _eventually(lambda: cache.live and cache.epoch != epoch, 60)
            await status_actor.update.remote("export-restart", {"message": "after"})
            await _eventually(lambda: getattr(cache.peek("export-restart"), "message",
                                              None) == "after", 5)
        finally:
            cache.stop()

    asyncio.run(feed_across_a_restart())
    # The app's replica: never stale for good, and current again within seconds.
    ray.get(status_actor.update.remote("export-restart", {"message": "newest"}))
    assert _until(client, "export-restart", lambda b: b["message"] == "newest", 30) < 30
    ray.get(status_actor.update.remote("export-restart", {"message": "newer still"}))
    assert _until(client, "export-restart", lambda b: b["message"] == "newer still") < 2.0


async def _eventually(check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def test_the_api_replica_runs_at_nice_0(api: Api, client: httpx.Client) -> None:
    """cluster/priority.py: the replica answering users is not at Ray's worker nice 15."""
    assert client.get("/api/health").status_code == 200
    # Its process, found by the title Ray gives it (no dashboard here for the state API).
    replicas = [pid for pid in descendants(os.getpid())
                if _cmdline(pid).startswith(b"ray::ServeReplica:cutfarm:ExportAPI")]
    assert replicas
    for pid in replicas:
        assert os.getpriority(os.PRIO_PROCESS, pid) == 0


def _cmdline(pid: int) -> bytes:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return b""
