"""render.plan on synthetic frame indices: no media, exact arithmetic, encoder-like GOPs.

``build_stream`` turns a list of ``Gop`` descriptions into a ``FrameIndex`` laid out the way
real encoders write samples (closed GOPs with B-frames, B-pyramids, P-only, all-intra, HEVC
open GOPs whose CRA is followed in decode order by leading pictures) and keeps the ground
truth (which samples are leading pictures of which RAP, which frames are anchors) so the
planner's decisions can be judged against the layout rather than against its own helpers.
"""

from __future__ import annotations

import bisect
import copy
import itertools
import json
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from render.config import Accuracy, parse_config, seconds, unknown_field_warnings
from render.errors import ConfigError, SegmentRangeError
from render.media import FrameIndex, VideoFormat
from render.plan import (
    ENCODER_MAX_BFRAMES,
    END_TOLERANCE,
    FALLBACK_TIMESCALE,
    MAX_ENCODE_FRAMES,
    TIME_EPSILON,
    CopyPiece,
    EncodePiece,
    EncodeRun,
    Plan,
    PlannedSource,
    build_plan,
    output_rate,
    select_frames,
)

#: A config shaped exactly as the editor sends it (see docs/api.md).
EXAMPLE_CONFIG = Path(__file__).resolve().parent / "fixtures" / "editor-config.json"
TB_15360 = Fraction(1, 15360)
TB_NTSC = Fraction(1, 30000)
H264 = VideoFormat("h264", 1920, 1080, "yuv420p")
HEVC = VideoFormat("hevc", 1920, 1080, "yuv420p")
OUT_H264 = VideoFormat("h264", 1280, 720, "yuv420p")

PROPS = settings(max_examples=200, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- synthetic streams


@dataclass(frozen=True)
class Gop:
    """One GOP as an encoder writes it.

    ``frames`` samples in all, leading pictures included. Display order of the GOP is
    ``leading`` leading pictures, the RAP, then the trailing frames in mini-GOPs of
    ``bframes`` B-frames followed by their anchor P (the last mini-GOP may be shorter; its
    last frame is then the P). Decode order is the RAP, its leading pictures, then each
    mini-GOP's anchor followed by its B-frames: ascending, or with ``pyramid`` the middle B
    first (a reference B), recursively. ``leading`` > 0 makes an HEVC CRA open GOP: the
    leading pictures display before the RAP but decode after it and reference the previous
    GOP. ``Gop(1, 0)`` repeated is all-intra; ``bframes=0`` is I P P P.

    ``order`` overrides all that with an explicit decode order, as display offsets within
    the GOP: ``order[0]`` is the RAP, offsets below it are its leading pictures (they must
    come first after it, as HEVC requires). E.g. ``(0, 2, 4, 1, 3)`` is I0 P2 P4 B1 B3, a
    legal H.264 order in which no decode prefix ending before P4 shows frame 1.
    """

    frames: int
    bframes: int = 2
    pyramid: bool = False
    leading: int = 0
    order: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        assert self.frames >= 1 + self.leading and self.bframes >= 0 and self.leading >= 0
        if self.order is not None:
            assert sorted(self.order) == list(range(self.frames))
            lead = self.order[0]
            assert sorted(self.order[1:lead + 1]) == list(range(lead))
            object.__setattr__(self, "leading", lead)


@dataclass(frozen=True, eq=False)
class Stream:
    """A synthetic FrameIndex plus the layout's ground truth (all decode indices)."""

    index: FrameIndex
    gops: tuple[Gop, ...]
    raps: tuple[int, ...]  # decode index of each GOP's RAP
    leading: dict[int, frozenset[int]]  # RAP decode index -> its leading pictures
    anchors_disp: frozenset[int]  # display indices of I and P frames

    @property
    def count(self) -> int:
        return self.index.count

    def t(self, disp: int) -> Fraction:
        """Seconds of display frame ``disp`` (``count`` means the end of the stream)."""
        idx = self.index
        ticks = idx.disp_end[-1] if disp >= idx.count else idx.disp_pts[disp]
        return int(ticks) * idx.time_base

    @property
    def end(self) -> Fraction:
        return self.t(self.count)


def _b_order(bs: list[int], pyramid: bool) -> list[int]:
    """Decode order of the B-frames between two already decoded anchors."""
    if not pyramid or len(bs) < 2:
        return list(bs)
    mid = len(bs) // 2
    return [bs[mid], *_b_order(bs[:mid], pyramid), *_b_order(bs[mid + 1:], pyramid)]


def build_stream(
    gops: list[Gop] | tuple[Gop, ...],
    *,
    time_base: Fraction = TB_15360,
    step: int = 512,
    steps: list[int] | np.ndarray | None = None,
    pts: list[int] | np.ndarray | None = None,
) -> Stream:
    """A FrameIndex for ``gops`` laid end to end.

    Display frame k has pts ``k * step`` (default: 30 fps in 1/15360), or, with ``steps``
    (one positive tick count per display frame: variable frame rate), the sum of the steps
    before it, or ``pts[k]`` (increasing, from 0; the last frame lasts ``step``). Each
    sample's duration is its display step. Sizes mimic an encoder
    (RAP 5000 + k, P 1500 + k, B 400 + k bytes) so byte counts are checkable.
    """
    dec_disp: list[int] = []  # display index of each sample, in decode order
    kind: list[str] = []
    raps: list[int] = []
    leading: dict[int, frozenset[int]] = {}
    anchors: set[int] = set()
    base = 0
    for gop in gops:
        if gop.order is not None:
            rap_dec = len(dec_disp)
            raps.append(rap_dec)
            leading[rap_dec] = frozenset(range(rap_dec + 1, rap_dec + 1 + gop.leading))
            anchors.add(base + gop.order[0])
            dec_disp += [base + o for o in gop.order]
            kind += ["I"] + ["P"] * (gop.frames - 1)
            base += gop.frames
            continue
        rap_disp = base + gop.leading
        rap_dec = len(dec_disp)
        raps.append(rap_dec)
        anchors.add(rap_disp)
        dec_disp.append(rap_disp)
        kind.append("I")
        lead = _b_order(list(range(base, rap_disp)), gop.pyramid)
        leading[rap_dec] = frozenset(range(rap_dec + 1, rap_dec + 1 + len(lead)))
        dec_disp += lead
        kind += ["B"] * len(lead)
        pos, stop = rap_disp + 1, base + gop.frames
        while pos < stop:
            anchor = min(pos + gop.bframes, stop - 1)
            anchors.add(anchor)
            dec_disp.append(anchor)
            kind.append("P")
            bs = _b_order(list(range(pos, anchor)), gop.pyramid)
            dec_disp += bs
            kind += ["B"] * len(bs)
            pos = anchor + 1
        base = stop
    n = len(dec_disp)
    disp_steps = np.full(n, step, dtype=np.int64) if steps is None else np.asarray(
        steps, dtype=np.int64)[:n]
    if pts is not None:
        disp_steps = np.diff(np.append(np.asarray(pts, dtype=np.int64)[:n], pts[n - 1] + step))
    assert len(disp_steps) == n and (disp_steps > 0).all()
    disp_pts = np.concatenate([[0], np.cumsum(disp_steps)[:-1]]).astype(np.int64)
    order = np.asarray(dec_disp, dtype=np.int64)
    assert sorted(dec_disp) == list(range(n))
    rap = np.zeros(n, dtype=bool)
    rap[raps] = True
    base_size = {"I": 5000, "P": 1500, "B": 400}
    size = np.array([base_size[k] + i for i, k in enumerate(kind)], dtype=np.int64)
    index = FrameIndex(time_base, disp_pts[order], disp_steps[order], rap, size)
    return Stream(index, tuple(gops), tuple(raps), leading, frozenset(anchors))


def closed(n_gops: int, gop: int, bframes: int = 2, pyramid: bool = False, **kw: Any) -> Stream:
    return build_stream([Gop(gop, bframes, pyramid)] * n_gops, **kw)


def open_gop(n_gops: int, gop: int, bframes: int = 2, leading: int = 2, **kw: Any) -> Stream:
    gops = [Gop(gop, bframes)] + [Gop(gop, bframes, leading=leading)] * (n_gops - 1)
    return build_stream(gops, **kw)


def planned(stream: Stream, fmt: VideoFormat = H264, audio: bool = True) -> PlannedSource:
    return PlannedSource(stream.index, fmt, audio)


def make_config(
    segments: list[tuple[int, float, float]],
    n_sources: int = 1,
    **output: Any,
) -> dict[str, Any]:
    """A schema-1 config dict; ``output`` keys starting with '_' go to the root."""
    root = {k[1:]: v for k, v in output.items() if k.startswith("_")}
    out = {k: v for k, v in output.items() if not k.startswith("_")}
    return {
        "version": 1,
        "id": "export-test",
        "sources": [{"filePath": f"cam{i}.mp4"} for i in range(n_sources)],
        "segments": [{"sourceIndex": s, "startTime": a, "endTime": b} for s, a, b in segments],
        "output": {"format": "mp4", "codec": "copy", **out},
        **root,
    }


def plan_for(streams: list[Stream], segments: list[tuple[int, float, float]], **kw: Any) -> Plan:
    build_kw = {k: kw.pop(k) for k in ("max_piece_frames", "transcode_chunk_frames",
                                       "transcode_format") if k in kw}
    cfg = parse_config(make_config(segments, len(streams), **kw))
    return build_plan(cfg, [planned(s) for s in streams], **build_kw)


def frame_time(stream: Stream, k: int) -> float:
    return float(stream.t(k))


# --------------------------------------------------------------------------- reference model


def brute_select(index: FrameIndex, start: Fraction, end: Fraction) -> list[int]:
    """Display indices whose pts is in [start, end), a frame within TIME_EPSILON of a cut
    counting as at the cut."""
    return [k for k in range(index.count)
            if start - TIME_EPSILON <= int(index.disp_pts[k]) * index.time_base
            < end - TIME_EPSILON]


def expected_outcome(
    streams: list[Stream], segments: list[tuple[int, float, float]], allow_empty: bool = False
) -> tuple[type[Exception], str] | list[tuple[int, int]]:
    """The first error resolve_cuts must raise, or each segment's display range [first, stop).

    With ``allow_empty`` (keyframe mode) a segment without frames is (n, n), n being the
    number of frames before its start, instead of an error.
    """
    ranges = []
    for i, (s, a, b) in enumerate(segments):
        st_ = streams[s]
        if seconds(a) >= st_.end:
            return SegmentRangeError, f"segments[{i}].startTime"
        if seconds(b) > st_.end + END_TOLERANCE:
            return SegmentRangeError, f"segments[{i}].endTime"
        kept = brute_select(st_.index, seconds(a), seconds(b))
        if kept:
            assert kept == list(range(kept[0], kept[-1] + 1))
            ranges.append((kept[0], kept[-1] + 1))
        elif allow_empty:
            idx = st_.index
            n = sum(1 for p in idx.disp_pts if int(p) * idx.time_base < seconds(a) - TIME_EPSILON)
            ranges.append((n, n))
        else:
            return ConfigError, f"segments[{i}]"
    return ranges


# --------------------------------------------------------------------------- plan checks


def output_map(plan: Plan, streams: list[Stream]) -> dict[int, tuple[int, int, int]]:
    """out display index -> (segment, source, source display index), each exactly once."""
    owner: dict[int, tuple[int, int, int]] = {}

    def put(out: int, val: tuple[int, int, int]) -> None:
        assert out not in owner, f"output frame {out} produced twice"
        owner[out] = val

    for piece in plan.pieces:
        if isinstance(piece, CopyPiece):
            idx = streams[piece.source].index
            for d in idx.disp_of_dec[piece.samples(idx)]:
                put(int(d) + piece.disp_base, (piece.segment, piece.source, int(d)))
        else:
            src = [(run.source, int(d)) for run in piece.runs for d in run.src_disp]
            assert len(src) == piece.frames
            for out, (s, d) in zip(range(piece.out_first, piece.out_stop), src, strict=True):
                put(out, (piece.segment, s, d))
    return owner


def piece_out_disp(plan: Plan, streams: list[Stream], piece: CopyPiece | EncodePiece) -> list[int]:
    if isinstance(piece, EncodePiece):
        return list(range(piece.out_first, piece.out_stop))
    idx = streams[piece.source].index
    return [int(d) + piece.disp_base for d in idx.disp_of_dec[piece.samples(idx)]]


def check_coverage(plan: Plan, streams: list[Stream]) -> None:
    """Property 2: pieces produce exactly the kept frames, each once, in output order."""
    owner = output_map(plan, streams)
    expected = {}
    out = 0
    for cut in plan.cuts:
        for j in range(cut.frames):
            expected[out + j] = (cut.segment, cut.source, cut.first + j)
        out += cut.frames
    assert owner == expected
    assert plan.frame_count == out
    # Pieces follow each other in output display order, segments in config order.
    prev_max, prev_seg = -1, -1
    for piece in plan.pieces:
        disp = piece_out_disp(plan, streams, piece)
        assert disp and min(disp) > prev_max
        assert piece.segment >= prev_seg
        prev_max, prev_seg = max(disp), piece.segment


def check_copy_pieces(plan: Plan, streams: list[Stream], max_piece_frames: int | None) -> None:
    """Property 3: copies start at RAPs, skip exactly the first RAP's leading pictures, form
    one decode-order run per segment and display a gap-free range."""
    for cut in plan.cuts:
        copies = [p for p in plan.pieces if isinstance(p, CopyPiece) and p.segment == cut.segment]
        if not copies:
            continue
        stream = streams[cut.source]
        idx = stream.index
        for i, p in enumerate(copies):
            assert p.source == cut.source
            assert idx.rap[p.dec_start] and p.dec_start in stream.raps
            assert p.dec_stop > p.dec_start
            want_skip = sorted(stream.leading[p.dec_start]) if i == 0 else []
            assert sorted(p.skip) == want_skip
            assert list(p.samples(idx)) == [d for d in range(p.dec_start, p.dec_stop)
                                            if d not in want_skip]
            assert p.bytes == int(idx.size[p.samples(idx)].sum())
            if i:
                assert p.dec_start == copies[i - 1].dec_stop
            if max_piece_frames is not None:
                inner = [r for r in stream.raps if p.dec_start < r < p.dec_stop]
                assert all(r - p.dec_start < max_piece_frames for r in inner)
            if i + 1 < len(copies) and max_piece_frames is not None:
                assert p.dec_stop - p.dec_start >= max_piece_frames
        disp = sorted(int(d) for p in copies for d in idx.disp_of_dec[p.samples(idx)])
        assert disp == list(range(disp[0], disp[-1] + 1))
        assert disp[0] == int(idx.disp_of_dec[copies[0].dec_start])


def check_runs(stream: Stream, run: EncodeRun) -> None:
    """Property 4: a run decodes from a RAP that can produce every needed frame."""
    idx = stream.index
    needed = [int(idx.dec_of_disp[d]) for d in run.src_disp]
    assert run.decode_from <= min(needed)
    assert max(needed) < run.decode_to <= idx.count
    if run.decode_from != 0:
        assert idx.rap[run.decode_from]
    if run.decode_from in stream.leading and run.decode_from != 0:
        assert not set(needed) & stream.leading[run.decode_from]
    # ... and it is the latest such RAP: none after it would do.
    for r in stream.raps:
        if run.decode_from < r <= min(needed):
            assert set(needed) & stream.leading[r], f"decoding could start later, at {r}"


def check_encode_pieces(plan: Plan, streams: list[Stream]) -> None:
    for piece in plan.pieces:
        if isinstance(piece, EncodePiece):
            for run in piece.runs:
                check_runs(streams[run.source], run)


def brute_copy_stop(stream: Stream, rap: int, stop: int) -> int:
    """Display stop of the longest decode-order prefix from ``rap`` (its leading pictures
    left out) that shows exactly the frames [display of rap, X) with X <= stop."""
    idx = stream.index
    d0 = int(idx.disp_of_dec[rap])
    best, shown = d0, set()
    for dec in range(rap, idx.count):
        if dec in stream.leading[rap]:
            continue
        shown.add(int(idx.disp_of_dec[dec]))
        top = max(shown)
        if top < stop and len(shown) == top - d0 + 1:
            best = top + 1
    return best


def check_minimal(plan: Plan, streams: list[Stream]) -> None:
    """Property 7 in general: heads end at the first RAP, copies reach as far as a decode
    prefix can (tails are shorter than a mini-GOP or the next RAP's leading pictures), and a
    segment is 'short' iff it holds no RAP."""
    for cut in plan.cuts:
        stream = streams[cut.source]
        idx = stream.index
        pieces = [p for p in plan.pieces if p.segment == cut.segment]
        if any(isinstance(p, EncodePiece) and p.reason == "format" for p in pieces):
            continue
        raps_in = [int(idx.disp_of_dec[r]) for r in stream.raps
                   if cut.first <= idx.disp_of_dec[r] < cut.stop]
        if not raps_in:
            assert len(pieces) == 1 and isinstance(pieces[0], EncodePiece)
            assert pieces[0].reason == "short"
            continue
        reasons = [p.reason if isinstance(p, EncodePiece) else "copy" for p in pieces]
        assert "short" not in reasons and "copy" in reasons
        head = min(raps_in) - cut.first
        assert (reasons[0] == "head") == (head > 0)
        if head:
            assert pieces[0].frames == head
        assert reasons.count("head") <= 1 and reasons.count("tail") <= 1
        tail = cut.stop - brute_copy_stop(stream, int(idx.dec_of_disp[min(raps_in)]), cut.stop)
        assert (reasons[-1] == "tail") == (tail > 0)
        assert set(reasons[1 if head else 0:-1 if tail else None]) == {"copy"}
        if tail:
            assert pieces[-1].frames == tail
            if not any(g.order for g in stream.gops):
                assert tail <= max(max(g.bframes, g.leading) for g in stream.gops)


def check_timeline(plan: Plan, streams: list[Stream]) -> None:
    """Property 5: exact output timestamps, segments end to end at source spacing."""
    pts = plan.out_pts.astype(object)
    tb = plan.out_time_base
    assert plan.out_pts[0] == 0
    assert all(b > a for a, b in itertools.pairwise(pts))
    assert plan.out_end > pts[-1]
    total = sum((c.duration for c in plan.cuts), Fraction(0))
    assert plan.out_end * tb == total == plan.duration
    out = 0
    start = Fraction(0)
    for cut in plan.cuts:
        idx = streams[cut.source].index
        src = [int(p) for p in idx.disp_pts[cut.first:cut.stop]]
        end = int(idx.disp_end[cut.stop - 1])
        assert cut.out_start == start
        assert cut.src_start == src[0] * idx.time_base
        assert cut.duration == (end - src[0]) * idx.time_base
        assert pts[out] * tb == start
        for j in range(1, cut.frames):
            assert (pts[out + j] - pts[out + j - 1]) * tb == (src[j] - src[j - 1]) * idx.time_base
        start += cut.duration
        out += cut.frames


def check_reorder(plan: Plan, streams: list[Stream]) -> None:
    """Property 6: dts from the global delay never exceeds a copied sample's pts."""
    D = plan.reorder_delay
    pts = [int(p) for p in plan.out_pts]
    first_dur = plan.frame_duration(0)

    def dts(i: int) -> int:
        return pts[i - D] if i >= D else pts[0] + (i - D) * first_dur

    i = 0
    need = 0
    has_encode = False
    for piece in plan.pieces:
        if isinstance(piece, CopyPiece):
            for out in piece_out_disp(plan, streams, piece):
                assert dts(i) <= pts[out], f"sample {i} (pts {pts[out]}) has dts {dts(i)}"
                need = max(need, i - out)
                i += 1
        else:
            has_encode = True
            i += piece.frames
    assert i == plan.frame_count
    assert all(dts(k) < dts(k + 1) for k in range(plan.frame_count - 1))
    # ... and it is no larger than the copies and our encoder require.
    assert max(need, ENCODER_MAX_BFRAMES if has_encode else 0) == D


def check_copy_plan(plan: Plan, streams: list[Stream], max_piece_frames: int | None = None
                    ) -> None:
    assert not plan.transcode
    check_coverage(plan, streams)
    check_copy_pieces(plan, streams, max_piece_frames)
    check_encode_pieces(plan, streams)
    check_timeline(plan, streams)
    check_reorder(plan, streams)


# --------------------------------------------------------------------------- strategies


ALL_KINDS = ("ip", "b", "pyramid", "open", "intra", "custom")
CLOSED_KINDS = ("ip", "b", "pyramid", "intra")


@st.composite
def custom_gop(draw: st.DrawFn, first: bool) -> Gop:
    """Any decode order: RAP, its leading pictures in any order, the rest in any order."""
    n = draw(st.integers(1, 12))
    lead = 0 if first else draw(st.integers(0, min(3, n - 1)))
    head = draw(st.permutations(range(lead)))
    rest = draw(st.permutations(range(lead + 1, n)))
    return Gop(n, order=(lead, *head, *rest))


@st.composite
def gop_lists(draw: st.DrawFn, kinds: tuple[str, ...] = ALL_KINDS) -> list[Gop]:
    kind = draw(st.sampled_from(kinds))
    n = draw(st.integers(1, 6))
    if kind == "intra":
        return [Gop(1, 0)] * draw(st.integers(1, 30))
    if kind == "custom":
        return [draw(custom_gop(g == 0)) for g in range(n)]
    bframes = {"ip": 0, "b": None, "pyramid": None, "open": None}[kind]
    if bframes is None:
        bframes = draw(st.integers(2 if kind == "pyramid" else 1, 4))
    gops = []
    for g in range(n):
        lead = draw(st.integers(1, bframes)) if kind == "open" and g else 0
        gops.append(Gop(draw(st.integers(lead + 1, 16)), bframes, kind == "pyramid", lead))
    return gops


@st.composite
def streams_st(draw: st.DrawFn, kinds: tuple[str, ...] = ALL_KINDS) -> Stream:
    gops = draw(gop_lists(kinds))
    timing = draw(st.sampled_from(["30", "ntsc", "vfr", "60", "ms"]))
    n = sum(g.frames for g in gops)
    if timing == "ms":  # 30 fps rounded to milliseconds, as in Matroska/WebM
        return build_stream(gops, time_base=Fraction(1, 1000), step=33,
                            pts=[round(Fraction(1000 * k, 30)) for k in range(n)])
    if timing == "30":
        return build_stream(gops)
    if timing == "60":
        return build_stream(gops, step=256)
    if timing == "ntsc":
        return build_stream(gops, time_base=TB_NTSC, step=1001)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return build_stream(gops, time_base=Fraction(1, 90000), steps=rng.integers(1000, 6000, n))


JITTER = st.one_of(st.sampled_from([0.0, 0.0, 4e-7, -4e-7, 3e-6, -3e-6]),
                   st.floats(-0.05, 0.05, allow_nan=False))


@st.composite
def segments_st(draw: st.DrawFn, streams: list[Stream], max_segments: int = 6
                ) -> list[tuple[int, float, float]]:
    segs = []
    for _ in range(draw(st.integers(1, max_segments))):
        s = draw(st.integers(0, len(streams) - 1))
        stream = streams[s]
        a = draw(st.integers(0, stream.count - 1))
        b = draw(st.integers(a + 1, stream.count))
        start = max(0.0, frame_time(stream, a) + draw(JITTER))
        end = frame_time(stream, b) + draw(JITTER)
        if end <= start:
            end = start + 0.04
        segs.append((s, start, end))
    return segs


@st.composite
def copy_cases(draw: st.DrawFn, kinds: tuple[str, ...] = ALL_KINDS
               ) -> tuple[list[Stream], list[tuple[int, float, float]]]:
    streams = [draw(streams_st(kinds)) for _ in range(draw(st.integers(1, 3)))]
    return streams, draw(segments_st(streams))


# --------------------------------------------------------------------------- the helper itself


def test_build_stream_closed_gop_layout() -> None:
    s = closed(2, 7, bframes=2)
    idx = s.index
    # decode I P B B P B B: display 0 3 1 2 6 4 5
    assert list(idx.disp_of_dec[:7]) == [0, 3, 1, 2, 6, 4, 5]
    assert list(idx.pts[:7]) == [0, 1536, 512, 1024, 3072, 2048, 2560]
    assert list(idx.rap_dec) == [0, 7] and s.raps == (0, 7)
    assert idx.reorder_depth == 1


def test_build_stream_pyramid_open_and_short_minigop() -> None:
    s = build_stream([Gop(6, 3, pyramid=True), Gop(6, 3, pyramid=True, leading=2)])
    idx = s.index
    # GOP 0: I0 P4 B2 B1 B3 (B2 is the pyramid's reference B), then a one-frame mini-GOP P5.
    # GOP 1: CRA at display 8 first, its leading pictures 7 6, then P11 B10 B9.
    assert list(idx.disp_of_dec) == [0, 4, 2, 1, 3, 5, 8, 7, 6, 11, 10, 9]
    assert s.leading[6] == frozenset({7, 8}) and s.leading[0] == frozenset()
    assert list(idx.leading_of(6)) == [7, 8]
    assert s.anchors_disp == {0, 4, 5, 8, 11}


# --------------------------------------------------------------------------- 1. selection


@PROPS
@given(stream=streams_st(), data=st.data())
def test_select_frames_matches_brute_force(stream: Stream, data: st.DataObject) -> None:
    idx = stream.index
    a = data.draw(st.integers(0, stream.count))
    b = data.draw(st.integers(0, stream.count))
    start = seconds(max(0.0, frame_time(stream, a) + data.draw(JITTER)))
    end = seconds(max(0.0, frame_time(stream, b) + data.draw(JITTER)))
    kept = brute_select(idx, start, end)
    first, stop = select_frames(idx, start, end)
    if kept:
        assert (first, stop) == (kept[0], kept[-1] + 1)
    else:
        assert stop <= first


def test_select_frames_epsilon_boundaries() -> None:
    idx = closed(1, 30).index  # frame k at k/30
    third = Fraction(10, 30)
    # Within a microsecond of a frame counts as at it, on both sides of both cuts.
    for d in (Fraction(0), Fraction(9, 10_000_000), -Fraction(9, 10_000_000)):
        assert select_frames(idx, third + d, 2 * third + d) == (10, 20)
    # Beyond the tolerance, the frame at the cut is not selected at the start ...
    assert select_frames(idx, third + Fraction(2, 1_000_000), 2 * third) == (11, 20)
    # ... and is selected at the end.
    assert select_frames(idx, third, 2 * third + Fraction(2, 1_000_000)) == (10, 21)
    assert select_frames(idx, third - Fraction(2, 1_000_000), 2 * third) == (10, 20)


@pytest.mark.parametrize(("tb", "step", "rate"), [(TB_15360, 512, 30), (TB_NTSC, 1001, None),
                                                  (Fraction(1, 90000), 3750, 24)])
def test_select_frames_float_editor_times(tb: Fraction, step: int, rate: int | None) -> None:
    idx = closed(20, 30, time_base=tb, step=step).index
    for k in range(idx.count - 1):
        t = k / rate if rate else k * 1001 / 30000  # what a float playhead holds
        t2 = (k + 1) / rate if rate else (k + 1) * 1001 / 30000
        assert select_frames(idx, seconds(t), seconds(t2)) == (k, k + 1), k
        # also the float, not its shortest repr
        assert select_frames(idx, Fraction(t), Fraction(t2)) == (k, k + 1), k


# --------------------------------------------------------------------------- 2-6. copy plans


@PROPS
@given(case=copy_cases(), max_piece=st.integers(1, 40))
def test_copy_plan_properties(case: tuple[list[Stream], list[tuple[int, float, float]]],
                              max_piece: int) -> None:
    streams, segments = case
    want = expected_outcome(streams, segments)
    if isinstance(want, tuple):
        exc, field = want
        with pytest.raises(exc) as info:
            plan_for(streams, segments, max_piece_frames=max_piece)
        assert type(info.value) is exc and info.value.field == field
        assert field in str(info.value)
        return
    plan = plan_for(streams, segments, max_piece_frames=max_piece)
    assert [(c.first, c.stop) for c in plan.cuts] == want
    assert [c.segment for c in plan.cuts] == list(range(len(segments)))
    check_copy_plan(plan, streams, max_piece)
    check_minimal(plan, streams)


@PROPS
@given(case=copy_cases(), fmt_of=st.lists(st.booleans(), min_size=3, max_size=3))
def test_copy_plan_mixed_formats(case: tuple[list[Stream], list[tuple[int, float, float]]],
                                 fmt_of: list[bool]) -> None:
    """Sources in another format than the first segment's are re-encoded whole."""
    streams, segments = case
    if isinstance(expected_outcome(streams, segments), tuple):
        return
    fmts = [H264 if f else HEVC for f in fmt_of[:len(streams)]]
    cfg = parse_config(make_config(segments, len(streams)))
    plan = build_plan(cfg, [planned(s, f) for s, f in zip(streams, fmts, strict=False)])
    out_fmt = fmts[segments[0][0]]
    assert plan.out_format == out_fmt
    check_copy_plan(plan, streams)
    for cut in plan.cuts:
        pieces = [p for p in plan.pieces if p.segment == cut.segment]
        if fmts[cut.source] != out_fmt:
            assert len(pieces) == 1 and isinstance(pieces[0], EncodePiece)
            assert pieces[0].reason == "format" and pieces[0].frames == cut.frames
        else:
            assert all(not isinstance(p, EncodePiece) or p.reason != "format" for p in pieces)


def test_open_gop_copy_skips_leading_pictures_of_first_rap() -> None:
    s = open_gop(4, 12, bframes=2, leading=2)
    idx = s.index
    cra = s.raps[1]  # display 14, leading pictures display 12, 13
    assert int(idx.disp_of_dec[cra]) == 14
    # Cut in at the CRA itself: its leading pictures are not kept and never copied.
    plan = plan_for([s], [(0, frame_time(s, 14), frame_time(s, 36))])
    check_copy_plan(plan, [s])
    first = plan.pieces[0]
    assert isinstance(first, CopyPiece) and first.dec_start == cra
    assert set(first.skip) == s.leading[cra] == {cra + 1, cra + 2}
    assert not any(isinstance(p, EncodePiece) for p in plan.pieces)
    # Cut in two frames earlier: the leading pictures are re-encoded as the head, decoded
    # from the previous RAP, and the copy still skips them.
    plan = plan_for([s], [(0, frame_time(s, 12), frame_time(s, 36))])
    check_copy_plan(plan, [s])
    head, copy_ = plan.pieces[0], plan.pieces[1]
    assert isinstance(head, EncodePiece) and head.reason == "head" and head.frames == 2
    assert head.runs[0].decode_from == 0 and head.runs[0].decode_to == cra + 3
    assert isinstance(copy_, CopyPiece) and set(copy_.skip) == {cra + 1, cra + 2}


def test_encode_run_never_starts_at_a_cra_whose_leading_pictures_it_needs() -> None:
    s = open_gop(3, 10, bframes=3, leading=3)
    idx = s.index
    cra = s.raps[1]
    lead_disp = sorted(int(idx.disp_of_dec[d]) for d in s.leading[cra])
    # Only the leading pictures: short segment, decoded from the previous GOP.
    plan = plan_for([s], [(0, frame_time(s, lead_disp[0]), frame_time(s, lead_disp[-1] + 1))])
    (piece,) = plan.pieces
    assert isinstance(piece, EncodePiece) and piece.reason == "short"
    assert piece.runs[0].decode_from == 0
    check_copy_plan(plan, [s])
    # Frames after the CRA only: decoding starts at the CRA.
    d = int(idx.disp_of_dec[cra])
    plan = plan_for([s], [(0, frame_time(s, d + 1), frame_time(s, d + 3))])
    (piece,) = plan.pieces
    assert isinstance(piece, EncodePiece) and piece.runs[0].decode_from == cra


def test_max_piece_frames_splits_copies_at_keyframes() -> None:
    s = closed(10, 15)
    plan = plan_for([s], [(0, 0.0, frame_time(s, 150))], max_piece_frames=40)
    assert [(p.dec_start, p.dec_stop) for p in plan.pieces] == [(0, 45), (45, 90), (90, 135),
                                                                 (135, 150)]
    check_copy_plan(plan, [s], 40)
    assert plan.copy_bytes == int(s.index.size.sum())
    assert plan.encode_frames == 0


def test_reorder_delay_follows_the_deepest_copy() -> None:
    for bframes, pyramid, want in ((0, False, 0), (2, False, 1), (3, True, 2), (4, True, 3)):
        s = closed(4, 20, bframes=bframes, pyramid=pyramid)
        plan = plan_for([s], [(0, 0.0, frame_time(s, 80))])
        assert plan.encode_frames == 0
        assert plan.reorder_delay == want == s.index.reorder_depth
        check_reorder(plan, [s])
    # An encode piece anywhere needs our encoder's delay.
    s = closed(4, 20, bframes=0)
    plan = plan_for([s], [(0, frame_time(s, 3), frame_time(s, 80))])
    assert plan.encode_frames == 17 and plan.reorder_delay == ENCODER_MAX_BFRAMES


# --------------------------------------------------------------------------- 5. timeline


def test_ntsc_many_segments_do_not_drift() -> None:
    s = closed(700, 30, time_base=TB_NTSC, step=1001)  # 21000 frames, 29.97 fps
    rng = np.random.default_rng(7)
    bounds = np.sort(rng.choice(np.arange(1, 20000), 499, replace=False))
    bounds = [0, *map(int, bounds), 20000]
    segs = [(0, k * 1001 / 30000, m * 1001 / 30000) for k, m in itertools.pairwise(bounds)]
    plan = plan_for([s], segs)
    assert len(plan.cuts) == 500 and plan.frame_count == 20000
    assert plan.out_time_base == TB_NTSC
    assert np.array_equal(plan.out_pts, np.arange(20000, dtype=np.int64) * 1001)
    assert plan.out_end == 20000 * 1001
    assert plan.duration == Fraction(20000 * 1001, 30000)


def test_ntsc_out_of_order_segments_cfr_duration() -> None:
    """Segments jumping around a 29.97 source: duration is kept frames x frame duration."""
    s = closed(40, 30, time_base=TB_NTSC, step=1001)
    rng = np.random.default_rng(3)
    segs, frames = [], 0
    for _ in range(500):
        k = int(rng.integers(0, 1150))
        m = k + int(rng.integers(1, 50))
        segs.append((0, k * 1001 / 30000, m * 1001 / 30000))
        frames += m - k
    plan = plan_for([s], segs)
    assert plan.frame_count == frames
    assert plan.duration == frames * Fraction(1001, 30000)
    assert np.array_equal(plan.out_pts, np.arange(frames, dtype=np.int64) * 1001)
    check_timeline(plan, [s])


def test_mixed_time_bases_use_an_exact_common_timescale() -> None:
    a = closed(3, 30)  # 30 fps in 1/15360
    b = closed(3, 30, time_base=TB_NTSC, step=1001)
    segs = [(0, 0.0, 1.0), (1, 0.5, frame_time(b, 45)), (0, frame_time(a, 31), 2.0)]
    plan = plan_for([a, b], segs)
    assert plan.out_time_base == Fraction(1, math.lcm(15360, 30000))
    check_copy_plan(plan, [a, b])
    assert plan.duration == 1 + Fraction(30 * 1001, 30000) + Fraction(29, 30)


def test_fallback_timescale_rounds_without_accumulating() -> None:
    a = closed(2, 30, time_base=TB_NTSC, step=1001)
    b = closed(2, 30, time_base=Fraction(1, 100003), step=3334)  # prime timescale
    segs = [(i % 2, frame_time([a, b][i % 2], 1), frame_time([a, b][i % 2], 50))
            for i in range(40)]
    plan = plan_for([a, b], segs)
    assert plan.out_time_base == Fraction(1, FALLBACK_TIMESCALE)
    tb = plan.out_time_base
    pts = [int(p) for p in plan.out_pts]
    assert pts[0] == 0 and all(q > p for p, q in itertools.pairwise(pts))
    out, start = 0, Fraction(0)
    for cut in plan.cuts:
        idx = [a, b][cut.source].index
        for j in range(cut.frames):
            exact = start + (int(idx.disp_pts[cut.first + j] - idx.disp_pts[cut.first])
                             * idx.time_base)
            assert abs(pts[out + j] * tb - exact) <= tb / 2
        start += cut.duration
        out += cut.frames
    assert abs(plan.out_end * tb - start) <= tb / 2


# --------------------------------------------------------------------------- 7. minimal encode


@pytest.mark.parametrize(("bframes", "pyramid"), [(0, False), (1, False), (2, False),
                                                  (3, False), (3, True), (4, True)])
def test_cut_out_mid_gop_tail_is_at_most_a_minigop(bframes: int, pyramid: bool) -> None:
    s = closed(3, 30, bframes=bframes, pyramid=pyramid)
    for stop in range(31, 60):
        plan = plan_for([s], [(0, 1.0, frame_time(s, stop))])
        check_copy_plan(plan, [s])
        anchors = [a for a in s.anchors_disp if 30 <= a < stop]
        copied_to = max(anchors) + 1
        tails = [p for p in plan.pieces if isinstance(p, EncodePiece)]
        if copied_to == stop:
            assert not tails
        else:
            (tail,) = tails
            assert tail.reason == "tail" and tail.out_first == copied_to - 30
            assert tail.frames == stop - copied_to <= bframes
            assert tail.runs[0].decode_from == 30


def test_cut_in_on_rap_has_no_head() -> None:
    s = closed(4, 24, bframes=3, pyramid=True)
    plan = plan_for([s], [(0, 1.6, 2.5)])  # frame 48 is a RAP; 2.5 s = frame 75
    assert isinstance(plan.pieces[0], CopyPiece)
    assert [p.reason for p in plan.pieces if isinstance(p, EncodePiece)] == ["tail"]
    plan = plan_for([s], [(0, frame_time(s, 47), 2.5)])
    assert isinstance(plan.pieces[0], EncodePiece) and plan.pieces[0].reason == "head"
    assert plan.pieces[0].frames == 1


@pytest.mark.parametrize("stream", [closed(5, 30), closed(5, 30, 3, True), closed(5, 12, 0),
                                    build_stream([Gop(1, 0)] * 40), open_gop(5, 30)],
                         ids=["b2", "pyramid", "ip", "intra", "open"])
def test_whole_gops_are_copied_without_encoding(stream: Stream) -> None:
    idx = stream.index
    raps = sorted(int(idx.disp_of_dec[r]) for r in stream.raps)
    bounds = [*raps, stream.count]
    for i in range(len(raps)):
        for j in range(i + 1, len(bounds)):
            a, b = bounds[i], bounds[j]
            if j < len(raps):  # end before the next GOP's leading pictures
                b -= stream.gops[j].leading
            plan = plan_for([stream], [(0, frame_time(stream, a), frame_time(stream, b))])
            assert all(isinstance(p, CopyPiece) for p in plan.pieces), (a, b)
            check_copy_plan(plan, [stream])


def test_copy_prefix_must_show_every_frame_up_to_the_cut() -> None:
    """I0 P2 P4 B1 B3: the prefix I0 P2 ends before the cut at 3 but lacks frame 1."""
    s = build_stream([Gop(5, order=(0, 2, 4, 1, 3))] * 3)
    plan = plan_for([s], [(0, 0.0, frame_time(s, 3))])
    check_copy_plan(plan, [s])
    copy_, tail = plan.pieces
    assert isinstance(copy_, CopyPiece) and (copy_.dec_start, copy_.dec_stop) == (0, 1)
    assert isinstance(tail, EncodePiece) and list(tail.runs[0].src_disp) == [1, 2]
    # Cut at 4: I0 P2 P4 is too far, I0 P2 still incomplete.
    plan = plan_for([s], [(0, 0.0, frame_time(s, 4))])
    assert [p.frames if isinstance(p, EncodePiece) else "copy" for p in plan.pieces] == [
        "copy", 3]
    # Whole GOPs copy.
    plan = plan_for([s], [(0, frame_time(s, 5), frame_time(s, 15))])
    assert plan.encode_frames == 0


def test_short_segment_without_rap_is_one_encode() -> None:
    s = closed(3, 30)
    plan = plan_for([s], [(0, frame_time(s, 35), frame_time(s, 50))])
    (piece,) = plan.pieces
    assert isinstance(piece, EncodePiece) and piece.reason == "short"
    assert (piece.out_first, piece.out_stop) == (0, 15)
    assert list(piece.runs[0].src_disp) == list(range(35, 50))
    assert piece.runs[0].decode_from == 30
    check_copy_plan(plan, [s])


# --------------------------------------------------------------------------- 8. keyframe mode


def nearest_bound(stream: Stream, disp: int) -> set[int]:
    idx = stream.index
    bounds = {int(idx.disp_of_dec[r]) for r in stream.raps} | {stream.count}
    dist = {b: abs(stream.t(b) - stream.t(disp)) for b in bounds}
    best = min(dist.values())
    return {b for b, d in dist.items() if d == best}


@PROPS
@given(case=copy_cases())
def test_keyframe_mode_snaps_to_raps(case: tuple[list[Stream], list[tuple[int, float, float]]]
                                     ) -> None:
    streams, segments = case
    want = expected_outcome(streams, segments, allow_empty=True)
    cfg = make_config(segments, len(streams), _accuracy="keyframe")
    parsed = parse_config(cfg)
    assert parsed.accuracy is Accuracy.KEYFRAME
    if isinstance(want, tuple):
        with pytest.raises(SegmentRangeError) as info:
            build_plan(parsed, [planned(s) for s in streams])
        assert info.value.field == want[1]
        return
    snapped = []
    for (s, _, _), (first, stop) in zip(segments, want, strict=True):
        f = nearest_bound(streams[s], first)
        e = nearest_bound(streams[s], stop)
        snapped.append((min(f), min(e)))
    dropped = tuple(i for i, (f, e) in enumerate(snapped) if e <= f)
    if len(dropped) == len(segments):
        with pytest.raises(ConfigError) as info:
            build_plan(parsed, [planned(s) for s in streams])
        assert info.value.field == "segments"
        return
    plan = build_plan(parsed, [planned(s) for s in streams])
    assert plan.dropped_segments == dropped
    kept = [i for i in range(len(segments)) if i not in dropped]
    assert [c.segment for c in plan.cuts] == kept
    assert [(c.first, c.stop) for c in plan.cuts] == [snapped[i] for i in kept]
    check_copy_plan(plan, streams)
    for piece in plan.pieces:
        if isinstance(piece, EncodePiece):
            # Only an open GOP's leading pictures before the RAP the cut-out snapped to.
            cut = next(c for c in plan.cuts if c.segment == piece.segment)
            stream = streams[cut.source]
            assert piece.reason == "tail"
            nxt = int(stream.index.dec_of_disp[cut.stop])
            lead = {int(stream.index.disp_of_dec[d]) for d in stream.leading[nxt]}
            assert set(piece.runs[0].src_disp) <= lead


@PROPS
@given(case=copy_cases(CLOSED_KINDS))
def test_keyframe_mode_closed_gop_is_pure_copy(
        case: tuple[list[Stream], list[tuple[int, float, float]]]) -> None:
    streams, segments = case
    cfg = parse_config(make_config(segments, len(streams), _accuracy="keyframe"))
    try:
        plan = build_plan(cfg, [planned(s) for s in streams])
    except (ConfigError, SegmentRangeError):
        return
    assert plan.encode_frames == 0
    assert all(isinstance(p, CopyPiece) for p in plan.pieces)


def test_keyframe_mode_drops_and_fails() -> None:
    s = closed(4, 30)
    # 0.9-1.1 s snaps both cuts to 1.0 s: dropped; 1.4-2.6 snaps to 1.0-3.0.
    plan = plan_for([s], [(0, 0.9, 1.1), (0, 1.4, 2.6)], _accuracy="keyframe")
    assert plan.dropped_segments == (0,)
    assert [(c.segment, c.first, c.stop) for c in plan.cuts] == [(1, 30, 90)]
    assert plan.encode_frames == 0 and plan.duration == 2
    # Ties go to the earlier keyframe.
    plan = plan_for([s], [(0, 1.5, 3.5)], _accuracy="keyframe")
    assert (plan.cuts[0].first, plan.cuts[0].stop) == (30, 90)
    # The end of the file counts as a keyframe.
    plan = plan_for([s], [(0, 2.2, 3.9)], _accuracy="keyframe")
    assert (plan.cuts[0].first, plan.cuts[0].stop) == (60, 120)
    with pytest.raises(ConfigError) as info:
        plan_for([s], [(0, 0.9, 1.1), (0, 2.1, 2.2)], _accuracy="keyframe")
    assert info.value.field == "segments"
    # Frame mode plans the same segments.
    assert plan_for([s], [(0, 0.9, 1.1), (0, 2.1, 2.2)]).frame_count == 9


# --------------------------------------------------------------------------- 9. errors


def test_segment_range_errors() -> None:
    s = closed(2, 30)  # 2.0 s
    with pytest.raises(SegmentRangeError) as info:
        plan_for([s], [(0, 0.0, 1.0), (0, 2.0, 2.1)])
    assert info.value.field == "segments[1].startTime"
    assert "segments[1].startTime" in str(info.value)
    with pytest.raises(SegmentRangeError) as info:
        plan_for([s], [(0, 1.0, 2.0 + 0.51)])
    assert info.value.field == "segments[0].endTime" and "segments[0].endTime" in str(info.value)
    # Within the tolerance the end is clamped to the source.
    plan = plan_for([s], [(0, 1.0, 2.0 + 0.49)])
    assert (plan.cuts[0].first, plan.cuts[0].stop) == (30, 60)
    # Just before the end: the last frame.
    plan = plan_for([s], [(0, frame_time(s, 59), 2.2)])
    assert plan.frame_count == 1


def test_segment_without_frames_is_config_error() -> None:
    s = build_stream([Gop(4, 0)], steps=[512, 15360, 512, 512])  # a 1 s gap after frame 0
    with pytest.raises(ConfigError) as info:
        plan_for([s], [(0, 0.0, 0.01), (0, 0.1, 0.9)])
    assert info.value.field == "segments[1]" and "segments[1]" in str(info.value)
    s = closed(1, 30)
    with pytest.raises(ConfigError) as info:
        plan_for([s], [(0, 0.001, 0.02)])
    assert info.value.field == "segments[0]"


# --------------------------------------------------------------------------- 10. transcode


def transcode_reference(plan: Plan, streams: list[Stream], fps: Fraction) -> list[tuple[int, int]]:
    """(cut position, source display index) of every output frame, by brute force."""
    total = sum((c.duration for c in plan.cuts), Fraction(0))
    times = {s: [int(p) * streams[s].index.time_base for p in streams[s].index.disp_pts]
             for s in {c.source for c in plan.cuts}}
    out = []
    k = 0
    for n in range(max(1, math.ceil(total * fps))):
        t = n / fps
        while k + 1 < len(plan.cuts) and plan.cuts[k + 1].out_start <= t:
            k += 1
        cut = plan.cuts[k]
        assert cut.out_start <= t < cut.out_start + cut.duration or cut is plan.cuts[-1]
        # On screen: the last frame stamped no later than half a tick (at most 1 ms) after
        # t (a container may round a frame's time up by that much).
        half = min(streams[cut.source].index.time_base / 2, Fraction(1, 1000))
        d = bisect.bisect_right(times[cut.source], cut.src_start + t - cut.out_start + half) - 1
        out.append((k, min(max(d, cut.first), cut.stop - 1)))
    return out


def check_transcode(plan: Plan, streams: list[Stream], fps: Fraction, chunk: int | None) -> None:
    assert plan.transcode and plan.out_format == OUT_H264
    tb = plan.out_time_base
    n = plan.frame_count
    assert [int(p) * tb for p in plan.out_pts] == [Fraction(i) / fps for i in range(n)]
    assert plan.out_end * tb == n / fps
    total = sum((c.duration for c in plan.cuts), Fraction(0))
    assert n == max(1, math.ceil(total * fps))
    gop = max(1, round(fps * 2))
    ref = transcode_reference(plan, streams, fps)
    pos = 0
    for i, piece in enumerate(plan.pieces):
        assert isinstance(piece, EncodePiece) and piece.reason == "transcode"
        assert piece.out_first == pos
        if i + 1 < len(plan.pieces):
            size = chunk or gop * 15
            assert piece.frames % gop == 0
            assert piece.frames == max(gop, size - size % gop)
        got = []
        for run in piece.runs:
            check_runs(streams[run.source], run)
            got += [(run.source, int(d)) for d in run.src_disp]
        want = ref[piece.out_first:piece.out_stop]
        assert got == [(plan.cuts[k].source, d) for k, d in want]
        assert piece.segment == plan.cuts[want[0][0]].segment
        pos = piece.out_stop
    assert pos == n
    assert plan.reorder_delay == ENCODER_MAX_BFRAMES


@PROPS
@given(case=copy_cases(), fps=st.sampled_from([None, 24, 25, 29.97, 30, 50, 60, 12.5, 59.94]),
       chunk=st.one_of(st.none(), st.integers(1, 400)))
def test_transcode_plan_properties(case: tuple[list[Stream], list[tuple[int, float, float]]],
                                   fps: float | None, chunk: int | None) -> None:
    streams, segments = case
    if isinstance(expected_outcome(streams, segments), tuple):
        return
    out: dict[str, Any] = {"codec": "h264"}
    if fps is not None:
        out["fps"] = fps
    plan = plan_for(streams, segments, transcode_format=OUT_H264, transcode_chunk_frames=chunk,
                    **out)
    rate = output_rate(parse_config(make_config(segments, len(streams), **out)),
                       [planned(s) for s in streams])
    if fps is None:
        first = streams[segments[0][0]].index
        assert rate == (first.frame_rate if first.is_cfr
                        else first.frame_rate.limit_denominator(1001))
    elif fps in (29.97, 59.94):
        assert rate == Fraction(round(fps), 1) * Fraction(1000, 1001)
    else:
        assert rate == Fraction(str(fps))
    check_transcode(plan, streams, rate, chunk)


def test_transcode_same_rate_is_identity() -> None:
    s = closed(10, 30)
    plan = plan_for([s], [(0, 37 / 30, 250 / 30)], codec="h264", fps=30,
                    transcode_format=OUT_H264)
    assert plan.frame_count == 213
    src = np.concatenate([r.src_disp for p in plan.pieces if isinstance(p, EncodePiece)
                          for r in p.runs])
    assert list(src) == list(range(37, 250))
    assert plan.out_time_base == TB_15360 and list(plan.out_pts[:3]) == [0, 512, 1024]
    # Default: the source's rate, one chunk of 15 GOPs.
    plan = plan_for([s], [(0, 37 / 30, 250 / 30)], codec="h264", transcode_format=OUT_H264)
    assert len(plan.pieces) == 1 and plan.frame_count == 213


def test_transcode_60_to_30_takes_every_other_frame() -> None:
    s = closed(10, 60, step=256)  # 60 fps, 10 s
    plan = plan_for([s], [(0, 1.0, 9.0)], codec="h264", fps=30, transcode_format=OUT_H264,
                    transcode_chunk_frames=100)
    assert plan.frame_count == 240
    assert [p.frames for p in plan.pieces] == [60, 60, 60, 60]
    src = [int(d) for p in plan.pieces if isinstance(p, EncodePiece) for r in p.runs
           for d in r.src_disp]
    assert src == list(range(60, 540, 2))
    check_transcode(plan, [s], Fraction(30), 100)


def test_transcode_ntsc_many_segments_stay_on_grid() -> None:
    s = closed(40, 30, time_base=TB_NTSC, step=1001)
    segs = [(0, k * 1001 / 30000, (k + 7) * 1001 / 30000) for k in range(0, 1190, 11)]
    plan = plan_for([s], segs, codec="h264", fps=29.97, transcode_format=OUT_H264)
    assert plan.frame_count == 7 * len(segs)
    src = [int(d) for p in plan.pieces if isinstance(p, EncodePiece) for r in p.runs
           for d in r.src_disp]
    assert src == [k + j for k in range(0, 1190, 11) for j in range(7)]
    assert np.array_equal(plan.out_pts, np.arange(plan.frame_count) * 1001)


def test_transcode_shows_the_frame_on_screen() -> None:
    """30 -> 24 fps: output frame n shows source frame floor(1.25 n), also when the source
    clock is coarser than the output's (1/30 s) or rounds (milliseconds: frame 5 at
    167 ms still shows from 166.67 ms, the time of output frame 4)."""
    for s in (closed(4, 30), build_stream([Gop(30)] * 4, time_base=Fraction(1, 30), step=1),
              build_stream([Gop(30)] * 4, time_base=Fraction(1, 1000), step=33,
                           pts=[round(Fraction(1000 * k, 30)) for k in range(120)])):
        plan = plan_for([s], [(0, 0.0, frame_time(s, 120))], codec="h264", fps=24,
                        transcode_format=OUT_H264)
        src = [int(d) for p in plan.pieces if isinstance(p, EncodePiece) for r in p.runs
               for d in r.src_disp]
        assert src == [n * 5 // 4 for n in range(96)]
        check_transcode(plan, [s], Fraction(24), None)


def test_transcode_keeps_an_exact_cfr_source_rate() -> None:
    s = closed(3, 30, time_base=Fraction(1, 90000), step=3001)  # 29.99 fps, exactly
    plan = plan_for([s], [(0, 0.0, 2.0)], codec="h264", transcode_format=OUT_H264)
    assert plan.out_time_base == Fraction(1, 90000)
    assert list(plan.out_pts[:3]) == [0, 3001, 6002]
    assert plan.frame_count == 60  # frames 0..59 start before 2.0 s; 60 frames of 3001/90000 s
    check_transcode(plan, [s], Fraction(90000, 3001), None)


def test_audio_spans_follow_segments() -> None:
    a, b = closed(3, 30), closed(3, 30, time_base=TB_NTSC, step=1001)
    segs = [(0, 0.0, 1.0), (1, 0.5, 1.5), (0, 2.0, 2.5)]
    cfg = make_config(segs, 2)
    cfg["segments"][1]["audioFromSource"] = False
    plan = build_plan(parse_config(cfg), [planned(a), planned(b)])
    assert [c.audio for c in plan.cuts] == [True, False, True]
    b_dur = Fraction(30 * 1001, 30000)  # frames 15..44 of the 29.97 source
    assert [(x.out_start, x.duration, x.source, x.src_start) for x in plan.audio] == [
        (0, 1, 0, 0),
        (1, b_dur, None, Fraction(15 * 1001, 30000)),
        (1 + b_dur, Fraction(1, 2), 0, 2),
    ]
    assert sum((x.duration for x in plan.audio), Fraction(0)) == plan.duration
    cfg["segments"][1]["audioFromSource"] = True
    plan = build_plan(parse_config(cfg), [planned(a), planned(b)])
    assert [x.source for x in plan.audio] == [0, 1, 0]
    # A source without audio gives silence even when its segment asks for it.
    plan = build_plan(parse_config(cfg), [planned(a), planned(b, audio=False)])
    assert [x.source for x in plan.audio] == [0, None, 0]
    cfg["output"]["includeAudio"] = False
    plan = build_plan(parse_config(cfg), [planned(a), planned(b)])
    assert plan.audio == () and not any(c.audio for c in plan.cuts)


def test_transcode_requires_format() -> None:
    s = closed(1, 30)
    with pytest.raises(ValueError, match="transcode_format"):
        plan_for([s], [(0, 0.0, 0.5)], codec="h264")
    plan = plan_for([s], [(0, 0.0, 0.5)], format="webm", transcode_format=OUT_H264)
    assert plan.transcode


def test_transcode_tiny_fps_is_not_zero() -> None:
    s = closed(1, 30)
    cfg = parse_config(make_config([(0, 0.0, 0.5)], codec="h264", fps=0.005))
    plan = build_plan(cfg, [planned(s)], transcode_format=OUT_H264)
    assert output_rate(cfg, [planned(s)]) == Fraction(1, 200)
    assert plan.frame_count == 1


# --------------------------------------------------------------------------- 11. parse_config


def example() -> dict[str, Any]:
    return json.loads(EXAMPLE_CONFIG.read_text())


def test_example_config_validates() -> None:
    cfg = parse_config(example())
    assert cfg.id == "export-3f6d2c1a-8b7e-4d2f-9a41-0c5e7b9d1f22" and len(cfg.sources) == 3
    assert cfg.sources[1].file_path == "host close.mp4"
    assert [(s.source_index, s.start, s.end) for s in cfg.segments] == [
        (0, 0, Fraction(25, 2)), (1, Fraction(25, 2), 28), (0, 28, 45)]
    assert cfg.output.codec == "copy" and not cfg.output.reencodes
    assert cfg.accuracy is Accuracy.FRAME
    assert seconds(0.1) == Fraction(1, 10)


def _mutate(path: list[str | int], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(example())
    node = data
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return data


@pytest.mark.parametrize(("path", "value", "names"), [
    (["segments", 1, "endTime"], 12.5, ["segments[1]", "endTime"]),
    (["segments", 1, "endTime"], 3.0, ["segments[1]", "endTime"]),
    (["segments", 2, "sourceIndex"], 3, ["segments[2].sourceIndex"]),
    (["segments", 0, "sourceIndex"], -1, ["segments[0].sourceIndex"]),
    (["segments", 0, "startTime"], -0.5, ["segments[0].startTime"]),
    (["version"], 2, ["version"]),
    (["id"], "a/b", ["id"]),
    (["id"], "..", ["id"]),
    (["id"], "../etc", ["id"]),
    (["id"], "", ["id"]),
    (["segments"], [], ["segments"]),
    (["sources"], [], ["sources"]),
    (["output", "codec"], "vp9", ["output.codec"]),
    (["output", "format"], "mkv", ["output.format"]),
    (["accuracy"], "gop", ["accuracy"]),
    (["sources", 0, "filePath"], "", ["sources[0].filePath"]),
])
def test_parse_config_errors_name_the_field(path: list[str | int], value: Any,
                                            names: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_mutate(path, value))
    msg = str(info.value)
    for name in names:
        assert name in msg, msg


def test_parse_config_error_field_attribute() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_mutate(["segments", 1, "startTime"], 30.0))
    assert info.value.field == "segments[1].endTime"
    with pytest.raises(ConfigError) as info:
        parse_config(_mutate(["id"], "x/../y"))
    assert info.value.field == "id" and str(info.value).startswith("id: ")
    with pytest.raises(ConfigError) as info:
        parse_config(_mutate(["segments", 0, "startTime"], -1))
    assert info.value.field == "segments[0].startTime"


def test_parse_config_source_index_error_field_attribute() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_mutate(["segments", 2, "sourceIndex"], 3))
    assert info.value.field == "segments[2].sourceIndex"


def test_parse_config_keeps_unknown_fields_and_accepts_extensions() -> None:
    data = example()
    data["transitions"] = []
    data["accuracy"] = "keyframe"
    data["callbackUrl"] = "https://example.com/hook"
    cfg = parse_config(data)
    assert cfg.accuracy is Accuracy.KEYFRAME
    assert cfg.callback_url == "https://example.com/hook"


def test_unknown_fields_become_warnings_with_the_closest_name() -> None:
    """Issue 8: typos in optional fields were accepted and ignored without a word."""
    assert unknown_field_warnings(parse_config(example())) == []
    data = example()
    data["segments"][2]["audioFromSorce"] = False
    data["output"]["includeAudo"] = False
    data["sources"][1]["hasAudoi"] = False
    data["acuracy"] = "keyframe"
    data["watermark"] = {"text": "draft"}
    data["zzzz"] = 1
    assert unknown_field_warnings(parse_config(data)) == [
        "acuracy is not a known field and was ignored; did you mean 'accuracy'?",
        "watermark is not supported yet and was ignored",
        "zzzz is not a known field and was ignored",
        "output.includeAudo is not a known field and was ignored; did you mean "
        "'includeAudio'?",
        "sources[1].hasAudoi is not a known field and was ignored; did you mean 'hasAudio'?",
        "segments[2].audioFromSorce is not a known field and was ignored; did you mean "
        "'audioFromSource'?",
    ]


def test_a_long_re_encode_is_cut_into_bounded_chunks_at_keyframes() -> None:
    """A 37 s segment from a camera of another format: parallel pieces, each starting on
    a keyframe of the source so no frame is decoded twice."""
    a, b = closed(40, 30), closed(40, 30)
    end = float(b.end) - 1.0
    cfg = parse_config(make_config([(0, 0.0, 1.0), (1, 0.5, end)], 2))
    other = VideoFormat("hevc", 1920, 1080, "yuv420p")
    plan = build_plan(cfg, [planned(a), PlannedSource(b.index, other, True)])
    chunks = [p for p in plan.pieces if isinstance(p, EncodePiece) and p.reason == "format"]
    assert len(chunks) >= math.ceil(len(range(*select_frames(
        b.index, Fraction(1, 2), Fraction(end)))) / MAX_ENCODE_FRAMES)
    assert all(p.frames <= MAX_ENCODE_FRAMES for p in chunks)
    assert all(x.out_stop == y.out_first for x, y in itertools.pairwise(chunks))
    for p in chunks[1:]:
        (run,) = p.runs
        assert run.decode_from == int(b.index.dec_of_disp[run.src_disp[0]])
    check_coverage(plan, [a, b])
    check_encode_pieces(plan, [a, b])
