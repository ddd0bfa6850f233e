"""The cluster's Python API: submit, status, cancel, list (what the HTTP layer calls).

Every call goes to the named, detached actors, so it works the same from a Serve replica,
a CLI or a test, and a job outlives whoever submitted it. Each method has an async form
(for Serve handlers: never block the event loop) and a blocking one (``*_sync``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import ray
from ray.exceptions import RayActorError, RayError, RayTaskError

from render.config import ExportConfig, parse_config, unknown_field_warnings
from render.engine import Prepared
from render.errors import ConfigError, RenderError

from .coordinator import COORDINATOR_NAME, STATUS_NAME, Coordinator
from .errors import ClusterUnavailableError, JobNotFoundError
from .jobs import JobState, JobStatus, PiecePlacement
from .planning import plan_job
from .settings import Settings
from .status import StatusActor
from .webhooks import validate_callback_url

log = logging.getLogger("cutfarm.cluster")
T = TypeVar("T")


def ensure_ray(settings: Settings) -> bool:
    """Attach to the configured cluster, or a running one, or start a local one.

    ``ray_address`` "local" always starts a new local cluster. Returns True when this call
    started a cluster (the caller then owns its shutdown).
    """
    if ray.is_initialized():
        return False
    if settings.ray_address == "local":
        ray.init(address="local", namespace=settings.namespace)
        return True
    if settings.ray_address:
        _attach(settings.ray_address, settings.namespace)
        return False
    try:
        ray.init(address="auto", namespace=settings.namespace)
        return False
    except ConnectionError:
        log.info("no Ray cluster running; starting a local one")
        ray.init(namespace=settings.namespace)
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

    @classmethod
    def connect(cls, settings: Settings) -> CutfarmCluster:
        ensure_ray(settings)
        ns = settings.namespace
        settings.export_root.mkdir(parents=True, exist_ok=True)
        status = StatusActor.options(  # type: ignore[attr-defined]
            name=STATUS_NAME, namespace=ns, lifetime="detached", get_if_exists=True,
        ).remote(str(settings.export_root))
        coordinator = Coordinator.options(  # type: ignore[attr-defined]
            name=COORDINATOR_NAME, namespace=ns, lifetime="detached", get_if_exists=True,
        ).remote(settings)
        ray.get(coordinator.configure.remote(settings))
        ray.get(coordinator.start.remote())
        return cls(settings, status, coordinator)

    # ------------------------------------------------------------------ async API

    async def plan(self, config: dict[str, Any] | ExportConfig) -> Prepared:
        """Validate and plan without creating a job (preflight)."""
        cfg = config if isinstance(config, ExportConfig) else parse_config(config)
        data = cfg.model_dump(mode="json", by_alias=True)
        return await _unwrap(plan_job(data, self.settings, f"{cfg.id}:preflight"))

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
            warnings += (await self.plan(cfg)).warnings
        data = cfg.model_dump(mode="json", by_alias=True)
        return await self._call(lambda: self.coordinator.submit.remote(cfg.id, data,
                                                                        cfg.priority, warnings))

    async def get(self, job_id: str) -> JobStatus:
        return await self._call(lambda: self.status.get.remote(job_id))

    async def cancel(self, job_id: str) -> JobStatus:
        return await self._call(lambda: self.coordinator.cancel.remote(job_id))

    async def delete(self, job_id: str) -> tuple[JobStatus, bool]:
        """Cancel a pending or running job, or remove a finished one with its output;
        the bool says whether the job was removed."""
        return await self._call(lambda: self.coordinator.delete.remote(job_id))

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
        return await self._call(lambda: self.status.wait_change.remote(job_id, version, timeout))

    def output_path(self, status: JobStatus) -> Path | None:
        if status.status != JobState.COMPLETED:
            return None
        for ext in ("mp4", "webm"):
            path = self.settings.export_root / status.job_id / f"output.{ext}"
            if path.is_file():
                return path
        return None

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
