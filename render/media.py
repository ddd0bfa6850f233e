"""What the engine knows about a source file, as plain data.

``FrameIndex`` is the part the planner needs: every video sample's timing in decode order
and which samples are real random-access points. It is built by ``probe`` from the file's
sample tables, and by tests from a few lines of numpy, so planning needs no media at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .sourcefile import SourceFile

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

#: The codecs cutfarm reads at the NAL level: their random-access points are verified from
#: NAL headers (probe), their samples are copied with one sample description holding
#: every parameter set (mux, bitstream), and a camera matching one is re-encoded to fit
#: between its GOPs (encode). A source in any other codec is only ever decoded.
NAL_CODECS = frozenset({"h264", "hevc"})

#: Leading pictures sit right after their random-access point in decode order, a handful
#: at most (HEVC caps reordering at 16); searching further only costs time.
LEADING_WINDOW = 64


@dataclass(frozen=True)
class VideoFormat:
    """The properties two streams must share for their samples to live in one track."""

    codec: str  # FFmpeg codec name: "h264", "hevc", ...
    width: int  # coded size, as stored
    height: int
    pix_fmt: str  # e.g. "yuv420p", "yuv420p10le"
    #: Display-matrix rotation in counter-clockwise degrees (0, 90, 180 or 270), as
    #: ``VideoFrame.rotation`` reads it: a track has one, so it is part of the format.
    rotation: int = 0

    def describe(self) -> str:
        turned = f" rotated {self.rotation}°" if self.rotation else ""
        return f"{self.codec} {self.width}x{self.height} {self.pix_fmt}{turned}"

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) as a player shows the picture."""
        if self.rotation % 180:
            return self.height, self.width
        return self.width, self.height


@dataclass(frozen=True, eq=False)
class FrameIndex:
    """Video samples of one source in decode order; times in ``time_base`` ticks.

    ``rap`` marks samples a copy may start at: an IDR for H.264, an IRAP for HEVC (whose
    leading pictures are then re-encoded, never copied). The container's sync flag alone is
    not trusted for this.
    """

    time_base: Fraction
    pts: IntArray
    duration: IntArray
    rap: BoolArray
    size: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    #: Display range [lo, hi) of the frames the file presents. An edit list can hide
    #: frames before and after it; they stay in the index only as decode references.
    shown: tuple[int, int] | None = None
    #: Samples a decoder may start at (a superset of ``rap``): also H.264 non-IDR I-frames
    #: with a recovery point SEI (open GOP), whose trailing frames decode correctly but
    #: which a copy may not start at. None: the same as ``rap``.
    decode_start: BoolArray | None = None

    def __post_init__(self) -> None:
        n = len(self.pts)
        if len(self.duration) != n or len(self.rap) != n:
            raise ValueError("FrameIndex arrays differ in length")
        if self.size.size == 0:
            object.__setattr__(self, "size", np.zeros(n, dtype=np.int64))
        if self.shown is None:
            object.__setattr__(self, "shown", (0, n))

    @property
    def first_shown(self) -> int:
        assert self.shown is not None
        return self.shown[0]

    @property
    def last_shown(self) -> int:
        """Display index one past the last presented frame."""
        assert self.shown is not None
        return self.shown[1]

    @property
    def count(self) -> int:
        return len(self.pts)

    @cached_property
    def dec_of_disp(self) -> IntArray:
        """Decode index of each frame in display order."""
        return np.argsort(self.pts, kind="stable").astype(np.int64)

    @cached_property
    def disp_of_dec(self) -> IntArray:
        """Display index of each sample in decode order."""
        inv = np.empty(self.count, dtype=np.int64)
        inv[self.dec_of_disp] = np.arange(self.count, dtype=np.int64)
        return inv

    @cached_property
    def disp_pts(self) -> IntArray:
        """Presentation times in display order."""
        return self.pts[self.dec_of_disp]

    @cached_property
    def disp_end(self) -> IntArray:
        """End of each displayed frame: the next frame's pts; the last uses its duration."""
        ends = np.empty(self.count, dtype=np.int64)
        if self.count:
            ends[:-1] = self.disp_pts[1:]
            last_dur = int(self.duration[self.dec_of_disp[-1]])
            if last_dur <= 0:
                last_dur = int(np.median(np.diff(self.disp_pts))) if self.count > 1 else 1
            ends[-1] = self.disp_pts[-1] + last_dur
        return ends

    @cached_property
    def rap_dec(self) -> IntArray:
        """Decode indices of the random-access points, ascending."""
        return np.flatnonzero(self.rap).astype(np.int64)

    @cached_property
    def start_dec(self) -> IntArray:
        """Decode indices a decoder may start at (random-access and recovery points)."""
        starts = self.rap if self.decode_start is None else (self.decode_start | self.rap)
        return np.flatnonzero(starts).astype(np.int64)

    @cached_property
    def reorder_depth(self) -> int:
        """max(decode index - display index): how many frames the decoder holds back."""
        if self.count == 0:
            return 0
        return max(0, int(np.max(np.arange(self.count) - self.disp_of_dec)))

    @cached_property
    def is_cfr(self) -> bool:
        if self.count < 3:
            return True
        steps = np.diff(self.disp_pts)
        return bool(np.all(steps == steps[0]))

    @cached_property
    def frame_rate(self) -> Fraction:
        """Exact rate for constant-rate sources, the mean rate otherwise."""
        if self.count < 2:
            dur = int(self.duration[0]) if self.count and self.duration[0] > 0 else 1
            return 1 / (dur * self.time_base)
        span = int(self.disp_end[-1] - self.disp_pts[0])
        return Fraction(self.count) / (span * self.time_base)

    def seconds(self, ticks: int) -> Fraction:
        return ticks * self.time_base

    def leading_of(self, rap_dec: int) -> IntArray:
        """Decode indices of the leading pictures of the RAP at ``rap_dec``.

        Leading pictures follow the RAP in decode order but display before it; after a
        splice they would reference frames that are not there. They come right after it in
        decode order, so only a bounded window is searched.
        """
        nxt = self.start_dec[self.start_dec > rap_dec]
        stop = min(int(nxt[0]) if nxt.size else self.count, rap_dec + 1 + LEADING_WINDOW)
        after = np.arange(rap_dec + 1, stop, dtype=np.int64)
        leading: IntArray = after[self.pts[after] < self.pts[rap_dec]]
        return leading


@dataclass(frozen=True, eq=False)
class VideoTrackInfo:
    """Everything about a source's video stream the writers need."""

    index: FrameIndex
    format: VideoFormat
    offset: IntArray  # file offset per sample (decode order)
    extradata: bytes
    nal_length_size: int
    profile: str | None
    bit_rate: int
    sample_aspect_ratio: Fraction | None
    color_primaries: int
    color_trc: int
    colorspace: int
    color_range: int
    stream_index: int
    #: Parameter-set record (avcC/hvcC) per sample description, and each sample's
    #: description (decode order). One entry for camera files; several for a file that
    #: was itself spliced (e.g. an earlier cutfarm export).
    records: tuple[bytes, ...] = ()
    stsd: IntArray | None = None
    #: Parameter-set units carried in-band ahead of the slices of random-access samples
    #: (decode index -> units; samples without any are absent), read by the probe so that
    #: planning, wherever it runs, never opens the file. None: not read.
    inband: Mapping[int, tuple[bytes, ...]] | None = None

    def record_of(self, dec: int) -> bytes:
        if self.stsd is None or not self.records:
            return self.extradata
        return self.records[int(self.stsd[dec])] or self.extradata


@dataclass(frozen=True)
class AudioTrackInfo:
    codec: str
    sample_rate: int
    channels: int
    layout: str
    start: Fraction  # seconds on the file's presentation clock (the video's clock too)
    stream_index: int
    bit_rate: int


@dataclass(frozen=True, eq=False)
class SourceInfo:
    file: SourceFile
    container: str
    video: VideoTrackInfo
    audio: AudioTrackInfo | None
    #: SMPTE start timecode of the first shown frame (a tmcd track), e.g. "01:00:00:00".
    timecode: str | None = None

    @property
    def path(self) -> Path:
        """The file's path (an object's key, for names only, when it lives in S3)."""
        return self.file.path

    @property
    def name(self) -> str:
        return self.file.name

    @property
    def size(self) -> int:
        return self.file.size

    @property
    def duration(self) -> Fraction:
        idx = self.video.index
        if idx.count == 0:
            return Fraction(0)
        return idx.seconds(int(idx.disp_end[-1]))
