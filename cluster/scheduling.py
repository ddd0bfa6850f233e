"""Where and with what resources each piece runs: pure functions over the plan and settings.

Locality is a soft preference with the semantics we need: a piece whose source lives on a
node-local volume gets soft node affinity to one of the live nodes labelled with that volume
(spread by piece index), so it *waits* while that node is busy, and only runs elsewhere if
the node is gone. (A label selector with a fallback was tried first: Ray falls back as soon
as the labelled node is merely busy, which sends pieces away from their data.) Sources on
shared volumes (no volume name) run anywhere.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from render.engine import Prepared
from render.plan import CopyPiece, EncodePiece
from render.sourcefile import LocalFile

from .settings import VOLUME_LABEL_PREFIX, Settings

#: Memory of a re-encode beyond its frames: codec state, Python, PyAV.
ENCODE_BASE_MEMORY = 300 << 20
#: Frames an encoder and decoder hold at once (lookahead, references, frame threads).
ENCODE_FRAMES_IN_FLIGHT = 48
AUDIO_MEMORY = 200 << 20
CONCAT_MEMORY = 300 << 20


@dataclass(frozen=True)
class PieceTask:
    index: int
    kind: str  # "encode" | "copy"
    name: str
    volume: str | None
    num_cpus: float
    memory: int


def placement(volume: str | None, volume_nodes: Mapping[str, Sequence[str]],
              salt: int = 0) -> dict[str, Any]:
    """Ray options preferring a live node that holds ``volume`` (none for shared volumes)."""
    if volume is None:
        return {}
    candidates = sorted(volume_nodes.get(volume, ()))
    if candidates:
        node = candidates[salt % len(candidates)]
        return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=True)}
    # No live node declares the volume right now: ask for the label, accept any node.
    return {
        "label_selector": {f"{VOLUME_LABEL_PREFIX}{volume}": "true"},
        "fallback_strategy": [{"label_selector": {}}],
    }


def live_volumes() -> dict[str, list[str]]:
    """``volume_nodes`` of the running cluster (a GCS call: run it off event loops)."""
    return volume_nodes(ray.nodes())  # type: ignore[no-untyped-call]


def volume_nodes(nodes: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Volume name -> ids of the live nodes labelled with it (from ``ray.nodes()``)."""
    out: dict[str, list[str]] = {}
    for node in nodes:
        if not node.get("Alive"):
            continue
        for key, value in (node.get("Labels") or {}).items():
            if key.startswith(VOLUME_LABEL_PREFIX) and str(value).lower() == "true":
                out.setdefault(key[len(VOLUME_LABEL_PREFIX):], []).append(str(node["NodeID"]))
    return out


def source_volumes(prep: Prepared, settings: Settings) -> dict[int, str | None]:
    return {i: settings.volume_of(src.file.path) if isinstance(src.file, LocalFile) else None
            for i, src in prep.sources.items()}


def encode_memory(width: int, height: int, pix_fmt: str) -> int:
    bytes_per_pixel = 3.0 if "10" in pix_fmt else 1.5
    return int(ENCODE_BASE_MEMORY + ENCODE_FRAMES_IN_FLIGHT * width * height * bytes_per_pixel)


def concat_volume(prep: Prepared, settings: Settings) -> str | None:
    """The concat actor goes where the output is written, else where most copied bytes are."""
    export_volume = settings.export_volume
    if export_volume is not None:
        return export_volume
    volumes = source_volumes(prep, settings)
    weight: Counter[str] = Counter()
    for piece in prep.plan.pieces:
        if isinstance(piece, CopyPiece):
            vol = volumes[piece.source]
            if vol is not None:
                weight[vol] += piece.bytes
    return weight.most_common(1)[0][0] if weight else None


def piece_tasks(prep: Prepared, settings: Settings, job_id: str) -> list[PieceTask]:
    """The tasks a job fans out to, in output order.

    Encode pieces always run as tasks. Copy pieces only need a task when their source is on
    a node-local volume other than the concat actor's: everywhere else the concat actor
    reads the samples straight from the file, so copying runs at disk speed with no hop.
    """
    volumes = source_volumes(prep, settings)
    here = concat_volume(prep, settings)
    fmt = prep.plan.out_format
    tasks: list[PieceTask] = []
    for i, piece in enumerate(prep.plan.pieces):
        if isinstance(piece, EncodePiece):
            src = piece.runs[0].source
            tasks.append(PieceTask(
                i, "encode", f"{job_id}:seg{piece.segment}:{piece.reason}:{i}", volumes[src],
                1.0, encode_memory(max(fmt.width, 16), max(fmt.height, 16), fmt.pix_fmt)))
        elif volumes[piece.source] is not None and volumes[piece.source] != here:
            tasks.append(PieceTask(
                i, "copy", f"{job_id}:seg{piece.segment}:copy:{i}", volumes[piece.source],
                0.25, min(piece.bytes * 2, settings.max_piece_bytes * 2) + (64 << 20)))
    return tasks


def audio_volume(prep: Prepared, settings: Settings) -> str | None:
    volumes = source_volumes(prep, settings)
    counts = Counter(volumes[s.source] for s in prep.plan.audio
                     if s.source is not None and volumes.get(s.source) is not None)
    return counts.most_common(1)[0][0] if counts else None
