"""A preflight's answer: what a plan means for the user, small whatever the job's size.

A plan holds every source's sample index (680 KB for three 3-minute 4K cameras) and takes
120-190 ms of CPU to make for an 18-segment 4K edit. Made in the API replica, that CPU
held the replica's GIL while status polls waited; so the prober actor plans a preflight
where it probed (``cluster/tasks.py``) and sends back only this summary. Plain functions
of a ``Prepared``; no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from render.config import unknown_field_warnings
from render.engine import Prepared
from render.plan import CopyPiece, EncodePiece

#: Rough size of a re-encoded frame relative to the source's average, for disk estimates.
ENCODED_FRAME_FACTOR = 2.0
#: Rough speeds behind a preflight's time estimate (one worker): bytes copied per second,
#: pixels re-encoded per second.
COPY_BYTES_PER_SECOND = 200e6
ENCODE_PIXELS_PER_SECOND = 40e6


@dataclass(frozen=True)
class Preflight:
    """What a submit keeps (the plan's warnings) and what ``POST /api/export/plan`` shows
    (``summary``, already in the API's shape: see ``summarize``)."""

    warnings: tuple[str, ...]
    summary: dict[str, Any]


def estimate_encoded_bytes(prep: Prepared) -> int:
    """Re-encoded frames at twice the largest source's mean frame size."""
    frames = prep.plan.encode_frames
    if not frames:
        return 0
    sizes = [int(s.video.index.size.mean()) for s in prep.sources.values()
             if s.video.index.count]
    per_frame = max(sizes) if sizes else 200_000
    return int(frames * per_frame * ENCODED_FRAME_FACTOR)


def estimate_output_bytes(prep: Prepared) -> int:
    """Copied bytes + re-encoded frames + audio."""
    plan = prep.plan
    total = plan.copy_bytes + estimate_encoded_bytes(prep)
    if prep.audio is not None:
        total += int(plan.duration * prep.audio.bit_rate / 8)
    return total + (1 << 20)


def summarize(prep: Prepared) -> Preflight:
    """Per segment: exact frames, what is copied and what re-encoded; estimates."""
    plan = prep.plan
    segments: dict[int, dict[str, Any]] = {}
    for cut in plan.cuts:
        segments[cut.segment] = {
            "segment": cut.segment, "sourceIndex": cut.source, "firstFrame": cut.first,
            "lastFrame": cut.stop - 1, "frames": cut.frames,
            "sourceStart": float(cut.src_start), "duration": float(cut.duration),
            "outputStart": float(cut.out_start), "copiedFrames": 0, "reencodedFrames": 0,
            "copiedBytes": 0}
    for piece in plan.pieces:
        seg = segments.get(piece.segment)
        if seg is None:
            continue
        if isinstance(piece, CopyPiece):
            seg["copiedFrames"] += len(piece.samples(prep.sources[piece.source].video.index))
            seg["copiedBytes"] += piece.bytes
        elif isinstance(piece, EncodePiece):
            seg["reencodedFrames"] += piece.frames
    fmt = plan.out_format
    est_seconds = (plan.copy_bytes / COPY_BYTES_PER_SECOND
                   + plan.encode_frames * fmt.width * fmt.height / ENCODE_PIXELS_PER_SECOND
                   + 1.0)
    summary = {
        "segments": list(segments.values()),
        "droppedSegments": list(plan.dropped_segments),
        "frames": plan.frame_count,
        "duration": float(plan.duration),
        "transcode": plan.transcode,
        "video": {"codec": fmt.codec, "width": fmt.width, "height": fmt.height,
                  "pixFmt": fmt.pix_fmt, "rotation": fmt.rotation},
        "copiedBytes": plan.copy_bytes,
        "reencodedFrames": plan.encode_frames,
        "estimatedBytes": estimate_output_bytes(prep),
        "estimatedSeconds": round(est_seconds, 1),
        "warnings": [*unknown_field_warnings(prep.config), *prep.warnings],
    }
    return Preflight(tuple(prep.warnings), summary)
