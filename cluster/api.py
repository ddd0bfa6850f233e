"""The cluster's Python API: submit, status, cancel, list (what the HTTP layer calls).

Every call goes to the named, detached actors, so it works the same from a Serve replica,
a CLI or a test, and a job outlives whoever submitted it. Each method has an async form
(for Serve handlers: never block the event loop) and a blocking one (``*_sync``).

A long-lived event loop (a Serve replica's) may also turn on a status cache
(``status_cache``): statuses are then read from memory kept current by the status actor's
change feed, and this object's own writes go into it at once (``cluster/status_cache.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from pathlib import Path
from typing import Any, TypeVar

import ray
from ray.exceptions import RayActorError, RayError, RayTaskError

from render.config import ExportConfig, parse_config, unknown_field_warnings
from render.engine import Prepared
from render.errors import ConfigError, RenderError
from render.objectstore import ObjectInfo

from .coordinator import COORDINATOR_NAME, STATUS_NAME, Coordinator
from .errors import ClusterError, ClusterUnavailableError, JobNotFoundError
from .jobs import JobState, JobStatus, PiecePlacement
from .planning import plan_job, preflight_job, prober
from .preflight import Preflight
from .priority import CONTROL_PLANE_ENV
from .settings import Settings
from .status import ChangeBatch, StatusActor
from .status_cache import Renderer, StatusCache
from .store import open_store
from .webhooks import validate_callback_url

log = logging.getLogger("cutfarm.cluster")
T = TypeVar("T")

#: Ray system settings of a Ray that cutfarm starts itself (`ray start` in the image gets
#: the same through its environment, docker/Dockerfile). Ray ends a task worker that has
#: been idle for ``idle_worker_killing_time_threshold_ms`` (1 s) when the node holds more
#: workers than it keeps warm, which counts our actors and Serve's; pieces then kept
#: waiting for new workers, each ~2 CPU-s of imports. Idle workers now stay a minute
#: (measure_status.py with 10 exports running: 25 worker processes started in 70 s, not 44).
LOCAL_RAY_SYSTEM_CONFIG: dict[str, Any] = {"idle_worker_killing_time_threshold_ms": 60_000}


def ensure_ray(settings: Settings) -> bool:
    """Attach to the configured cluster, or a running one, or start a local one.

    ``ray_address`` "local" always starts a new local cluster. Returns True when this call
    started a cluster (the caller then owns its shutdown).
    """
    if ray.is_initialized():
        return False
    if settings.ray_address == "local":
        ray.init(address="local", namespace=settings.namespace,
                 _system_config=LOCAL_RAY_SYSTEM_CONFIG)
        return True
    if settings.ray_address:
        _attach(settings.ray_address, settings.namespace)
        return False
    try:
        ray.init(address="auto", namespace=settings.namespace)
        return False
    except ConnectionError:
        log.info("no Ray cluster running; starting a local one")
        ray.init(namespace=settings.namespace, _system_config=LOCAL_RAY_SYSTEM_CONFIG)
        return True


def _attach(address: str, namespace: str) -> None:
    """Join a running cluster; one sentence, not a traceback, when that fails."""
    # Ray enables token auth for "auto" when a token is at hand, but not for an explicit
    # address: a local cluster started by `ray.init()` (token on by default) refused us.
    # Ray's own switch also refreshes its cached config, which the variable alone does not.
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a private module: without it an explicit RAY_AUTH_MODE still works
        pass
    else:
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    try:
        ray.init(address=address, namespace=namespace)
    except (ConnectionError, RuntimeError, RayError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ClusterUnavailableError(
            f"cannot connect to the Ray cluster at {address}: {reason}") from exc


class CutfarmCluster:
    """Handles to the status and coordinator actors, created on first connect."""

    def __init__(self, settings: Settings, status: Any, coordinator: Any) -> None:
        self.settings = settings
        self.status = status
        self.coordinator = coordinator
        self._cache: StatusCache | None = None

    @classmethod
    def connect(cls, settings: Settings) -> CutfarmCluster:
        ensure_ray(settings)
        ns = settings.namespace
        if isinstance(settings.export_root, Path):
            settings.export_root.mkdir(parents=True, exist_ok=True)
        status = StatusActor.options(  # type: ignore[attr-defined]
            name=STATUS_NAME, namespace=ns, lifetime="detached", get_if_exists=True,
            runtime_env=CONTROL_PLANE_ENV,
        ).remote(str(settings.export_root))
        coordinator = Coordinator.options(  # type: ignore[attr-defined]
            name=COORDINATOR_NAME, namespace=ns, lifetime="detached", get_if_exists=True,
            runtime_env=CONTROL_PLANE_ENV,
        ).remote(settings)
        ray.get(coordinator.configure.remote(settings))
        ray.get(coordinator.start.remote())
        prober(ns)  # started now, so the first preflight does not wait for its process
        return cls(settings, status, coordinator)

    # ------------------------------------------------------------------ async API

    async def plan(self, config: dict[str, Any] | ExportConfig) -> Prepared:
        """Validate and plan without creating a job: the whole plan, made here (tests,
        benchmarks; the API asks for ``preflight``)."""
        cfg = config if isinstance(config, ExportConfig) else parse_config(config)
        data = cfg.model_dump(mode="json", by_alias=True)
        return await _unwrap(plan_job(data, self.settings, f"{cfg.id}:preflight"))

    async def preflight(self, config: dict[str, Any] | ExportConfig) -> Preflight:
        """Validate and plan without creating a job; the plan's summary, made in the
        prober (cluster/preflight.py)."""
        cfg = config if isinstance(config, ExportConfig) else parse_config(config)
        data = cfg.model_dump(mode="json", by_alias=True)
        return await _unwrap(preflight_job(data, self.settings, f"{cfg.id}:preflight"))

    async def submit(self, config: dict[str, Any], *, preflight: bool = True) -> JobStatus:
        """Validate (and probe/plan, unless told not to), then queue; returns at once."""
        cfg = parse_config(config)
        if cfg.callback_url is not None:
            try:
                validate_callback_url(cfg.callback_url,
                                      allow_private=self.settings.webhook_allow_private)
            except ValueError as exc:
                raise ConfigError(f"callbackUrl: {exc}", field="callbackUrl") from exc
        warnings = unknown_field_warnings(cfg)
        if preflight:
            warnings += (await self.preflight(cfg)).warnings
        data = cfg.model_dump(mode="json", by_alias=True)
        return await self._written(
            cfg.id, lambda: self._call(lambda: self.coordinator.submit.remote(
                cfg.id, data, cfg.priority, warnings)), StatusCache.wrote)

    async def get(self, job_id: str) -> JobStatus:
        """The job's status, asked of the status actor (the answer also refreshes this
        loop's status cache, if it has one)."""
        cache = self._local_cache()
        if cache is not None:
            return await cache.fetch(job_id)
        return await self.fetch(job_id)

    async def cached(self, job_id: str) -> JobStatus:
        """The job's status from this loop's status cache while its feed is live (current
        to within one feed round trip, and to this object's own writes); else as ``get``."""
        cache = self._local_cache()
        if cache is not None:
            return await cache.get(job_id)
        return await self.fetch(job_id)

    async def fetch(self, job_id: str) -> JobStatus:
        """The job's status, asked of the status actor."""
        return await self._call(lambda: self.status.get.remote(job_id))

    async def cancel(self, job_id: str) -> JobStatus:
        return await self._written(
            job_id, lambda: self._call(lambda: self.coordinator.cancel.remote(job_id)),
            StatusCache.wrote)

    async def delete(self, job_id: str) -> tuple[JobStatus, bool]:
        """Cancel a pending or running job, or remove a finished one with its output;
        the bool says whether the job was removed."""

        def keep(cache: StatusCache, token: str | None, result: tuple[JobStatus, bool]) -> None:
            status, removed = result
            if removed:
                cache.deleted(status)
            else:
                cache.wrote(token, status)

        return await self._written(
            job_id, lambda: self._call(lambda: self.coordinator.delete.remote(job_id)), keep)

    async def list_page(self, states: list[JobState] | None, after: int = 0,
                        limit: int = 100) -> tuple[list[JobStatus], int | None]:
        """One page of jobs in arrival order and the cursor of the next (None: last page)."""
        return await self._call(lambda: self.status.page.remote(states, after, limit))

    async def pieces(self, job_id: str) -> tuple[PiecePlacement, ...]:
        """Where each piece of the job ran (this cluster's run; not kept across restarts)."""
        return await self._call(lambda: self.status.pieces.remote(job_id))

    async def list_jobs(self, states: list[JobState] | None = None) -> list[JobStatus]:
        return await self._call(lambda: self.status.list.remote(states))

    async def wait_change(self, job_id: str, version: int, timeout: float = 15.0) -> JobStatus:
        """The job's status once its version passes ``version`` (or after ``timeout``),
        asked of the status actor."""
        return await self._call(lambda: self.status.wait_change.remote(job_id, version, timeout))

    async def follow(self, first: JobStatus, keepalive: float) -> AsyncIterator[
            JobStatus | None]:
        """The job's statuses after ``first``, in order, until a final one; None after
        ``keepalive`` seconds without a change (event streams)."""
        cache = self._local_cache()
        if cache is not None:
            async for status in cache.follow(first, keepalive):
                yield status
            return
        sent = first
        while not sent.status.terminal:
            nxt = await self.wait_change(sent.job_id, sent.version, keepalive)
            if nxt.version == sent.version:
                yield None
                continue
            sent = nxt
            yield nxt

    async def changes(self, epoch: str | None, after: int, timeout: float) -> ChangeBatch:
        """The status actor's change feed after position (``epoch``, ``after``)."""
        return await self._call(lambda: self.status.changes.remote(epoch, after, timeout))

    # ------------------------------------------------------------------ status cache

    def status_cache(self) -> StatusCache | None:
        """The status cache of the running event loop, created and started on first use.

        Meant for a loop that lives as long as this object (a Serve replica's): the cache's
        feed task runs on it. None on any other loop while that one runs (callers then ask
        the actor, as every blocking ``*_sync`` call does)."""
        loop = asyncio.get_running_loop()
        cache = self._cache
        if cache is not None and cache.loop is not loop:
            if cache.loop is not None and not cache.loop.is_closed():
                return None
            cache = None  # its loop is gone: start over on this one
        if cache is None:
            cache = self._cache = StatusCache(self)
            cache.start()
        return cache

    async def status_body(self, job_id: str, key: Hashable, render: Renderer) -> bytes:
        """``render``'s answer for the job, rendered once per version (and ``key``) while
        the status cache holds it."""
        cache = self.status_cache()
        if cache is None:
            return render(await self.fetch(job_id))[0]
        return await cache.body(job_id, key, render)

    def _local_cache(self) -> StatusCache | None:
        """The status cache if one runs on the current loop (never creates one)."""
        cache = self._cache
        if cache is None:
            return None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        return cache if cache.loop is loop else None

    async def _written(self, job_id: str, call: Callable[[], Awaitable[T]],
                       keep: Callable[[StatusCache, str | None, T], None]) -> T:
        """A write through this object: its answer goes into the status cache at once, so
        the caller's next read sees it. A write that failed (perhaps half done) drops the
        job from the cache instead: the next read asks the actor."""
        cache = self._local_cache()
        if cache is None:
            return await call()
        token = cache.token()
        try:
            result = await call()
        except BaseException:
            cache.forget(job_id)
            raise
        keep(cache, token, result)
        return result

    def finished_output(self, status: JobStatus) -> Path | ObjectInfo | None:
        """The finished output: a file, or an object in the export bucket."""
        if status.status != JobState.COMPLETED:
            return None
        return open_store(self.settings.export_root).finished_output(status.job_id)

    def read_config(self, job_id: str) -> dict[str, Any]:
        """The job's stored config ({} when it cannot be read)."""
        try:
            return open_store(self.settings.export_root).read_config(job_id)
        except (ClusterError, RenderError, OSError, ValueError):
            return {}

    async def _call(self, make: Callable[[], Awaitable[T]]) -> T:
        try:
            return await _unwrap(make())
        except RayActorError as exc:
            raise ClusterUnavailableError(
                "the export service is restarting; please try again in a moment") from exc

    # ------------------------------------------------------------------ blocking API

    def submit_sync(self, config: dict[str, Any], *, preflight: bool = True) -> JobStatus:
        return _run_sync(self.submit(config, preflight=preflight))

    def get_sync(self, job_id: str) -> JobStatus:
        return _run_sync(self.get(job_id))

    def cancel_sync(self, job_id: str) -> JobStatus:
        return _run_sync(self.cancel(job_id))

    def delete_sync(self, job_id: str) -> tuple[JobStatus, bool]:
        return _run_sync(self.delete(job_id))

    def pieces_sync(self, job_id: str) -> tuple[PiecePlacement, ...]:
        return _run_sync(self.pieces(job_id))

    def list_sync(self, states: list[JobState] | None = None) -> list[JobStatus]:
        return _run_sync(self.list_jobs(states))

    def plan_sync(self, config: dict[str, Any]) -> Prepared:
        return _run_sync(self.plan(config))

    def preflight_sync(self, config: dict[str, Any]) -> Preflight:
        return _run_sync(self.preflight(config))


async def _unwrap(awaitable: Awaitable[T]) -> T:
    """Await a Ray call; re-raise the engine's and our own errors as themselves."""
    try:
        return await awaitable
    except RayTaskError as exc:
        cause = exc.cause
        if isinstance(cause, RenderError | JobNotFoundError) or type(cause).__module__.startswith(
                "cluster."):
            raise cause from exc
        raise


def _run_sync(coro: Awaitable[T]) -> T:
    import asyncio

    return asyncio.run(_as_coroutine(coro))


async def _as_coroutine(aw: Awaitable[T]) -> T:
    return await aw
