"""The export plan: which source frames become which output frames, and how.

Pure functions over plain data (``FrameIndex``, the config) so every decision can be tested
without media. All times are exact: ticks of a source's time base, or Fractions of seconds;
floats from the editor enter once, through ``config.seconds``.

A segment keeps exactly the source frames whose presentation time lies in
[startTime, endTime), on the file's own presentation clock: the one ffprobe prints, a
browser's ``<video>`` plays and the editor's playhead shows, where the first video frame may
sit after 0 (B-frame delay without an edit list, an empty edit). A segment that starts
before that first frame holds it from the segment start, so no audio is lost.

In copy mode a segment's video becomes, in output order:

    [encode head]  frames from the cut-in up to the first copyable keyframe
    [copy ...]     whole GOPs from that keyframe, split at keyframes into bounded pieces
    [encode tail]  the frames after the last point where a copied prefix is self-contained

Output timestamps follow the source: each segment's frames keep their source spacing and
segments are laid end to end, each starting where the previous one's last frame ends, so the
output duration is the exact sum of the kept frames' durations (plus any hold of a file's
first frame) and nothing drifts. DTS are
not planned per piece; the muxer derives them from the output pts grid and one global reorder
delay (``Plan.reorder_delay``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from .config import Accuracy, ExportConfig, Segment
from .errors import ConfigError, SegmentRangeError
from .media import NAL_CODECS, FrameIndex, IntArray, VideoFormat

#: Editor times are floats from a playhead; a frame whose pts is within this of a cut time
#: counts as at the cut, so 0.33333333333333331 still selects the frame at 1/3.
TIME_EPSILON = Fraction(1, 1_000_000)
#: How late a rounded container timestamp may place a frame (Matroska: half a millisecond).
ROUNDING_SLACK = Fraction(1, 1000)
#: How far past the probed end a segment may reach before it is an error (the editor rounds).
END_TOLERANCE = Fraction(1, 2)
#: Upper bound on a muxer timescale (32-bit signed in MP4 mdhd).
MAX_TIMESCALE = 2**31 - 1
FALLBACK_TIMESCALE = 90000
#: Reorder delay of our own encoders: B-frames are capped at this many (see encode.py).
ENCODER_MAX_BFRAMES = 2
DEFAULT_MAX_PIECE_FRAMES = 1800
#: A stretch re-encoded whole (a camera of another format, a segment with no copyable
#: keyframe) is cut into pieces of at most this many frames, at source keyframes where
#: possible: they encode in parallel, each bounded in time and memory, and join seamlessly
#: since every piece starts with its own IDR. 8 s at 30 fps; 2 s GOPs give 4 per piece.
MAX_ENCODE_FRAMES = 240


@dataclass(frozen=True)
class PlannedSource:
    """What the planner needs of a probed source."""

    index: FrameIndex
    format: VideoFormat
    has_audio: bool


@dataclass(frozen=True)
class SegmentCut:
    """The exact source frames one segment keeps, and where they land in the output."""

    segment: int
    source: int
    first: int  # display index of the first kept frame
    stop: int  # display index one past the last kept frame
    src_start: Fraction  # seconds on the file's presentation clock: pts of ``first`` - hold
    duration: Fraction  # seconds: exact sum of the kept frames' durations, plus ``hold``
    out_start: Fraction  # seconds on the output timeline
    audio: bool  # this segment contributes its source's audio
    #: Ticks the first kept frame is shown before its own pts: a segment that starts before
    #: the file's first video frame holds that frame from the segment start, as players do.
    hold: int = 0

    @property
    def frames(self) -> int:
        return self.stop - self.first


@dataclass(frozen=True, eq=False)
class CopyPiece:
    """Samples copied bit for bit: decode range [dec_start, dec_stop) minus ``skip``."""

    segment: int
    source: int
    dec_start: int
    dec_stop: int
    skip: tuple[int, ...]  # leading pictures of the first keyframe: never copied
    disp_base: int  # output display index = source display index + disp_base
    bytes: int

    def samples(self, index: FrameIndex) -> IntArray:
        dec = np.arange(self.dec_start, self.dec_stop, dtype=np.int64)
        if self.skip:
            dec = dec[~np.isin(dec, np.asarray(self.skip, dtype=np.int64))]
        return dec

    @property
    def kind(self) -> str:
        return "copy"


@dataclass(frozen=True, eq=False)
class EncodeRun:
    """Source frames for consecutive output frames, all from one source."""

    source: int
    src_disp: IntArray  # source display index per output frame (repeats when fps converts)
    decode_from: int  # decode index of the keyframe to start decoding at
    decode_to: int  # one past the last sample to feed the decoder


@dataclass(frozen=True, eq=False)
class EncodePiece:
    """Output frames [out_first, out_stop) decoded from sources and encoded afresh."""

    segment: int  # the segment of the first frame (-1 never happens; chunks span several)
    out_first: int
    out_stop: int
    runs: tuple[EncodeRun, ...]
    reason: str  # "head", "tail", "short", "format", "transcode"

    @property
    def frames(self) -> int:
        return self.out_stop - self.out_first

    @property
    def kind(self) -> str:
        return "encode"


Piece = CopyPiece | EncodePiece


@dataclass(frozen=True)
class AudioSpan:
    """Output audio [out_start, out_start + duration) taken from ``source`` at ``src_start``."""

    out_start: Fraction
    duration: Fraction
    source: int | None  # None: silence
    src_start: Fraction


@dataclass(frozen=True, eq=False)
class Plan:
    cuts: tuple[SegmentCut, ...]
    pieces: tuple[Piece, ...]
    out_format: VideoFormat
    out_pts: IntArray  # display order, in out_time_base ticks
    out_end: int  # ticks: end of the last frame
    out_time_base: Fraction
    reorder_delay: int  # global: dts[i] = out_pts[i - reorder_delay]
    audio: tuple[AudioSpan, ...]
    transcode: bool  # every frame re-encoded (codec h264/h265 or webm)
    dropped_segments: tuple[int, ...]  # keyframe mode: segments that snapped to nothing

    @property
    def frame_count(self) -> int:
        return len(self.out_pts)

    @property
    def duration(self) -> Fraction:
        return self.out_end * self.out_time_base

    @property
    def copy_bytes(self) -> int:
        return sum(p.bytes for p in self.pieces if isinstance(p, CopyPiece))

    @property
    def encode_frames(self) -> int:
        return sum(p.frames for p in self.pieces if isinstance(p, EncodePiece))

    def frame_duration(self, out_disp: int) -> int:
        nxt = self.out_pts[out_disp + 1] if out_disp + 1 < self.frame_count else self.out_end
        return int(nxt - self.out_pts[out_disp])


# --------------------------------------------------------------------------- selection


def select_frames(index: FrameIndex, start: Fraction, end: Fraction) -> tuple[int, int]:
    """Display range [first, stop) of the frames whose pts lies in [start, end)."""
    pts = index.disp_pts
    lo = _ceil_ticks(start - TIME_EPSILON, index.time_base)
    hi = _ceil_ticks(end - TIME_EPSILON, index.time_base)
    first = int(np.searchsorted(pts, lo, side="left"))
    stop = int(np.searchsorted(pts, hi, side="left"))
    shown_lo, shown_hi = index.first_shown, index.last_shown
    return min(max(first, shown_lo), shown_hi), max(min(stop, shown_hi), shown_lo)


def snap_to_keyframes(index: FrameIndex, first: int, stop: int) -> tuple[int, int]:
    """Move both cuts to the nearest copy-start keyframe (the file's end counts as one)."""
    raps = np.sort(index.disp_of_dec[index.rap_dec])
    raps = raps[(raps >= index.first_shown) & (raps < index.last_shown)]
    bounds = np.append(raps, index.last_shown)
    return _nearest(bounds, first, index), _nearest(bounds, stop, index)


def _nearest(bounds: IntArray, disp: int, index: FrameIndex) -> int:
    pos = int(np.searchsorted(bounds, disp))
    cands = [int(bounds[i]) for i in (pos - 1, pos) if 0 <= i < len(bounds)]

    def dist(b: int) -> int:
        return abs(_disp_time(index, b) - _disp_time(index, disp))

    return min(cands, key=lambda b: (dist(b), b))


def _disp_time(index: FrameIndex, disp: int) -> int:
    if disp >= index.count:
        return int(index.disp_end[-1])
    return int(index.disp_pts[disp])


def _ceil_ticks(t: Fraction, time_base: Fraction) -> int:
    return math.ceil(t / time_base)


# --------------------------------------------------------------------------- copy mode


def plan_segment_pieces(
    index: FrameIndex,
    *,
    segment: int,
    source: int,
    first: int,
    stop: int,
    out_first: int,
    max_piece_frames: int = DEFAULT_MAX_PIECE_FRAMES,
    max_piece_bytes: int | None = None,
) -> list[Piece]:
    """Head encode, copied GOPs, tail encode for one segment (output order)."""
    disp_base = out_first - first
    raps_disp = index.disp_of_dec[index.rap_dec]
    after = np.flatnonzero((raps_disp >= first) & (raps_disp < stop))
    if after.size == 0:
        return encode_chunks(index, segment, source, first, stop, disp_base, "short")
    r_first = int(index.rap_dec[after[0]])
    head_stop = int(index.disp_of_dec[r_first])
    copy_stop_dec, copy_stop_disp = _copy_extent(index, r_first, stop)
    if copy_stop_dec == r_first:
        return encode_chunks(index, segment, source, first, stop, disp_base, "short")
    pieces: list[Piece] = []
    if head_stop > first:
        pieces.append(_encode(index, segment, source, first, head_stop, disp_base, "head"))
    skip = tuple(int(d) for d in index.leading_of(r_first))
    pieces.extend(
        _split_copy(index, segment, source, r_first, copy_stop_dec, skip, disp_base,
                    max_piece_frames, max_piece_bytes)
    )
    if copy_stop_disp < stop:
        pieces.append(_encode(index, segment, source, copy_stop_disp, stop, disp_base, "tail"))
    return pieces


def _copy_extent(index: FrameIndex, r_first: int, stop: int) -> tuple[int, int]:
    """Longest decode-order run from ``r_first`` that displays exactly [d(r_first), X), X<=stop.

    A prefix of a GOP in decode order is self-contained (references point backwards in
    decode order), but with B-frames it may hold a frame displayed after the cut-out, or
    miss one displayed before it. Only a prefix whose displayed frames form a gap-free range
    ending at or before the cut can be copied; the rest of the segment is re-encoded.
    Returns (decode stop, display stop).
    """
    d0 = int(index.disp_of_dec[r_first])
    raps_after = index.rap_dec[(index.rap_dec > r_first)
                               & (index.disp_of_dec[index.rap_dec] >= stop)]
    limit = int(raps_after[0]) if raps_after.size else index.count
    dec = np.arange(r_first, limit, dtype=np.int64)
    disp = index.disp_of_dec[dec]
    lead = np.isin(dec, index.leading_of(r_first))
    disp_kept = np.where(lead, -1, disp)
    runmax = np.maximum.accumulate(disp_kept)
    count = np.cumsum(~lead)
    ok = (runmax - d0 + 1 == count) & (runmax + 1 <= stop) & ~lead
    good = np.flatnonzero(ok)
    if good.size == 0:
        return r_first, d0
    last = int(good[-1])
    return r_first + last + 1, int(runmax[last]) + 1


def _split_copy(
    index: FrameIndex,
    segment: int,
    source: int,
    dec_start: int,
    dec_stop: int,
    skip: tuple[int, ...],
    disp_base: int,
    max_piece_frames: int,
    max_piece_bytes: int | None = None,
) -> list[Piece]:
    """Split a copy run at the first keyframe past ``max_piece_frames`` or ``max_piece_bytes``.

    Pieces bound the memory of whoever ships them (a GOP is the smallest unit, so a piece
    may pass a bound by less than one GOP).
    """
    raps = index.rap_dec[(index.rap_dec > dec_start) & (index.rap_dec < dec_stop)]
    ends = np.cumsum(index.size)
    cuts = [dec_start]
    for r in raps:
        start_bytes = int(ends[cuts[-1] - 1]) if cuts[-1] > 0 else 0
        too_big = max_piece_bytes is not None and int(ends[r - 1]) - start_bytes >= max_piece_bytes
        if int(r) - cuts[-1] >= max_piece_frames or too_big:
            cuts.append(int(r))
    cuts.append(dec_stop)
    pieces: list[Piece] = []
    for i, (a, b) in enumerate(itertools.pairwise(cuts)):
        piece_skip = skip if i == 0 else ()
        sel = np.arange(a, b)
        if piece_skip:
            sel = sel[~np.isin(sel, np.asarray(piece_skip))]
        pieces.append(CopyPiece(segment, source, a, b, piece_skip, disp_base,
                                int(index.size[sel].sum())))
    return pieces


def _encode(
    index: FrameIndex, segment: int, source: int, first: int, stop: int, disp_base: int,
    reason: str,
) -> EncodePiece:
    src_disp = np.arange(first, stop, dtype=np.int64)
    run = encode_run(index, source, src_disp)
    return EncodePiece(segment, first + disp_base, stop + disp_base, (run,), reason)


def encode_chunks(
    index: FrameIndex, segment: int, source: int, first: int, stop: int, disp_base: int,
    reason: str, max_frames: int = MAX_ENCODE_FRAMES,
) -> list[Piece]:
    """Display range [first, stop) re-encoded as pieces of at most ``max_frames``.

    Each piece ends at the last decode-start point (a keyframe or recovery point) that
    keeps it within the bound, so the next piece usually decodes from its own first frame;
    a stretch without one is cut at the bound, and that piece decodes from the start point
    before it (up to a GOP twice).
    """
    starts = np.sort(index.disp_of_dec[index.start_dec])
    pieces: list[Piece] = []
    a = first
    while a < stop:
        b = min(stop, a + max_frames)
        if b < stop:
            inside = starts[(starts > a) & (starts <= b)]
            b = int(inside[-1]) if inside.size else b
        pieces.append(_encode(index, segment, source, a, b, disp_base, reason))
        a = b
    return pieces


def encode_run(index: FrameIndex, source: int, src_disp: IntArray) -> EncodeRun:
    """Where decoding must start and stop to produce the frames ``src_disp``.

    Start at the latest random-access point before every needed sample, but not at one
    whose leading pictures are needed: a decoder starting at a CRA drops its RASL frames.
    """
    needed_dec = index.dec_of_disp[src_disp]
    lo = int(needed_dec.min())
    hi = int(needed_dec.max()) + 1
    cands = index.start_dec[index.start_dec <= lo][::-1]
    needed_disp_min = int(src_disp.min())
    for r in cands:
        r = int(r)
        if needed_disp_min >= int(index.disp_of_dec[r]):
            return EncodeRun(source, src_disp, r, hi)
        leading = index.leading_of(r)
        if not np.isin(needed_dec, leading).any():
            return EncodeRun(source, src_disp, r, hi)
    if index.rap_dec.size and int(index.rap_dec[0]) == 0:
        return EncodeRun(source, src_disp, 0, hi)
    # A stream that does not start on a keyframe: decode from its first sample and let the
    # decoder skip what it cannot reconstruct (the frames before the first keyframe).
    return EncodeRun(source, src_disp, 0, hi)


# --------------------------------------------------------------------------- whole plan


def build_plan(
    config: ExportConfig,
    sources: Sequence[PlannedSource],
    *,
    max_piece_frames: int = DEFAULT_MAX_PIECE_FRAMES,
    max_piece_bytes: int | None = None,
    transcode_chunk_frames: int | None = None,
    transcode_format: VideoFormat | None = None,
) -> Plan:
    """Plan a whole export. ``transcode_format`` is the target for re-encoded outputs."""
    cuts, dropped = resolve_cuts(config, sources)
    transcode = config.output.reencodes
    if transcode:
        if transcode_format is None:
            raise ValueError("transcode_format is required when the output re-encodes")
        return _plan_transcode(config, sources, cuts, dropped, transcode_format,
                               transcode_chunk_frames)
    return _plan_copy(config, sources, cuts, dropped, max_piece_frames, max_piece_bytes)


def resolve_cuts(
    config: ExportConfig, sources: Sequence[PlannedSource]
) -> tuple[list[SegmentCut], tuple[int, ...]]:
    """Snap every segment to source frames and lay the segments end to end."""
    cuts: list[SegmentCut] = []
    dropped: list[int] = []
    out_start = Fraction(0)
    for i, seg in enumerate(config.segments):
        src = sources[seg.source_index]
        index = src.index
        start, end = seg.start, seg.end
        src_end = (index.seconds(int(index.disp_end[index.last_shown - 1]))
                   if index.last_shown > index.first_shown else Fraction(0))
        if start >= src_end:
            raise SegmentRangeError(
                f"segments[{i}].startTime ({seg.start_time}s) is beyond the end of source "
                f"{seg.source_index} ({float(src_end):.3f}s)",
                field=f"segments[{i}].startTime",
            )
        if end > src_end + END_TOLERANCE:
            raise SegmentRangeError(
                f"segments[{i}].endTime ({seg.end_time}s) is beyond the end of source "
                f"{seg.source_index} ({float(src_end):.3f}s)",
                field=f"segments[{i}].endTime",
            )
        first, stop = select_frames(index, start, end)
        if config.accuracy is Accuracy.KEYFRAME:
            first, stop = snap_to_keyframes(index, first, stop)
        if stop <= first:
            if config.accuracy is Accuracy.KEYFRAME:
                dropped.append(i)
                continue
            raise ConfigError(_no_frame_message(i, seg, index), field=f"segments[{i}]")
        hold = _hold_ticks(index, first, start)
        src_start = index.seconds(int(index.disp_pts[first]) - hold)
        duration = index.seconds(int(index.disp_end[stop - 1] - index.disp_pts[first]) + hold)
        audio = (config.output.include_audio and seg.audio_from_source and src.has_audio)
        cuts.append(SegmentCut(i, seg.source_index, first, stop, src_start, duration,
                               out_start, audio, hold))
        out_start += duration
    if not cuts:
        raise ConfigError(
            "segments: every segment is shorter than the distance between keyframes; use "
            "accuracy \"frame\" for cuts this short",
            field="segments",
        )
    return cuts, tuple(dropped)


def _hold_ticks(index: FrameIndex, first: int, start: Fraction) -> int:
    """How long before its pts the first frame of the file shows when a segment starts early.

    Only the file's first frame is held: mid-file, a cut between two frames starts at the
    next frame, as it always has. The gap is whole ticks from the cut time (rounded like
    ``select_frames``), never earlier than the file's time 0.
    """
    if first != index.first_shown or index.count == 0:
        return 0
    start_ticks = max(_ceil_ticks(start - TIME_EPSILON, index.time_base), 0)
    return max(int(index.disp_pts[first]) - start_ticks, 0)


def _no_frame_message(i: int, seg: Segment, index: FrameIndex) -> str:
    text = (f"segments[{i}] ({seg.start_time}s to {seg.end_time}s) contains no frame of "
            f"source {seg.source_index}")
    first_shown = (index.seconds(int(index.disp_pts[index.first_shown]))
                   if index.last_shown > index.first_shown else None)
    if first_shown is not None and first_shown >= seg.end:
        text += f": its video starts at {float(first_shown):.3f}s on the file's clock"
    return text


def _audio_spans(config: ExportConfig, cuts: Sequence[SegmentCut]) -> tuple[AudioSpan, ...]:
    if not config.output.include_audio:
        return ()
    return tuple(
        AudioSpan(c.out_start, c.duration, c.source if c.audio else None, c.src_start)
        for c in cuts
    )


def choose_out_format(config: ExportConfig, sources: Sequence[PlannedSource],
                      cuts: Sequence[SegmentCut]) -> VideoFormat:
    """The format of the export's copied GOPs, which every other source is re-encoded to.

    The first cut's source's, except: a source cutfarm cannot copy (another codec) never
    sets it, and when the config names a canvas (``output.width``/``height``) the first
    source shown the same way round (portrait or landscape) does, so that a phone clip
    first in a landscape edit does not turn the whole export on its side.
    """
    copyable = [sources[c.source].format for c in cuts
                if sources[c.source].format.codec in NAL_CODECS]
    if not copyable:
        first = cuts[0].source
        raise ConfigError(
            f"no source of this export can be copied: sources[{first}] "
            f"({config.sources[first].file_path}) is {sources[first].format.codec}, and "
            "cutfarm copies H.264 and HEVC only. Set output.codec to \"h264\" or \"h265\" "
            "(or output.format to \"webm\") to re-encode the whole export",
            field="output.codec")
    out = config.output
    if out.width and out.height:
        landscape = out.width >= out.height
        for fmt in copyable:
            width, height = fmt.display_size
            if (width >= height) == landscape:
                return fmt
    return copyable[0]


def _plan_copy(
    config: ExportConfig,
    sources: Sequence[PlannedSource],
    cuts: Sequence[SegmentCut],
    dropped: tuple[int, ...],
    max_piece_frames: int,
    max_piece_bytes: int | None,
) -> Plan:
    out_format = choose_out_format(config, sources, cuts)
    timescale = _timescale(sources[c.source].index.time_base.denominator for c in cuts)
    out_tb = Fraction(1, timescale)
    pieces: list[Piece] = []
    pts_parts: list[IntArray] = []
    out_first = 0
    for cut in cuts:
        src = sources[cut.source]
        index = src.index
        rel = index.disp_pts[cut.first:cut.stop] - (index.disp_pts[cut.first] - cut.hold)
        rel[0] = 0
        pts_parts.append(_to_ticks(cut.out_start, rel, index.time_base, out_tb))
        if src.format == out_format:
            pieces.extend(plan_segment_pieces(
                index, segment=cut.segment, source=cut.source, first=cut.first, stop=cut.stop,
                out_first=out_first, max_piece_frames=max_piece_frames,
                max_piece_bytes=max_piece_bytes))
        else:
            disp_base = out_first - cut.first
            pieces.extend(encode_chunks(index, cut.segment, cut.source, cut.first, cut.stop,
                                        disp_base, "format"))
        out_first += cut.frames
    last = cuts[-1]
    out_end = _round_ticks(last.out_start + last.duration, out_tb)
    out_pts = np.concatenate(pts_parts)
    delay = _reorder_delay(pieces, sources)
    return Plan(tuple(cuts), tuple(pieces), out_format, out_pts, out_end, out_tb, delay,
                _audio_spans(config, cuts), False, dropped)


def _to_ticks(offset: Fraction, rel: IntArray, src_tb: Fraction, out_tb: Fraction) -> IntArray:
    """Output ticks of ``offset + rel * src_tb``; exact when out_tb divides both."""
    scale = src_tb / out_tb
    base = offset / out_tb
    if scale.denominator == 1 and base.denominator == 1:
        return (int(base) + rel * int(scale)).astype(np.int64)
    # Fallback timescale: round each absolute time, never a per-frame duration, so the
    # rounding error stays below one tick and never accumulates.
    return np.array([_round_ticks(offset + int(r) * src_tb, out_tb) for r in rel],
                    dtype=np.int64)


def _round_ticks(t: Fraction, tb: Fraction) -> int:
    return round(t / tb)


def _timescale(denominators: object) -> int:
    """Smallest timescale in which every source tick is an integer (>= 10000 for precision)."""
    ts = 1
    for den in denominators:  # type: ignore[attr-defined]
        ts = math.lcm(ts, int(den))
        if ts > MAX_TIMESCALE:
            return FALLBACK_TIMESCALE
    while ts < 10000:
        ts *= 2
    return ts


def _reorder_delay(pieces: Sequence[Piece], sources: Sequence[PlannedSource]) -> int:
    """Smallest global delay D with dts[i] = pts_sorted[i - D] <= pts for every sample."""
    delay = 0
    dec_global = 0
    for piece in pieces:
        if isinstance(piece, CopyPiece):
            index = sources[piece.source].index
            dec = piece.samples(index)
            out_disp = index.disp_of_dec[dec] + piece.disp_base
            order = np.arange(dec_global, dec_global + len(dec))
            delay = max(delay, int(np.max(order - out_disp)))
            dec_global += len(dec)
        else:
            delay = max(delay, ENCODER_MAX_BFRAMES)
            dec_global += piece.frames
    return delay


# --------------------------------------------------------------------------- transcode mode


def _plan_transcode(
    config: ExportConfig,
    sources: Sequence[PlannedSource],
    cuts: Sequence[SegmentCut],
    dropped: tuple[int, ...],
    out_format: VideoFormat,
    chunk_frames: int | None,
) -> Plan:
    """Every output frame re-encoded on a uniform grid at the output rate.

    Output frame n shows, at time n/fps, the source frame on screen at that moment of the
    segment playing then; segment boundaries come from the exact cumulative timeline, so a
    rate change never drifts. The frames are cut into GOP-aligned chunks that encode
    independently (and in parallel) and join without a seam.
    """
    fps = output_rate(config, sources)
    total = sum((c.duration for c in cuts), Fraction(0))
    n_frames = max(1, math.ceil(total * fps))
    times = [Fraction(n) / fps for n in range(n_frames)]
    seg_of = np.zeros(n_frames, dtype=np.int64)
    src_disp = np.zeros(n_frames, dtype=np.int64)
    k = 0
    for n, t in enumerate(times):
        while k + 1 < len(cuts) and t >= cuts[k + 1].out_start:
            k += 1
        cut = cuts[k]
        index = sources[cut.source].index
        src_t = cut.src_start + (t - cut.out_start)
        # A container that rounds timestamps (Matroska's milliseconds) may stamp a frame up
        # to half a tick after the moment it shows: allow that, up to a millisecond (a
        # clock as coarse as the frames themselves is exact, not rounded).
        ticks = math.floor((src_t + min(index.time_base / 2, ROUNDING_SLACK)) / index.time_base)
        d = int(np.searchsorted(index.disp_pts, ticks, side="right")) - 1
        seg_of[n] = k
        src_disp[n] = min(max(d, cut.first), cut.stop - 1)
    gop = max(1, round(fps * 2))
    chunk = chunk_frames or gop * 15
    chunk = max(gop, chunk - chunk % gop)
    pieces: list[Piece] = []
    for c0 in range(0, n_frames, chunk):
        c1 = min(n_frames, c0 + chunk)
        runs: list[EncodeRun] = []
        n = c0
        while n < c1:
            k = int(seg_of[n])
            m = n
            while m < c1 and seg_of[m] == k:
                m += 1
            source = cuts[k].source
            runs.append(encode_run(sources[source].index, source, src_disp[n:m]))
            n = m
        pieces.append(EncodePiece(cuts[int(seg_of[c0])].segment, c0, c1, tuple(runs),
                                  "transcode"))
    out_tb = Fraction(1, _timescale([fps.numerator]))
    step = (1 / fps) / out_tb
    if step.denominator != 1:
        out_tb = Fraction(1, FALLBACK_TIMESCALE)
    out_pts = np.array([_round_ticks(t, out_tb) for t in times], dtype=np.int64)
    out_end = _round_ticks(Fraction(n_frames) / fps, out_tb)
    return Plan(tuple(cuts), tuple(pieces), out_format, out_pts, out_end, out_tb,
                ENCODER_MAX_BFRAMES, _audio_spans(config, cuts), True, dropped)


def output_rate(config: ExportConfig, sources: Sequence[PlannedSource]) -> Fraction:
    """The output frame rate of a re-encoded export: the config's, else the first source's."""
    if config.output.fps:
        fps = Fraction(repr(config.output.fps))
        # 29.97 means NTSC 30000/1001, as every editor's UI rounds it.
        ntsc = Fraction(round(fps * 1001 / 1000) * 1000, 1001)
        if ntsc >= 1 and fps.denominator != 1 and abs(fps - ntsc) < Fraction(1, 100):
            return ntsc
        return fps
    first = sources[config.segments[0].source_index].index
    rate = first.frame_rate
    return rate if first.is_cfr else rate.limit_denominator(1001)
