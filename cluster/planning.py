"""Planning a job on the cluster: probe where the sources are, plan where we are.

Probing needs the files, so it runs near them: on shared roots (folders every node sees,
buckets) in the prober actor, which stays up so a preflight never waits for a worker to
start; on each node-local volume as one small task on a node that holds it. A source is
found by the probe whose node has it. Planning itself is pure computation on the probed
indexes and runs in the caller (the coordinator, or a replica for a preflight) off its
event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from ray.exceptions import RayActorError

from render.config import parse_config
from render.engine import Prepared, prepare_with
from render.errors import RenderError, SourceNotFoundError
from render.media import SourceInfo

from .scheduling import live_volumes, placement
from .settings import Settings
from .tasks import PROBER_CONCURRENCY, PROBER_NAME, Prober, probe_task

#: This process's handle on the prober, per namespace (a named-actor lookup per call would
#: cost a GCS round trip).
_probers: dict[str, Any] = {}


def prober(namespace: str) -> Any:
    """The shared-root probe actor, created on first use (and again after it is gone)."""
    handle = _probers.get(namespace)
    if handle is None:
        handle = _probers[namespace] = Prober.options(  # type: ignore[attr-defined]
            name=PROBER_NAME, namespace=namespace, lifetime="detached", get_if_exists=True,
            max_concurrency=PROBER_CONCURRENCY).remote()
    return handle


async def _probe_shared(config: dict[str, Any], roots: list[str], settings: Settings,
                        name: str) -> dict[int, SourceInfo | RenderError]:
    try:
        result: dict[int, SourceInfo | RenderError] = await prober(
            settings.namespace).probe.remote(config, roots)
        return result
    except RayActorError:
        # Killed or restarting: a task probes instead, and the next call finds it anew.
        _probers.pop(settings.namespace, None)
        return await probe_task.options(name=f"{name}:probe:shared").remote(config, roots)


async def plan_job(config: dict[str, Any], settings: Settings, name: str) -> Prepared:
    """Probe (near the data) and plan; raises the engine's error for the first bad source."""
    cfg = parse_config(config)
    roots = [str(p) for p in settings.root_paths]
    volumes = list(dict.fromkeys(r.volume for r in settings.media_roots))
    labelled = [v for v in volumes if v is not None]
    where = await asyncio.to_thread(live_volumes) if labelled else {}
    probes: list[Awaitable[dict[int, SourceInfo | RenderError]]] = [
        probe_task.options(name=f"{name}:probe:{v}", **placement(v, where)).remote(config, roots)
        for v in labelled]
    if None in volumes:
        probes.append(_probe_shared(config, roots, settings, name))
    found = merge_probes(await asyncio.gather(*probes))
    return await asyncio.to_thread(
        prepare_with, cfg, found, max_piece_frames=settings.max_piece_frames,
        max_piece_bytes=settings.max_piece_bytes, preset=settings.preset)


def merge_probes(results: list[dict[int, SourceInfo | RenderError]]) -> dict[int, SourceInfo]:
    """One source each: a success anywhere wins; else the most telling error.

    "Not found" is what every node without the source answers, so any other error (corrupt,
    not a video, outside the media roots) is the one the user needs to see.
    """
    out: dict[int, SourceInfo] = {}
    for i in sorted({k for r in results for k in r}):
        answers = [r[i] for r in results if i in r]
        ok = next((a for a in answers if isinstance(a, SourceInfo)), None)
        if ok is not None:
            out[i] = ok
            continue
        errors = [a for a in answers if isinstance(a, RenderError)]
        telling = [e for e in errors if not isinstance(e, SourceNotFoundError)]
        raise (telling or errors)[0]
    return out
