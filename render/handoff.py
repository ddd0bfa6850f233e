"""Copied samples that an encode piece reads anyway, handed on instead of fetched twice.

A tail piece re-encodes the last frames before a cut, and to decode them it reads its GOP
from the keyframe on: the very samples the copy piece before it stream-copies (the GOP's
head, up to the frames that refer past the cut). From a disk the second read comes from the
page cache. From a bucket it is the same bytes requested twice: a quarter of everything a
20-cut export fetched. So for sources in a bucket, the encode piece writes the copy piece's
samples, as it reads them, to a file beside its own piece, and the muxer copies from there.

What is handed on is decided here, from the plan alone; who writes and who reads the file
is the caller's business (render/engine.py in one process, cluster/ across workers).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from pathlib import Path

from .media import SourceInfo
from .plan import CopyPiece, EncodePiece, Plan
from .sourcefile import StoredFile


def handoffs(plan: Plan, sources: Mapping[int, SourceInfo]) -> dict[int, tuple[int, int]]:
    """Copy piece index -> (the encode piece that reads its samples from some point to its
    end, the first sample it hands on), for sources in a bucket. The copy's samples before
    that point (earlier GOPs) are read from the source as usual."""
    copies: dict[int, list[tuple[int, int, int]]] = {}  # source -> (start, stop, index)
    for i, piece in enumerate(plan.pieces):
        if isinstance(piece, CopyPiece) and isinstance(sources[piece.source].file, StoredFile):
            copies.setdefault(piece.source, []).append((piece.dec_start, piece.dec_stop, i))
    for spans in copies.values():
        spans.sort()
    out: dict[int, tuple[int, int]] = {}
    for j, piece in enumerate(plan.pieces):
        if not isinstance(piece, EncodePiece):
            continue
        for run in piece.runs:
            spans = copies.get(run.source, [])
            # The copy that starts before the run's keyframe, then those after it.
            k = max(0, bisect.bisect_left(spans, (run.decode_from, -1, -1)) - 1)
            while k < len(spans) and spans[k][0] < run.decode_to:
                start, stop, i = spans[k]
                first = max(start, run.decode_from)
                if first < stop <= run.decode_to:
                    out.setdefault(i, (j, first))
                k += 1
    return out


def handoff_path(piece_path: Path, copy_index: int) -> Path:
    """Where the encode piece written to ``piece_path`` leaves copy piece ``copy_index``."""
    return piece_path.with_name(f"{piece_path.name}.copy-{copy_index:05d}")
