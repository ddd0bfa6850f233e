"""What one worker receives: a re-encoded piece or the audio, cut out of the job's plan.

A job's ``Prepared`` holds every source's whole sample index and every piece of the plan.
Shipped to each task, it makes a job's dispatch cost grow with segments x pieces: at 2,000
segments each of ~3,000 tasks would unpickle every piece and every camera's index (26 MB
for three one-hour cameras; tests/bench/test_bench_dispatch.py). :func:`encode_job` cuts
out only what one re-encode reads: its frames' output times, and for each of its runs the
window of the source's index that run decodes, renumbered from the window's first sample.
A task's payload then grows with its own piece's length, never with the job's.

Plain data and pure functions: what a worker does with it is render/encode.py's business.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np

from .media import FrameIndex, IntArray, SourceInfo, VideoTrackInfo
from .plan import AudioSpan, CopyPiece, EncodePiece, EncodeRun, Plan

if TYPE_CHECKING:
    from .audio import AudioTarget
    from .encode import EncoderSettings


@dataclass(frozen=True, eq=False)
class EncodeJob:
    """One re-encoded piece, self-contained.

    ``runs[k]`` decodes ``windows[k]``: its source with the sample index cut to
    [``runs[k].decode_from``, ``runs[k].decode_to``) of the plan, renumbered from 0.
    """

    index: int  # the piece's position in the plan
    reason: str  # as EncodePiece.reason
    out_pts: IntArray  # presentation time of each of its frames, in out_time_base ticks
    out_time_base: Fraction
    runs: tuple[EncodeRun, ...]
    windows: tuple[SourceInfo, ...]
    settings: EncoderSettings
    #: Copy piece -> (the run that reads them, their window decode numbers): the samples
    #: this piece hands on (render/handoff.py), in the order the file receives them.
    hand_on: Mapping[int, tuple[int, IntArray]]

    @property
    def frames(self) -> int:
        return len(self.out_pts)


@dataclass(frozen=True, eq=False)
class AudioJob:
    """The export's audio: its spans and only the sources they read."""

    spans: tuple[AudioSpan, ...]
    sources: Mapping[int, SourceInfo]
    target: AudioTarget


def encode_job(plan: Plan, sources: Mapping[int, SourceInfo], settings: EncoderSettings,
               handoffs: Mapping[int, int], index: int) -> EncodeJob:
    """Plan piece ``index`` (an encode piece) as one worker's self-contained job.

    ``handoffs``: copy piece -> the first of its samples this piece hands on (those of
    ``render.handoff.handoffs`` that name this piece).
    """
    piece = plan.pieces[index]
    if not isinstance(piece, EncodePiece):
        raise ValueError(f"piece {index} is not re-encoded")
    runs: list[EncodeRun] = []
    windows: list[SourceInfo] = []
    for run in piece.runs:
        window, local = _windowed(sources[run.source], run)
        runs.append(local)
        windows.append(window)
    hand_on: dict[int, tuple[int, IntArray]] = {}
    for i, first in handoffs.items():
        copy = plan.pieces[i]
        assert isinstance(copy, CopyPiece)
        decs = copy.samples(sources[copy.source].video.index)
        decs = decs[decs >= first]
        for k, run in enumerate(piece.runs):
            inside = decs[(decs >= run.decode_from) & (decs < run.decode_to)]
            if run.source == copy.source and inside.size:
                hand_on[i] = (k, inside - run.decode_from)
                break
    return EncodeJob(index, piece.reason, plan.out_pts[piece.out_first:piece.out_stop].copy(),
                     plan.out_time_base, tuple(runs), tuple(windows), settings, hand_on)


def audio_job(spans: tuple[AudioSpan, ...], sources: Mapping[int, SourceInfo],
              target: AudioTarget) -> AudioJob:
    used = {s.source for s in spans if s.source is not None}
    return AudioJob(spans, {i: sources[i] for i in sorted(used)}, target)


def _windowed(src: SourceInfo, run: EncodeRun) -> tuple[SourceInfo, EncodeRun]:
    """``src`` with its video index cut to the samples ``run`` decodes, and ``run``
    renumbered to match (decode numbers from 0, display numbers within the window)."""
    lo, hi = run.decode_from, run.decode_to
    index = src.video.index
    cut = FrameIndex(
        time_base=index.time_base,
        pts=index.pts[lo:hi].copy(),
        duration=index.duration[lo:hi].copy(),
        rap=index.rap[lo:hi].copy(),
        size=index.size[lo:hi].copy(),
        decode_start=None if index.decode_start is None else index.decode_start[lo:hi].copy(),
    )
    video = src.video
    inband = None if video.inband is None else {
        d - lo: units for d, units in video.inband.items() if lo <= d < hi}
    track: VideoTrackInfo = replace(
        video, index=cut, offset=video.offset[lo:hi].copy(),
        stsd=None if video.stsd is None else video.stsd[lo:hi].copy(), inband=inband)
    # A display number is a rank among the index's presentation times: the same frame's
    # number in the window is the rank of its time among the window's.
    wanted_pts = index.disp_pts[run.src_disp]
    local = np.searchsorted(cut.disp_pts, wanted_pts).astype(np.int64)
    if local.size and (int(local.max()) >= cut.count
                       or not np.array_equal(cut.disp_pts[local], wanted_pts)):
        raise ValueError("an encode run asks for frames its decode range does not hold")
    return (replace(src, video=track),
            EncodeRun(run.source, local, 0, hi - lo))
