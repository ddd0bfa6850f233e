"""Planning a job on the cluster: probe the sources, plan where we are.

Every media root is a folder every node sees or a bucket, so one probe anywhere sees every
source: it runs in the prober actor, which stays up so a preflight never waits for a worker
to start (a task probes instead while the actor is gone). Planning itself is pure
computation on the probed indexes and runs in the caller (the coordinator, or a replica
for a preflight) off its event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ray.exceptions import RayActorError

from render.config import parse_config
from render.engine import Prepared, prepare_with
from render.errors import RenderError
from render.media import SourceInfo

from .settings import Settings
from .tasks import PROBER_CONCURRENCY, PROBER_NAME, Prober, probe_task

#: This process's handle on the prober, per namespace (a named-actor lookup per call would
#: cost a GCS round trip).
_probers: dict[str, Any] = {}


def prober(namespace: str) -> Any:
    """The probe actor, created on first use (and again after it is gone)."""
    handle = _probers.get(namespace)
    if handle is None:
        handle = _probers[namespace] = Prober.options(  # type: ignore[attr-defined]
            name=PROBER_NAME, namespace=namespace, lifetime="detached", get_if_exists=True,
            max_concurrency=PROBER_CONCURRENCY).remote()
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
        return await probe_task.options(name=f"{name}:probe").remote(config, roots)


async def plan_job(config: dict[str, Any], settings: Settings, name: str) -> Prepared:
    """Probe and plan; raises the engine's error for the first bad source."""
    cfg = parse_config(config)
    roots = [str(p) for p in settings.root_paths]
    found = found_sources(await _probe(config, roots, settings, name))
    return await asyncio.to_thread(
        prepare_with, cfg, found, max_piece_frames=settings.max_piece_frames,
        max_piece_bytes=settings.max_piece_bytes, preset=settings.preset)


def found_sources(result: dict[int, SourceInfo | RenderError]) -> dict[int, SourceInfo]:
    """Every source's info; raises the engine's error for the first one that failed."""
    out: dict[int, SourceInfo] = {}
    for i in sorted(result):
        answer = result[i]
        if isinstance(answer, RenderError):
            raise answer
        out[i] = answer
    return out
