"""Planning a job on the cluster: probe where the sources are, plan where we are.

Probing needs the files, so it runs as one small task per media volume, each on a node that
holds that volume (shared volumes: anywhere); a source is found by the task whose node has
it. Planning itself is pure computation on the probed indexes and runs in the caller (the
coordinator, or a replica for a preflight) off its event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from render.config import parse_config
from render.engine import Prepared, prepare_with
from render.errors import RenderError, SourceNotFoundError
from render.media import SourceInfo

from .scheduling import live_volumes, placement
from .settings import Settings
from .tasks import probe_task


async def plan_job(config: dict[str, Any], settings: Settings, name: str) -> Prepared:
    """Probe (near the data) and plan; raises the engine's error for the first bad source."""
    cfg = parse_config(config)
    roots = [str(p) for p in settings.root_paths]
    volumes = list(dict.fromkeys(r.volume for r in settings.media_roots))
    where = await asyncio.to_thread(live_volumes)
    refs = [probe_task.options(name=f"{name}:probe:{v or 'shared'}",
                               **placement(v, where)).remote(config, roots)
            for v in volumes]
    found = merge_probes(await asyncio.gather(*refs))
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
