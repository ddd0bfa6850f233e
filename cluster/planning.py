"""Planning a job on the cluster: probe the sources, plan where we are.

Every media root is a folder every node sees or a bucket, so one probe anywhere sees every
source: it runs in the prober actor, which stays up so a preflight never waits for a worker
to start (a task probes instead while the actor is gone). A job's plan is made in the
coordinator, off its event loop; a preflight's in the prober, which answers with a summary
(cluster/preflight.py), so an API replica never spends its CPU on planning.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ray.exceptions import RayActorError

from render.config import parse_config
from render.engine import Prepared, prepare_with
from render.errors import RenderError
from render.media import SourceInfo

from .preflight import Preflight, summarize
from .priority import CONTROL_PLANE_ENV, WORKER_ENV, at_batch_priority
from .settings import Settings
from .tasks import PROBER_CONCURRENCY, PROBER_NAME, Prober, found_sources, probe_task

#: This process's handle on the prober, per namespace (a named-actor lookup per call would
#: cost a GCS round trip).
_probers: dict[str, Any] = {}


def prober(namespace: str) -> Any:
    """The probe actor, created on first use (and again after it is gone)."""
    handle = _probers.get(namespace)
    if handle is None:
        handle = _probers[namespace] = Prober.options(  # type: ignore[attr-defined]
            name=PROBER_NAME, namespace=namespace, lifetime="detached", get_if_exists=True,
            max_concurrency=PROBER_CONCURRENCY, runtime_env=CONTROL_PLANE_ENV).remote()
    return handle


async def _probe(config: dict[str, Any], roots: list[str], settings: Settings,
                 name: str) -> dict[int, SourceInfo | RenderError]:
    try:
        result: dict[int, SourceInfo | RenderError] = await prober(
            settings.namespace).probe.remote(config, roots)
        return result
    except RayActorError:
        # Killed or restarting: a task probes instead, and the next call finds it anew.
        _probers.pop(settings.namespace, None)
        return await probe_task.options(name=f"{name}:probe",
                                        runtime_env=WORKER_ENV).remote(config, roots)


def plan_options(settings: Settings) -> dict[str, Any]:
    """``prepare_with``'s keyword arguments from the settings."""
    return {"max_piece_frames": settings.max_piece_frames,
            "max_piece_bytes": settings.max_piece_bytes, "preset": settings.preset}


async def plan_job(config: dict[str, Any], settings: Settings, name: str) -> Prepared:
    """Probe and plan; raises the engine's error for the first bad source."""
    cfg = parse_config(config)
    roots = [str(p) for p in settings.root_paths]
    found = found_sources(await _probe(config, roots, settings, name))
    # Batch work: a job's start can wait, the API replica beside it should not (an
    # 18-segment 4K plan is 120-190 ms of CPU).
    return await asyncio.to_thread(
        at_batch_priority, lambda: prepare_with(cfg, found, **plan_options(settings)))


async def preflight_job(config: dict[str, Any], settings: Settings, name: str) -> Preflight:
    """``plan_job``'s summary, made in the prober (the plan never travels); raises the
    engine's error for the first bad source."""
    roots = [str(p) for p in settings.root_paths]
    # A detached prober started by an older cutfarm outlives an upgrade and has no method.
    method = getattr(prober(settings.namespace), "preflight", None)
    if method is not None:
        try:
            answer: Preflight | RenderError = await method.remote(
                config, roots, plan_options(settings))
        except RayActorError:
            _probers.pop(settings.namespace, None)  # killed or restarting
        else:
            if isinstance(answer, RenderError):
                raise answer
            return answer
    # No prober to plan in: plan here from a probe (a task's, if the prober is gone).
    prep = await plan_job(config, settings, name)
    return await asyncio.to_thread(summarize, prep)
