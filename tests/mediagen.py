"""Synthetic multicam media for cutfarm tests, and frame-accurate readers.

Everything is generated with PyAV only (no system ffmpeg) and is deterministic
for a given :class:`CameraSpec`.

Video stamp
-----------
Every frame carries a 4 x 7 grid of solid black/white cells, row-major, MSB
first: 4 bits camera id, 16 bits frame number (display order), 8 bits CRC-8
(poly 0x07, xorout 0x55) over the 20 payload bits.  The grid covers the
fraction ``STAMP_RECT`` = (x0, y0, x1, y1) = (0.10, 0.20, 0.90, 0.80) of the
*content rectangle*.  Around it the frame shows a moving gradient plus a
scrolling noise texture (real motion for P/B-frames) whose luma never drops
below 70 (limited range), so the content never contains a black row/column.

Reader assumptions (see :func:`read_stamp`):

* the content was scaled uniformly or not (non-uniform scaling also works:
  only relative positions are used) and may be letter/pillarboxed with
  black (luma < ~40 on a 0-255 scale) bars; the content rectangle is found as
  the bounding box of rows/columns that contain >= 5 % "bright" pixels, or
  is passed explicitly via ``content_rect``;
* each cell is sampled in its central 50 % x 50 %; a cell whose mean is
  ambiguous (between 72 and 184 on full-range 0-255 luma) or a CRC mismatch
  makes the whole stamp unreadable (``None``).  So blended frames (cross
  fades) and garbage are rejected instead of misread.
* the content must not be cropped or mirrored; a display matrix (rotation) is applied
  before reading, as a player applies it.

Encoding and timing
-------------------
GOPs are exactly regular: keyint = min-keyint = gop, scenecut=0, b-adapt=0
(x264 and x265), so keyframes sit at frame numbers 0, gop, 2*gop, ...  With
B-frames the mov muxer writes an edit list; PyAV then reports pts 0 for the
first displayed frame and a negative dts for the first packet (FFmpeg 8).
Fragmented output uses ``frag_keyframe+delay_moov+default_base_moof`` -
``empty_moov`` would lose the edit list and start at pts = 2 frames.
:func:`make_camera` re-reads every file and raises if frame pts, pts_0 == 0
or the audio start (0; AAC priming is hidden by the edit list / skip
samples) are not as intended.  CFR frame n has pts n/fps; ``vfr=True``
cycles through ``VFR_DURATIONS`` in a 1/90000 time base.  Matroska stores
milliseconds, so mkv pts are the nominal ones rounded (``frame_pts`` holds
what the demuxer reports).

Audio
-----
Low-level deterministic noise (std 0.003 per channel) plus a click at every
whole source second (sample ``k * sample_rate``): a step to 0.9 that decays
exponentially (tau 0.3 ms) over 2 ms, identical on all channels.  The click
has exactly one sharp edge, so :func:`find_clicks` locates it by the maximum
of the absolute first difference, which is robust to AAC pre-echo.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

import av
import av.logging
import numpy as np
import numpy.typing as npt
from av.audio.stream import AudioStream
from av.container import InputContainer, OutputContainer
from av.video.stream import VideoStream

__all__ = [
    "CLICK_SECONDS",
    "MAX_FRAME_NUMBER",
    "STAMP_COLS",
    "STAMP_RECT",
    "STAMP_ROWS",
    "VFR_DURATIONS",
    "CameraSpec",
    "DecodedAudio",
    "DecodedVideo",
    "GeneratedMedia",
    "LogRecord",
    "PacketInfo",
    "Rect",
    "StreamInfo",
    "capture_ffmpeg_log",
    "count_log_problems",
    "crc8",
    "damage_video",
    "decode_audio",
    "decode_stamp_bits",
    "decode_video",
    "find_clicks",
    "find_content_rect",
    "frame_luma",
    "make_camera",
    "make_not_a_video",
    "nominal_frame_times",
    "packet_table",
    "read_stamp",
    "read_stamp_luma",
    "render_audio",
    "render_frame",
    "stamp_bits",
    "stream_info",
    "truncate_copy",
]

FloatArray = npt.NDArray[np.float64]
F32Array = npt.NDArray[np.float32]

# --------------------------------------------------------------------------
# Layout constants
# --------------------------------------------------------------------------

STAMP_ROWS = 4
STAMP_COLS = 7
CAMERA_BITS = 4
FRAME_BITS = 16
CRC_BITS = 8
#: (x0, y0, x1, y1) of the cell grid as fractions of the content rectangle.
STAMP_RECT: tuple[float, float, float, float] = (0.10, 0.20, 0.90, 0.80)
MAX_FRAME_NUMBER = (1 << FRAME_BITS) - 1

# 8-bit limited-range luma levels of the cells; 10-bit uses 4x.
_WHITE = 235.0
_BLACK = 16.0
_BG_MIN = 70.0
_BG_MAX = 215.0

# Reader thresholds on full-range (0-255) gray.
_BRIGHT = 40
_CONTENT_FRACTION = 0.05
_AMBIGUOUS_LOW = 72.0
_AMBIGUOUS_HIGH = 184.0

#: Length of the audio click (seconds).
CLICK_SECONDS = 0.002
_CLICK_AMPLITUDE = 0.9
_CLICK_TAU = 0.0003
_NOISE_STD = 0.003

#: Frame durations cycled through by ``vfr=True`` cameras (exact, 1/90000 base).
VFR_DURATIONS: tuple[Fraction, ...] = (Fraction(1, 30), Fraction(1, 24), Fraction(1, 40))
VFR_TIME_BASE = Fraction(1, 90000)

_CONTAINER_FORMATS = {"mp4": "mp4", "mov": "mov", "mkv": "matroska"}
_VIDEO_ENCODERS = {"h264": "libx264", "hevc": "libx265", "vp9": "libvpx-vp9"}
_AUDIO_ENCODERS = {"aac": "aac", "opus": "libopus", "pcm": "pcm_s16le"}
_PIX_FMTS = ("yuv420p", "yuv420p10le")
_FRAG_MOVFLAGS = "frag_keyframe+delay_moov+default_base_moof"
_LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}


# --------------------------------------------------------------------------
# Spec / result types
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class CameraSpec:
    """What to generate.  Extra knobs beyond the brief: crf, preset, audio_codec."""

    camera: int
    codec: str = "h264"
    width: int = 320
    height: int = 180
    fps: Fraction = Fraction(30)
    seconds: float = 6.0
    gop: int = 30
    bframes: int = 2
    open_gop: bool = False
    pix_fmt: str = "yuv420p"
    audio: bool = True
    sample_rate: int = 48000
    audio_channels: int = 2
    vfr: bool = False
    #: Extra encoder params in x264-params / x265-params syntax ("ref=1:weightp=0").
    x264_params: str | None = None
    container: str = "mp4"
    fragmented: bool = False
    #: OBS's hybrid MP4: written fragmented while recording, made regular when it stops
    #: (FFmpeg's ``hybrid_fragmented``).
    hybrid: bool = False
    crf: int = 23
    preset: str = "veryfast"
    audio_codec: str = "aac"
    #: Seconds on the file's clock before the first video frame (audio still starts at 0):
    #: an empty edit in MP4/MOV, as cameras that start the picture late write it.
    video_start: Fraction = Fraction(0)
    #: False: no edit list (``use_editlist=0``), so the first frame sits at its B-frame
    #: delay and AAC priming is not hidden, like many cameras' and OBS remuxes' files.
    edit_list: bool = True
    #: Write the audio track before the video track.
    audio_first: bool = False
    #: Display-matrix rotation, counter-clockwise degrees as ``VideoFrame.rotation`` reads it.
    rotation: int = 0
    #: SMPTE start timecode ("01:00:00:00"; ";" for drop frame), written as a tmcd track.
    timecode: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.camera < (1 << CAMERA_BITS):
            raise ValueError(f"camera must be 0..15, got {self.camera}")
        if self.codec not in _VIDEO_ENCODERS:
            raise ValueError(f"codec must be one of {sorted(_VIDEO_ENCODERS)}")
        if self.width % 2 or self.height % 2 or self.width < 32 or self.height < 32:
            raise ValueError("width/height must be even and >= 32")
        if self.pix_fmt not in _PIX_FMTS:
            raise ValueError(f"pix_fmt must be one of {_PIX_FMTS}")
        if self.container not in _CONTAINER_FORMATS:
            raise ValueError(f"container must be one of {sorted(_CONTAINER_FORMATS)}")
        if (self.fragmented or self.hybrid) and self.container == "mkv":
            raise ValueError("fragmented is only supported for mp4/mov")
        if self.gop < 1 or self.bframes < 0 or (self.gop == 1 and self.bframes):
            raise ValueError("need gop >= 1, bframes >= 0 (and bframes == 0 if gop == 1)")
        if self.fps <= 0 or self.seconds <= 0:
            raise ValueError("fps and seconds must be positive")
        if self.codec == "vp9" and self.bframes:
            raise ValueError("vp9 has no B-frames: bframes must be 0")
        self._check_audio()
        self._check_layout()

    def _check_audio(self) -> None:
        if self.audio_codec not in _AUDIO_ENCODERS:
            raise ValueError(f"audio_codec must be one of {sorted(_AUDIO_ENCODERS)}")
        if self.audio_codec == "pcm" and self.container == "mp4":
            raise ValueError("pcm audio needs container mov or mkv")
        if self.audio_codec == "opus" and self.sample_rate != 48000:
            raise ValueError("opus needs sample_rate 48000")
        if self.audio_channels not in _LAYOUTS:
            raise ValueError(f"audio_channels must be one of {sorted(_LAYOUTS)}")

    def _check_layout(self) -> None:
        if self.video_start < 0 or (self.video_start * self.fps).denominator != 1:
            raise ValueError("video_start must be a whole number of frames >= 0")
        if self.rotation % 90:
            raise ValueError("rotation must be a multiple of 90")

    @property
    def bit_depth(self) -> int:
        return 10 if self.pix_fmt.endswith("10le") else 8


@dataclass(frozen=True)
class GeneratedMedia:
    """A written camera file and its ground truth (times are exact seconds)."""

    path: Path
    spec: CameraSpec
    #: pts of frame n (display order) as PyAV's demuxer reports it: the file's clock.
    #: [0] == video_start, or later without an edit list (the B-frame delay).
    frame_pts: tuple[Fraction, ...]
    #: the intended pts from 0 (frame_pts - frame_pts[0] for mp4/mov; mkv rounds to 1 ms).
    nominal_frame_pts: tuple[Fraction, ...]
    #: frame numbers whose packet is flagged as keyframe.
    keyframes: tuple[int, ...]
    #: end of the last frame (last pts + its duration) on the file's clock.
    duration: Fraction
    #: pts of the first decoded audio sample (0), or None without audio.
    audio_start: Fraction | None
    #: file-clock times of the audio clicks: whole seconds, plus the AAC priming when no
    #: edit list hides it (measured by decoding, within one sample).
    click_times: tuple[Fraction, ...] = field(default=())

    @property
    def frame_count(self) -> int:
        return len(self.frame_pts)


class Rect(NamedTuple):
    """Pixel rectangle, right/bottom exclusive."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top


class LogRecord(NamedTuple):
    level: int
    name: str
    message: str


@dataclass
class DecodedVideo:
    """Result of :func:`decode_video`; lists are per output frame, display order."""

    stamps: list[tuple[int, int] | None]
    pts: list[Fraction | None]
    #: FFmpeg log messages at WARNING or worse + decode exceptions.
    errors: int
    messages: list[LogRecord]
    width: int
    height: int
    pix_fmt: str

    @property
    def frame_numbers(self) -> list[int | None]:
        return [s[1] if s is not None else None for s in self.stamps]

    @property
    def cameras(self) -> list[int | None]:
        return [s[0] if s is not None else None for s in self.stamps]

    @property
    def unreadable(self) -> int:
        return sum(1 for s in self.stamps if s is None)


class DecodedAudio(NamedTuple):
    samples: F32Array  # mono mixdown (mean of channels), float32
    sample_rate: int
    start_time: Fraction  # pts of the first decoded sample, seconds


class PacketInfo(NamedTuple):
    """One demuxed packet, decode order.  Times are exact seconds."""

    pts: Fraction | None
    dts: Fraction | None
    duration: Fraction | None
    is_keyframe: bool
    size: int
    #: H.264/HEVC NAL unit types in the packet (empty for other codecs).
    nal_types: tuple[int, ...] = ()


class StreamInfo(NamedTuple):
    container_format: str
    codec_name: str
    codec_tag: str  # "avc1", "hvc1", "hev1", "" (mkv)
    profile: str | None
    width: int
    height: int
    pix_fmt: str | None
    time_base: Fraction
    frame_count: int  # number of video packets
    duration: Fraction | None  # video stream duration (seconds)
    average_rate: Fraction | None
    extradata: bytes  # avcC / hvcC (SPS/PPS) - compare across cameras
    audio_codec: str | None
    audio_sample_rate: int | None
    audio_channels: int | None


# --------------------------------------------------------------------------
# Stamp encoding
# --------------------------------------------------------------------------


def crc8(data: bytes) -> int:
    """CRC-8, polynomial 0x07, init 0, xorout 0x55 (so all-zero payloads aren't all-black)."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc ^ 0x55


def _payload_crc(camera: int, frame_number: int) -> int:
    payload = (camera << FRAME_BITS) | frame_number
    return crc8(payload.to_bytes(3, "big"))


def stamp_bits(camera: int, frame_number: int) -> list[int]:
    """The 28 cell values (1 = white), row-major."""
    if not 0 <= camera < (1 << CAMERA_BITS):
        raise ValueError("camera out of range")
    if not 0 <= frame_number <= MAX_FRAME_NUMBER:
        raise ValueError("frame number out of range")
    word = (camera << (FRAME_BITS + CRC_BITS)) | (frame_number << CRC_BITS)
    word |= _payload_crc(camera, frame_number)
    nbits = CAMERA_BITS + FRAME_BITS + CRC_BITS
    return [(word >> (nbits - 1 - i)) & 1 for i in range(nbits)]


def decode_stamp_bits(bits: Sequence[int]) -> tuple[int, int] | None:
    """Inverse of :func:`stamp_bits`; None if the CRC does not match."""
    word = 0
    for b in bits:
        word = (word << 1) | b
    crc = word & 0xFF
    frame_number = (word >> CRC_BITS) & MAX_FRAME_NUMBER
    camera = word >> (CRC_BITS + FRAME_BITS)
    if _payload_crc(camera, frame_number) != crc:
        return None
    return camera, frame_number


def _cell_edges(size: int, lo: float, hi: float, count: int) -> list[int]:
    return [round(size * (lo + (hi - lo) * i / count)) for i in range(count + 1)]


# --------------------------------------------------------------------------
# Frame synthesis
# --------------------------------------------------------------------------

_TEX_PAD = 64


@functools.lru_cache(maxsize=32)
def _static_planes(
    width: int, height: int, camera: int
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]:
    """Coordinate grids (luma and chroma resolution) and a per-camera noise texture."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    cys, cxs = np.mgrid[0 : height // 2, 0 : width // 2].astype(np.float64)
    rng = np.random.default_rng(1000 + camera)
    tex = rng.uniform(-15.0, 15.0, size=(height + _TEX_PAD, width + _TEX_PAD))
    return xs / width, ys / height, cxs / (width // 2), cys / (height // 2), tex


def _frame_planes(spec: CameraSpec, n: int) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Float 8-bit-scale Y, U, V planes of frame n (stamp included)."""
    w, h, cam = spec.width, spec.height, spec.camera
    xs, ys, cxs, cys, tex = _static_planes(w, h, cam)
    dx = (3 * n) % _TEX_PAD
    dy = n % _TEX_PAD
    y = 140.0 + 45.0 * np.sin(2 * math.pi * (1.5 * xs + 0.7 * ys) - 0.2 * n - cam)
    y = y + tex[dy : dy + h, dx : dx + w]
    np.clip(y, _BG_MIN, _BG_MAX, out=y)
    u = 128.0 + 40.0 * np.sin(2 * math.pi * cxs + 0.05 * n + 0.7 * cam)
    v = 128.0 + 40.0 * np.cos(2 * math.pi * cys - 0.07 * n + 1.3 * cam)

    x0, y0, x1, y1 = STAMP_RECT
    xe = _cell_edges(w, x0, x1, STAMP_COLS)
    ye = _cell_edges(h, y0, y1, STAMP_ROWS)
    bits = stamp_bits(cam, n)
    for r in range(STAMP_ROWS):
        for c in range(STAMP_COLS):
            y[ye[r] : ye[r + 1], xe[c] : xe[c + 1]] = _WHITE if bits[r * STAMP_COLS + c] else _BLACK
    u[ye[0] // 2 : ye[-1] // 2, xe[0] // 2 : xe[-1] // 2] = 128.0
    v[ye[0] // 2 : ye[-1] // 2, xe[0] // 2 : xe[-1] // 2] = 128.0
    return y, u, v


def render_frame(spec: CameraSpec, n: int) -> av.VideoFrame:
    """Frame n of the camera (no pts set), in spec.pix_fmt.

    With a rotation the picture is drawn upright at the displayed size and turned into the
    coded orientation, as a phone stores it: only a reader that applies the display matrix
    sees the stamp the right way up.
    """
    if spec.rotation % 360:
        turns = spec.rotation // 90
        shown = replace(spec, rotation=0, width=spec.height, height=spec.width) \
            if turns % 2 else replace(spec, rotation=0)
        planes = _frame_planes(shown, n)
        y, u, v = (np.ascontiguousarray(np.rot90(p, k=-turns)) for p in planes)
    else:
        y, u, v = _frame_planes(spec, n)
    if spec.bit_depth == 8:
        planes8 = [np.rint(p).astype(np.uint8) for p in (y, u, v)]
        flat8 = np.concatenate([p.ravel() for p in planes8])
        arr8 = flat8.reshape(spec.height * 3 // 2, spec.width)
        return av.VideoFrame.from_ndarray(arr8, format="yuv420p")
    # True 10-bit: quantise the float planes with 4x finer steps.
    planes16 = [np.rint(p * 4.0).astype(np.uint16) for p in (y, u, v)]
    flat16 = np.concatenate([p.ravel() for p in planes16])
    arr16 = flat16.reshape(spec.height * 3 // 2, spec.width)
    return av.VideoFrame.from_ndarray(arr16, format="yuv420p10le")


# --------------------------------------------------------------------------
# Audio synthesis
# --------------------------------------------------------------------------


def _click_shape(sample_rate: int) -> F32Array:
    t = np.arange(max(1, round(CLICK_SECONDS * sample_rate)), dtype=np.float64)
    return (_CLICK_AMPLITUDE * np.exp(-t / (_CLICK_TAU * sample_rate))).astype(np.float32)


def render_audio(spec: CameraSpec, n_samples: int) -> F32Array:
    """(channels, n_samples) float32: noise + click at every k * sample_rate."""
    rng = np.random.default_rng(2000 + spec.camera)
    out = (rng.standard_normal((spec.audio_channels, n_samples)) * _NOISE_STD).astype(np.float32)
    click = _click_shape(spec.sample_rate)
    for start in range(0, n_samples, spec.sample_rate):
        seg = click[: n_samples - start]
        out[:, start : start + len(seg)] = seg
    return out


# --------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------


def nominal_frame_times(spec: CameraSpec) -> tuple[list[Fraction], Fraction]:
    """Intended pts of every frame (seconds) and the end time of the last frame."""
    seconds = Fraction(spec.seconds).limit_denominator(1_000_000)
    if not spec.vfr:
        count = max(1, round(seconds * spec.fps))
        if count > MAX_FRAME_NUMBER + 1:
            raise ValueError("too many frames for the 16-bit stamp")
        step = 1 / Fraction(spec.fps)
        return [n * step for n in range(count)], count * step
    times: list[Fraction] = []
    t = Fraction(0)
    n = 0
    while t < seconds:
        times.append(t)
        t += VFR_DURATIONS[n % len(VFR_DURATIONS)]
        n += 1
    if len(times) > MAX_FRAME_NUMBER + 1:
        raise ValueError("too many frames for the 16-bit stamp")
    return times, t


def _encoder_options(spec: CameraSpec) -> dict[str, str]:
    og = 1 if spec.open_gop else 0
    if spec.codec == "vp9":  # a codec cutfarm never copies: sources it always converts
        return {"crf": str(spec.crf), "b": "0", "g": str(spec.gop), "deadline": "realtime",
                "cpu-used": "8"}
    if spec.codec == "h264":
        params = (
            f"keyint={spec.gop}:min-keyint={spec.gop}:scenecut=0:"
            f"bframes={spec.bframes}:b-adapt=0:open-gop={og}"
        )
        key = "x264-params"
    else:
        params = (
            f"keyint={spec.gop}:min-keyint={spec.gop}:scenecut=0:"
            f"bframes={spec.bframes}:b-adapt=0:open-gop={og}:log-level=error"
        )
        key = "x265-params"
    if spec.x264_params:
        params += ":" + spec.x264_params
    return {"preset": spec.preset, "crf": str(spec.crf), key: params}


def _add_video_stream(out: OutputContainer, spec: CameraSpec, time_base: Fraction) -> VideoStream:
    vs = out.add_stream(
        _VIDEO_ENCODERS[spec.codec], rate=Fraction(spec.fps), options=_encoder_options(spec)
    )
    if not isinstance(vs, VideoStream):
        raise TypeError(f"expected a video stream, got {type(vs).__name__}")
    vs.width = spec.width
    vs.height = spec.height
    vs.pix_fmt = spec.pix_fmt
    vs.codec_context.time_base = time_base
    if spec.vfr:
        vs.time_base = VFR_TIME_BASE
    if spec.codec == "hevc" and spec.container != "mkv":
        vs.codec_tag = "hvc1"  # Apple-style tag instead of FFmpeg's default hev1
    if spec.rotation:
        vs.set_display_rotation(spec.rotation)
    if spec.timecode:
        vs.metadata["timecode"] = spec.timecode
    return vs


class _AudioFeeder:
    """Encodes the camera's audio in step with the video (keeps the file interleaved)."""

    def __init__(self, out: OutputContainer, spec: CameraSpec, total: int) -> None:
        self.out = out
        self.spec = spec
        self.total = total
        self.pos = 0
        self.layout = _LAYOUTS[spec.audio_channels]
        st = out.add_stream(_AUDIO_ENCODERS[spec.audio_codec], rate=spec.sample_rate)
        if not isinstance(st, AudioStream):
            raise TypeError(f"expected an audio stream, got {type(st).__name__}")
        st.layout = self.layout
        self.stream = st
        self.data = render_audio(spec, total)

    def push(self, until: int) -> None:
        fs = self.stream.codec_context.frame_size or 1024
        until = min(until, self.total)
        while self.pos < until:
            n = min(fs, self.total - self.pos)
            chunk = np.ascontiguousarray(self.data[:, self.pos : self.pos + n])
            af = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=self.layout)
            af.sample_rate = self.spec.sample_rate
            af.pts = self.pos
            af.time_base = Fraction(1, self.spec.sample_rate)
            self.out.mux(self.stream.encode(af))
            self.pos += n

    def finish(self) -> None:
        self.push(self.total)
        self.out.mux(self.stream.encode(None))


def make_camera(path: Path, spec: CameraSpec) -> GeneratedMedia:
    """Write a camera file and verify its timing invariants (pts_0 == 0 etc.)."""
    path = Path(path)
    times, end = nominal_frame_times(spec)
    video_tb = VFR_TIME_BASE if spec.vfr else 1 / Fraction(spec.fps)
    options = ({"movflags": _FRAG_MOVFLAGS} if spec.fragmented
               else {"movflags": "hybrid_fragmented"} if spec.hybrid else {})
    if not spec.edit_list:
        options["use_editlist"] = "0"
    fmt = _CONTAINER_FORMATS[spec.container]
    with av.open(str(path), "w", format=fmt, options=options) as out:
        samples = round((end + spec.video_start) * spec.sample_rate)
        audio = _AudioFeeder(out, spec, samples) if spec.audio and spec.audio_first else None
        vs = _add_video_stream(out, spec, video_tb)
        if spec.audio and not spec.audio_first:
            audio = _AudioFeeder(out, spec, samples)
        out.start_encoding()
        for n, t in enumerate(times):
            frame = render_frame(spec, n)
            frame.pts = int((t + spec.video_start) / video_tb)
            frame.time_base = video_tb
            out.mux(vs.encode(frame))
            if audio is not None:
                audio.push(math.ceil((t + spec.video_start) * spec.sample_rate))
        out.mux(vs.encode(None))
        if audio is not None:
            audio.finish()
    return _verify_generated(path, spec, times, end)


def _verify_generated(
    path: Path, spec: CameraSpec, times: list[Fraction], end: Fraction
) -> GeneratedMedia:
    table = packet_table(path)
    pts_list = sorted(p.pts for p in table if p.pts is not None)
    if len(pts_list) != len(times):
        raise RuntimeError(f"{path}: {len(pts_list)} video packets, expected {len(times)}")
    first = pts_list[0]
    if first != spec.video_start and (spec.edit_list or first < spec.video_start):
        raise RuntimeError(f"{path}: first video pts is {first}, expected {spec.video_start}")
    tol = Fraction(1, 1000) if spec.container == "mkv" else Fraction(0)
    for n, (got, want) in enumerate(zip(pts_list, times, strict=True)):
        if abs(got - first - want) > tol:
            raise RuntimeError(f"{path}: frame {n} pts {got} != {first} + {want}")
    index = {p: i for i, p in enumerate(pts_list)}
    keyframes = tuple(sorted(index[p.pts] for p in table if p.is_keyframe and p.pts is not None))

    audio_start: Fraction | None = None
    clicks: tuple[Fraction, ...] = ()
    if spec.audio:
        with av.open(str(path)) as c:
            for frame in c.decode(audio=0):
                if frame.pts is not None and frame.time_base is not None:
                    audio_start = frame.pts * frame.time_base
                break
        if audio_start != 0:
            raise RuntimeError(f"{path}: audio starts at {audio_start}, expected 0")
        clicks = tuple(Fraction(k) for k in range(math.ceil(end + spec.video_start))
                       if k < end + spec.video_start)
        if not spec.edit_list:
            clicks = _measured_clicks(path, clicks)
    return GeneratedMedia(
        path=path,
        spec=spec,
        frame_pts=tuple(pts_list),
        nominal_frame_pts=tuple(times),
        keyframes=keyframes,
        duration=first + end,
        audio_start=audio_start,
        click_times=clicks,
    )


def _measured_clicks(path: Path, written: tuple[Fraction, ...]) -> tuple[Fraction, ...]:
    """Where the file's clock puts the clicks when no edit list trims the encoder's priming.

    Without an edit list the mov muxer stretches the first audio sample to keep the rest on
    time, so samples are placed by their timestamps, not counted from the first one.
    """
    audio = decode_audio(path, by_timestamps=True)
    found = find_clicks(audio.samples, audio.sample_rate, audio.start_time)
    if len(found) != len(written):
        raise RuntimeError(f"{path}: {len(found)} clicks decoded, {len(written)} written")
    shift = Fraction(round((found[0] - float(written[0])) * audio.sample_rate),
                     audio.sample_rate)
    if any(abs(f - float(w + shift)) > 2 / audio.sample_rate
           for f, w in zip(found, written, strict=True)):
        raise RuntimeError(f"{path}: clicks are not evenly shifted: {found}")
    return tuple(w + shift for w in written)


# --------------------------------------------------------------------------
# Broken / non-media files
# --------------------------------------------------------------------------


def truncate_copy(src: Path, dst: Path, fraction: float) -> Path:
    """Copy the first ``fraction`` of src's bytes to dst."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError("fraction must be within [0, 1]")
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * fraction)])
    return Path(dst)


def make_not_a_video(path: Path, kind: str = "text") -> Path:
    """kind="text": plain text with a video extension; kind="wav": audio-only WAV."""
    path = Path(path)
    if kind == "text":
        path.write_text("this is not a video file\n" * 20)
        return path
    if kind != "wav":
        raise ValueError("kind must be 'text' or 'wav'")
    spec = CameraSpec(camera=0)
    data = render_audio(spec, spec.sample_rate)
    with av.open(str(path), "w", format="wav") as out:
        st = out.add_stream("pcm_s16le", rate=spec.sample_rate)
        st.layout = "stereo"
        frame = av.AudioFrame.from_ndarray(data, format="fltp", layout="stereo")
        frame.sample_rate = spec.sample_rate
        frame.pts = 0
        frame.time_base = Fraction(1, spec.sample_rate)
        out.mux(st.encode(frame))
        out.mux(st.encode(None))
    return path


def _corrupt_payload(data: bytes, nal_len_size: int, codec: str) -> bytes:
    """XOR slice data of every VCL NAL (keeping the NAL framing intact)."""
    buf = bytearray(data)
    for start, end, nal_type in _iter_nals(data, nal_len_size, codec):
        is_vcl = 1 <= nal_type <= 5 if codec == "h264" else nal_type < 32
        if not is_vcl:
            continue
        first = start + max(8, (end - start) // 4)
        for i in range(first, end, 5):
            buf[i] ^= 0xFF
    return bytes(buf)


def damage_video(
    src: Path,
    dst: Path,
    *,
    drop: Iterable[int] = (),
    corrupt: Iterable[int] = (),
) -> Path:
    """Stream-copy src to dst, dropping / corrupting video packets by decode-order index.

    Other streams are copied unchanged; the container format follows dst's suffix.
    """
    drop_set = set(drop)
    corrupt_set = set(corrupt)
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        vin = _video_stream(inp, src)
        codec = vin.codec_context.name
        len_size = _nal_length_size(vin.codec_context.extradata, codec)
        streams = [s for s in inp.streams if s.type in ("video", "audio")]
        mapping = {s.index: out.add_stream_from_template(s) for s in streams}
        vindex = 0
        for pkt in inp.demux(streams):
            if pkt.size == 0:  # demuxer flush packet
                continue
            target = mapping[pkt.stream_index]
            if pkt.stream_index == vin.index:
                i = vindex
                vindex += 1
                if i in drop_set:
                    continue
                if i in corrupt_set:
                    new = av.Packet(_corrupt_payload(bytes(pkt), len_size, codec))
                    new.pts = pkt.pts
                    new.dts = pkt.dts
                    new.duration = pkt.duration
                    new.time_base = pkt.time_base
                    new.is_keyframe = pkt.is_keyframe
                    new.stream = target
                    out.mux(new)
                    continue
            pkt.stream = target
            out.mux(pkt)
    return Path(dst)


# --------------------------------------------------------------------------
# Stamp reader
# --------------------------------------------------------------------------


def frame_luma(frame: av.VideoFrame) -> npt.NDArray[np.uint8]:
    """Full-range 8-bit gray image of any video frame."""
    arr = frame.to_ndarray(format="gray")
    return np.asarray(arr, dtype=np.uint8)


def find_content_rect(luma: npt.NDArray[np.uint8]) -> Rect | None:
    """Bounding box of the non-black area (letterbox / pillarbox removal)."""
    bright = luma > _BRIGHT
    h, w = bright.shape
    rows = np.flatnonzero(bright.sum(axis=1) >= max(2, _CONTENT_FRACTION * w))
    cols = np.flatnonzero(bright.sum(axis=0) >= max(2, _CONTENT_FRACTION * h))
    if rows.size == 0 or cols.size == 0:
        return None
    rect = Rect(int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    if rect.width < 16 or rect.height < 16:
        return None
    return rect


def read_stamp_luma(
    luma: npt.NDArray[np.uint8], content_rect: Rect | None = None
) -> tuple[int, int] | None:
    """Decode (camera, frame_number) from a full-range gray image, or None."""
    rect = content_rect if content_rect is not None else find_content_rect(luma)
    if rect is None:
        return None
    x0, y0, x1, y1 = STAMP_RECT
    bits: list[int] = []
    for r in range(STAMP_ROWS):
        for c in range(STAMP_COLS):
            cx0 = rect.left + rect.width * (x0 + (x1 - x0) * c / STAMP_COLS)
            cx1 = rect.left + rect.width * (x0 + (x1 - x0) * (c + 1) / STAMP_COLS)
            cy0 = rect.top + rect.height * (y0 + (y1 - y0) * r / STAMP_ROWS)
            cy1 = rect.top + rect.height * (y0 + (y1 - y0) * (r + 1) / STAMP_ROWS)
            qx, qy = (cx1 - cx0) / 4, (cy1 - cy0) / 4
            sx0, sx1 = round(cx0 + qx), max(round(cx1 - qx), round(cx0 + qx) + 1)
            sy0, sy1 = round(cy0 + qy), max(round(cy1 - qy), round(cy0 + qy) + 1)
            patch = luma[sy0:sy1, sx0:sx1]
            if patch.size == 0:
                return None
            mean = float(patch.mean())
            if _AMBIGUOUS_LOW < mean < _AMBIGUOUS_HIGH:
                return None
            bits.append(1 if mean >= 128.0 else 0)
    return decode_stamp_bits(bits)


def read_stamp(frame: av.VideoFrame, content_rect: Rect | None = None) -> tuple[int, int] | None:
    """(camera, frame_number) stamped into the frame, or None if unreadable.

    The frame is read as a player shows it: turned by its display matrix
    (``frame.rotation``, counter-clockwise degrees). ``content_rect`` (pixels of the
    turned frame) skips the automatic black-bar detection.
    """
    luma = frame_luma(frame)
    turns = (frame.rotation // 90) % 4
    if turns:
        luma = np.ascontiguousarray(np.rot90(luma, k=turns))
    return read_stamp_luma(luma, content_rect)


# --------------------------------------------------------------------------
# FFmpeg log capture
# --------------------------------------------------------------------------

_REPEATED = re.compile(r"\(repeated (\d+) more times\)")


@contextlib.contextmanager
def capture_ffmpeg_log(level: int = av.logging.WARNING) -> Iterator[list[LogRecord]]:
    """Collect FFmpeg log records at ``level`` or worse, from all threads.

    PyAV's logging is off by default (level None) - then nothing is captured -
    and it collapses repeats; both are switched temporarily and restored.
    The yielded list is filled when the block exits.
    """
    prev_level = av.logging.get_level()
    prev_skip = av.logging.get_skip_repeated()
    records: list[LogRecord] = []
    av.logging.set_level(level)
    av.logging.set_skip_repeated(False)
    try:
        with av.logging.Capture(local=False) as logs:
            try:
                yield records
            finally:
                records.extend(LogRecord(lv, name or "", msg.strip()) for lv, name, msg in logs)
    finally:
        av.logging.set_skip_repeated(prev_skip)
        av.logging.set_level(prev_level)


def count_log_problems(records: Iterable[LogRecord], level: int = av.logging.WARNING) -> int:
    """Number of records at ``level`` or worse, expanding "(repeated N more times)"."""
    total = 0
    for rec in records:
        if rec.level <= level:
            m = _REPEATED.search(rec.message)
            total += 1 + (int(m.group(1)) if m else 0)
    return total


# --------------------------------------------------------------------------
# Decoders
# --------------------------------------------------------------------------


def _seconds(value: int | None, time_base: Fraction | None) -> Fraction | None:
    if value is None or time_base is None:
        return None
    return value * time_base


def _video_stream(container: InputContainer, path: Path) -> VideoStream:
    if not container.streams.video:
        raise ValueError(f"{path}: no video stream")
    return container.streams.video[0]


def _audio_stream(container: InputContainer, path: Path) -> AudioStream:
    if not container.streams.audio:
        raise ValueError(f"{path}: no audio stream")
    return container.streams.audio[0]


def decode_video(path: Path, content_rect: Rect | None = None) -> DecodedVideo:
    """Decode the first video stream; read every frame's stamp; count decoder problems."""
    stamps: list[tuple[int, int] | None] = []
    pts: list[Fraction | None] = []
    exceptions = 0
    width = height = 0
    pix_fmt = ""
    with capture_ffmpeg_log() as records, av.open(str(path)) as c:
        st = _video_stream(c, path)
        cc = st.codec_context
        # Frame threads log from worker threads: capture_ffmpeg_log listens to all threads.
        cc.thread_type = "AUTO"

        def take(frames: Iterable[av.VideoFrame]) -> None:
            nonlocal width, height, pix_fmt
            for f in frames:
                if not stamps:
                    width, height, pix_fmt = f.width, f.height, f.format.name
                stamps.append(read_stamp(f, content_rect))
                pts.append(_seconds(f.pts, f.time_base or st.time_base))

        for pkt in c.demux(st):
            try:
                # flush packets (size 0) are handled below with decode(None)
                if pkt.size:
                    take(cc.decode(pkt))
            except av.FFmpegError:
                exceptions += 1
        try:
            take(cc.decode(None))
        except av.FFmpegError:
            exceptions += 1
    return DecodedVideo(
        stamps=stamps,
        pts=pts,
        errors=count_log_problems(records) + exceptions,
        messages=records,
        width=width,
        height=height,
        pix_fmt=pix_fmt,
    )


def decode_audio(path: Path, *, by_timestamps: bool = False) -> DecodedAudio:
    """Decode the first audio stream to a float32 mono mixdown.

    Samples are concatenated, or with ``by_timestamps`` placed where each decoded frame's
    pts says (gaps become silence), as a player that follows the file's clock hears them.
    """
    chunks: list[F32Array] = []
    start: Fraction | None = None
    with av.open(str(path)) as c:
        st = _audio_stream(c, path)
        rate = st.codec_context.sample_rate
        resampler = av.AudioResampler(format="fltp")
        placed = 0

        def take(frames: Iterable[av.AudioFrame], at: Fraction | None = None) -> None:
            nonlocal placed
            for g in frames:
                arr = np.asarray(g.to_ndarray(), dtype=np.float32)
                if by_timestamps and at is not None and start is not None:
                    gap = round((at - start) * rate) - placed
                    if gap > 0:
                        chunks.append(np.zeros(gap, dtype=np.float32))
                        placed += gap
                chunks.append(arr.mean(axis=0, dtype=np.float32))
                placed += arr.shape[1]

        for frame in c.decode(st):
            at = _seconds(frame.pts, frame.time_base or st.time_base)
            if start is None:
                start = at
            take(resampler.resample(frame), at)
        take(resampler.resample(None))
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    start_time = start if start is not None else Fraction(0)
    return DecodedAudio(samples.astype(np.float32), rate, start_time)


def find_clicks(
    samples: npt.NDArray[Any],
    sample_rate: int,
    start_time: Fraction | float = 0,
    *,
    min_separation: float = 0.05,
) -> list[float]:
    """Onset times (seconds, + start_time) of the generator's clicks.

    Envelope = |x[n] - x[n-1]| (x[-1] = 0).  Samples above
    max(12 x median, 1e-3) are grouped (gaps < min_separation merge); each
    group's onset is its envelope maximum - the click's single sharp edge.
    Precision is ~1 sample, also after AAC re-encoding and resampling.
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim == 2:
        x = x.mean(axis=0)
    if x.size == 0:
        return []
    env = np.abs(np.diff(x, prepend=0.0))
    threshold = max(12.0 * float(np.median(env)), 1e-3)
    idx = np.flatnonzero(env > threshold)
    if idx.size == 0:
        return []
    gap = max(1, int(min_separation * sample_rate))
    groups = np.split(idx, np.flatnonzero(np.diff(idx) > gap) + 1)
    offset = float(start_time)
    result: list[float] = []
    for g in groups:
        lo, hi = int(g[0]), int(g[-1]) + 1
        onset = lo + int(np.argmax(env[lo:hi]))
        result.append(offset + onset / sample_rate)
    return result


# --------------------------------------------------------------------------
# Packet level inspection
# --------------------------------------------------------------------------


def _nal_length_size(extradata: bytes | None, codec: str) -> int:
    """NAL length-prefix size from avcC/hvcC extradata; 0 means Annex B start codes."""
    if not extradata or extradata[0] != 1:
        return 0
    if codec == "h264" and len(extradata) > 4:
        return (extradata[4] & 3) + 1
    if codec == "hevc" and len(extradata) > 21:
        return (extradata[21] & 3) + 1
    return 4


def _iter_nals(data: bytes, nal_len_size: int, codec: str) -> Iterator[tuple[int, int, int]]:
    """(start, end, nal_type) of each NAL unit (length-prefixed, or Annex B if size 0)."""

    def nal_type(pos: int) -> int:
        return data[pos] & 0x1F if codec == "h264" else (data[pos] >> 1) & 0x3F

    if nal_len_size == 0:
        starts = [m.end() for m in re.finditer(b"\x00\x00\x01", data)]
        for i, s in enumerate(starts):
            e = starts[i + 1] - 3 if i + 1 < len(starts) else len(data)
            if s < len(data):
                yield s, e, nal_type(s)
        return
    pos = 0
    while pos + nal_len_size <= len(data):
        size = int.from_bytes(data[pos : pos + nal_len_size], "big")
        s = pos + nal_len_size
        e = min(len(data), s + size)
        if size == 0 or s >= len(data):
            break
        yield s, e, nal_type(s)
        pos = e


def packet_table(path: Path, kind: str = "video") -> list[PacketInfo]:
    """Packets of the first ``kind`` ("video"/"audio") stream in decode order."""
    if kind not in ("video", "audio"):
        raise ValueError("kind must be 'video' or 'audio'")
    rows: list[PacketInfo] = []
    with av.open(str(path)) as c:
        st: VideoStream | AudioStream = (
            _video_stream(c, path) if kind == "video" else _audio_stream(c, path)
        )
        codec = st.codec_context.name
        len_size = _nal_length_size(st.codec_context.extradata, codec)
        for pkt in c.demux(st):
            if pkt.size == 0:
                continue
            tb = pkt.time_base or st.time_base
            nals: tuple[int, ...] = ()
            if codec in ("h264", "hevc"):
                nals = tuple(t for _, _, t in _iter_nals(bytes(pkt), len_size, codec))
            rows.append(
                PacketInfo(
                    pts=_seconds(pkt.pts, tb),
                    dts=_seconds(pkt.dts, tb),
                    duration=_seconds(pkt.duration, tb),
                    is_keyframe=bool(pkt.is_keyframe),
                    size=pkt.size,
                    nal_types=nals,
                )
            )
    return rows


def stream_info(path: Path) -> StreamInfo:
    """Container/codec facts of the first video (and audio) stream."""
    with av.open(str(path)) as c:
        vs = _video_stream(c, path)
        cc = vs.codec_context
        tb = vs.time_base or Fraction(1)
        count = sum(1 for p in c.demux(vs) if p.size)
        if vs.duration is not None:
            duration: Fraction | None = vs.duration * tb
        elif c.duration is not None:
            duration = Fraction(c.duration, av.time_base)
        else:
            duration = None
        tag = cc.codec_tag.strip("\x00")
        a = c.streams.audio[0] if c.streams.audio else None
        return StreamInfo(
            container_format=c.format.name,
            codec_name=cc.name,
            codec_tag=tag,
            profile=cc.profile,
            width=cc.width,
            height=cc.height,
            pix_fmt=cc.pix_fmt,
            time_base=tb,
            frame_count=count,
            duration=duration,
            average_rate=vs.average_rate,
            extradata=bytes(cc.extradata or b""),
            audio_codec=a.codec_context.name if a is not None else None,
            audio_sample_rate=a.codec_context.sample_rate if a is not None else None,
            audio_channels=a.codec_context.channels if a is not None else None,
        )
