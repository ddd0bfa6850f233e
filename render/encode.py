"""Re-encode pieces: fresh encoder per piece, first frame an IDR, closed GOP.

In copy mode a piece sits between copied camera GOPs, so its encoder is matched to the
source: codec, profile, bit depth and chroma, size, sample aspect, colour description,
and no more B-frame reordering than the source (the output track has one reorder delay,
the copied GOPs'). Quality
defaults to a low CRF: a re-encoded head or tail should not be visibly softer than the copied
frames beside it. In transcode mode every piece is a GOP-aligned chunk encoded with one set
of settings, so chunks join without a seam.

Packets leave here as the encoder made them (Annex-B for H.264/HEVC) with the encoder's
Annex-B parameter sets as the piece's record; the muxer puts them in the track's form
(render/bitstream.py). Those sets join the cameras' in the output's one sample description,
so each needs an id of its own: x264 is told one at plan time (``sps-id``), and
:func:`header_record` tells the planner what sets a piece will carry before it is encoded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

import av
import numpy as np
import numpy.typing as npt

from .decode import decode_run
from .errors import OutputError
from .handoff import handoff_path
from .media import NAL_CODECS, SourceInfo, VideoFormat
from .piecefile import PieceHeader, PieceWriter
from .piecejob import EncodeJob
from .plan import ENCODER_MAX_BFRAMES

ENCODERS = {"h264": "libx264", "hevc": "libx265", "vp9": "libvpx-vp9"}
_PROFILES = {
    ("h264", "yuv420p"): "high",
    ("h264", "yuv420p10le"): "high10",
    ("h264", "yuv422p"): "high422",
    ("h264", "yuv422p10le"): "high422",
    ("hevc", "yuv420p"): "main",
    ("hevc", "yuv420p10le"): "main10",
}
# x265 names the 4:2:2 profiles differently from FFmpeg; leave those to x265's choice.

#: Closed GOPs with exactly one IDR per keyint, no scene cuts (a cut must not move the
#: IDR), no B-pyramid (keeps the reorder delay within ENCODER_MAX_BFRAMES), parameter sets
#: once in extradata; x265's info SEI off so identical settings give identical records.
#: Psychovisual tuning and adaptive quantisation off (x264/x265's "tune psnr"): re-encoded
#: frames sit between the camera's own, so they are judged by how close they stay to the
#: source (PSNR), not by how pleasing they look alone; for the same bits they gain 1-2 dB.
_X26X_PARAMS = {
    "h264": ("x264-params", "scenecut=0:open-gop=0:b-pyramid=none:aud=0:repeat-headers=0:"
                            "psy=0:aq-mode=0"),
    "hevc": ("x265-params", "no-scenecut=1:no-open-gop=1:b-pyramid=0:repeat-headers=0:aud=0:"
                            "info=0:log-level=error:psy-rd=0:psy-rdoq=0:aq-mode=0"),
}


@dataclass(frozen=True)
class EncoderSettings:
    codec: str  # "h264" | "hevc" | "vp9"
    width: int
    height: int
    pix_fmt: str
    bframes: int
    crf: int
    preset: str
    gop: int | None = None  # None: a single IDR at the start of the piece
    sample_aspect_ratio: Fraction | None = None
    color_primaries: int = 2  # 2 = unspecified
    color_trc: int = 2
    colorspace: int = 2
    color_range: int = 0
    threads: int = 0
    #: Display rotation of the output track: frames are encoded turned for it.
    rotation: int = 0
    #: x264's id for its SPS and PPS (``sps-id``), chosen so that our sets can share the
    #: output's one sample description with the cameras' (render/bitstream.py). None: 0.
    sps_id: int | None = None
    #: More x264/x265 parameters (``key=value:...``) after the fixed ones.
    params: str = ""
    #: Frames per second, for the encoder's level and rate control only (timestamps come
    #: from the plan): without it x264 reads the output's fine time base as the frame rate
    #: and declares level 6.0, which hardware decoders may refuse.
    rate: Fraction | None = None

    @property
    def encoder(self) -> str:
        return ENCODERS[self.codec]

    @property
    def format(self) -> VideoFormat:
        return VideoFormat(self.codec, self.width, self.height, self.pix_fmt, self.rotation)


#: Quality of frames re-encoded between a camera's own: every one keeps >= 45 dB PSNR
#: against its decoded source frame on detailed, noisy footage at a camera's bitrate
#: (tests/test_quality.py, tests/bench/test_bench_quality.py, test_bench_4k.py). CRF 16/18,
#: the earlier choice, fell to 37-40 dB there. The cost: re-encoded frames take about 1.5
#: to three times the camera's bitrate, and they are a few percent of an export's frames.
MATCHED_CRF = {"h264": 7, "hevc": 8}
#: x265's preset for matched re-encodes unless the caller names one (x264's follows below;
#: this was x264's too and is how it was chosen). Re-encodes around cuts are a GOP at most:
#: on 4K frames at 185 Mbit/s, x264 "veryfast" at CRF 8 took 0.29 CPU-s a frame for 47.6 dB
#: (289 Mbit/s), where "fast" at CRF 10 took 0.72 s for 47.4 dB and held a 30-frame
#: lookahead (1.2 GB per encoder at 4K, 0.6 GB at veryfast's 10). "superfast" needs CRF 7
#: to keep the floor on tests/test_quality.py's detailed footage (525 Mbit/s at 4K, and no
#: faster). Full re-encodes are the user's whole output: their size matters, they keep
#: "fast".
MATCHED_PRESET = "veryfast"
TRANSCODE_PRESET = "fast"
#: Matched H.264 re-encodes (unless a preset is named): "ultrafast" with subpel refinement
#: 1, at CRF 7. Near-lossless frames are mostly residual: CAVLC instead of CABAC (CABAC
#: coding that many bits was a third of x264's time), no partition or rate lookahead
#: analysis, no deblocking. Single-threaded x264 on frames of
#: the 4K bench, against "veryfast" with CAVLC, diamond search and subme 1 at CRF 8 (the
#: previous choice): 0.109 -> 0.083 CPU-s a frame, PSNR min 50.2 -> 52.6 dB, 415 -> 552
#: Mbit/s; on 720p detailed, noisy footage (tests/test_quality.py's kind) 15.4 -> 9.3 ms,
#: min 45.7 -> 47.1 dB, 80.7 -> 88.2 Mbit/s. Without subme 1 the size grows a further 20 %;
#: at CRF 8 the detailed footage falls to 45.4 dB. The price is size: re-encoded frames
#: are a few percent of an export's, and take about three times a camera's bitrate.
MATCHED_X264_PRESET = "ultrafast"
MATCHED_X264_SPEED = "subme=1"


def matched_settings(src: SourceInfo, *, crf: int | None = None, preset: str | None = None) -> (
        EncoderSettings):
    """Settings whose output can sit between copied GOPs of ``src``."""
    v = src.video
    codec = v.format.codec
    if codec not in NAL_CODECS:
        raise OutputError(f"cannot re-encode to match {codec} sources")
    return EncoderSettings(
        codec=codec,
        width=v.format.width,
        height=v.format.height,
        pix_fmt=v.format.pix_fmt,
        bframes=min(ENCODER_MAX_BFRAMES, v.index.reorder_depth),
        crf=crf if crf is not None else MATCHED_CRF[codec],
        preset=preset or (MATCHED_X264_PRESET if codec == "h264" else MATCHED_PRESET),
        params=MATCHED_X264_SPEED if codec == "h264" and preset is None else "",
        sample_aspect_ratio=v.sample_aspect_ratio,
        color_primaries=v.color_primaries,
        color_trc=v.color_trc,
        colorspace=v.colorspace,
        color_range=v.color_range,
        rotation=v.format.rotation,
        rate=v.index.frame_rate,
    )


def transcode_settings(codec: str, fmt: VideoFormat, fps: Fraction, *,
                       crf: int | None = None, preset: str | None = None) -> EncoderSettings:
    """Settings for a fully re-encoded output (2-second closed GOPs)."""
    default_crf = {"h264": 20, "hevc": 23, "vp9": 32}[codec]
    pix_fmt = fmt.pix_fmt if fmt.pix_fmt in ("yuv420p", "yuv420p10le") else "yuv420p"
    return EncoderSettings(
        codec=codec, width=fmt.width, height=fmt.height, pix_fmt=pix_fmt,
        bframes=ENCODER_MAX_BFRAMES, crf=crf if crf is not None else default_crf,
        preset=preset or TRANSCODE_PRESET, gop=max(1, round(fps * 2)), rate=fps,
    )


def open_encoder(s: EncoderSettings, time_base: Fraction, frames: int) -> av.VideoCodecContext:
    ctx = av.CodecContext.create(s.encoder, "w")
    assert isinstance(ctx, av.VideoCodecContext)
    ctx.width = s.width
    ctx.height = s.height
    ctx.pix_fmt = s.pix_fmt
    ctx.time_base = time_base
    ctx.flags |= av.codec.context.Flags.global_header  # parameter sets in extradata
    ctx.color_primaries = s.color_primaries
    ctx.color_trc = s.color_trc
    ctx.colorspace = s.colorspace
    ctx.color_range = s.color_range
    if s.sample_aspect_ratio:
        ctx.sample_aspect_ratio = s.sample_aspect_ratio
    if s.rate:
        # A variable-rate source's exact mean rate can need terms beyond 32 bits.
        ctx.framerate = s.rate.limit_denominator(1001)
    keyint = s.gop or max(frames, 1)
    bframes = s.bframes if frames > 2 else 0
    ctx.thread_count = s.threads
    opts: dict[str, str] = {}
    if s.codec in _X26X_PARAMS:
        profile = _PROFILES.get((s.codec, s.pix_fmt))
        if profile:
            opts["profile"] = profile
        opts.update(crf=str(s.crf), preset=s.preset)
        key, fixed = _X26X_PARAMS[s.codec]
        opts[key] = f"keyint={keyint}:min-keyint={keyint}:bframes={bframes}:{fixed}"
        if s.params:
            opts[key] += f":{s.params}"
        if s.sps_id is not None and s.codec == "h264":
            opts[key] += f":sps-id={s.sps_id}"
    else:  # vp9
        ctx.gop_size = keyint
        opts.update({"crf": str(s.crf), "b": "0", "deadline": "good", "cpu-used": "4",
                     "row-mt": "1", "auto-alt-ref": "1", "lag-in-frames": "16"})
    ctx.options = opts
    try:
        ctx.open()
    except av.error.FFmpegError as exc:
        raise OutputError(f"cannot start the {s.encoder} encoder: {exc}") from exc
    return ctx


def header_record(s: EncoderSettings, time_base: Fraction, frames: int) -> bytes:
    """The parameter sets (Annex-B extradata) a piece of ``frames`` frames encoded with
    ``s`` will carry: x264 and x265 write them when opened, before any frame."""
    ctx = open_encoder(replace(s, threads=1), time_base, frames)
    return bytes(ctx.extradata or b"")


def piece_header(s: EncoderSettings, time_base: Fraction) -> PieceHeader:
    return PieceHeader(s.codec, b"", time_base, s.width, s.height)


def encode_piece(
    job: EncodeJob,
    out_path: Path,
    *,
    threads: int | None = None,
    on_frame: Callable[[], None] | None = None,
    check_cancel: Callable[[], None] | None = None,
) -> Path:
    """Decode the piece's source frames, encode them, write a piece file at ``out_path``.

    The copy pieces' samples in ``job.hand_on`` are written, as they pass, to
    ``handoff_path(out_path, index)`` (render/handoff.py). ``threads``: the encoder's and
    the decoder's, when the caller knows the CPUs it may use.
    """
    settings = job.settings if threads is None else with_threads(job.settings, threads)
    tb = job.out_time_base
    ctx = open_encoder(settings, tb, job.frames)
    sink = _PacketSink(settings, out_path, tb)
    handed = _HandOn(job.hand_on, out_path)
    try:
        out_disp = 0
        for k, (run, src) in enumerate(zip(job.runs, job.windows, strict=True)):
            fit = _Fitter(src.video.format, settings)
            for _, frame in decode_run(src, run, tee=handed.tee(k), threads=settings.threads):
                if check_cancel is not None:
                    check_cancel()
                img = fit(frame)
                img.pts = int(job.out_pts[out_disp])
                img.time_base = tb
                img.pict_type = av.video.frame.PictureType.NONE
                sink.write(ctx, ctx.encode(img))
                out_disp += 1
                if on_frame is not None:
                    on_frame()
        sink.write(ctx, ctx.encode(None))
        if out_disp != job.frames or sink.count != job.frames:
            raise OutputError(
                f"re-encoding produced {sink.count} frames where {job.frames} were planned"
            )
        sink.close()
        handed.close()
    except BaseException:
        sink.abort()
        handed.abort()
        raise
    return out_path


class _HandOn:
    """The files of the copy pieces an encode piece hands on, filled as samples pass."""

    def __init__(self, samples: Mapping[int, tuple[int, npt.NDArray[np.int64]]],
                 out_path: Path) -> None:
        self.samples = samples
        self.paths = {i: handoff_path(out_path, i) for i in samples}
        self.files: dict[int, BinaryIO] = {}

    def tee(self, run: int) -> Callable[[int, bytes], None] | None:
        """What run number ``run`` passes on: its window's decode number -> a file."""
        targets: dict[int, BinaryIO] = {}
        for i, (k, decs) in self.samples.items():
            if k != run:
                continue
            if i not in self.files:
                self.files[i] = self.paths[i].open("wb")
            for d in decs.tolist():
                targets[d] = self.files[i]
        if not targets:
            return None

        def tee(dec: int, data: bytes) -> None:
            fh = targets.get(dec)
            if fh is not None:
                fh.write(data)
        return tee

    def close(self) -> None:
        for fh in self.files.values():
            fh.close()

    def abort(self) -> None:
        self.close()
        for path in self.paths.values():
            path.unlink(missing_ok=True)


class _PacketSink:
    """Turns encoder packets into MP4 sample form and writes them to the piece file."""

    def __init__(self, settings: EncoderSettings, path: Path, tb: Fraction) -> None:
        self.settings = settings
        self.writer = PieceWriter(path, piece_header(settings, tb))
        self.count = 0
        self._ready = False

    def write(self, ctx: av.VideoCodecContext, packets: list[av.Packet[Any]]) -> None:
        for p in packets:
            if not self._ready:
                self.writer.set_extradata(bytes(ctx.extradata or b""))
                self._ready = True
            data = bytes(p)
            assert p.pts is not None and p.dts is not None
            self.writer.write(p.pts, p.dts, int(p.duration or 0), p.is_keyframe, data)
            self.count += 1

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        self.writer.abort()


#: Filters that turn a picture counter-clockwise by the key's degrees.
_TURNS: dict[int, tuple[tuple[str, str], ...]] = {
    90: (("transpose", "cclock"),),
    180: (("hflip", ""), ("vflip", "")),
    270: (("transpose", "clock"),),
}


class _Fitter:
    """Turn, scale (keeping the picture's shape) and pad into the output frame.

    A source whose display rotation differs from the output track's is turned upright for
    that track: the output shows ``rotate(coded, out)``, the source ``rotate(coded, src)``.
    """

    def __init__(self, src: VideoFormat, s: EncoderSettings) -> None:
        self.turn = (src.rotation - s.rotation) % 360
        self.same = (src.width, src.height, src.pix_fmt, self.turn) == (
            s.width, s.height, s.pix_fmt, 0)
        self.s = s
        self.graph: av.filter.Graph | None = None
        self.src = src

    def __call__(self, frame: av.VideoFrame) -> av.VideoFrame:
        if self.same:
            return frame
        if self.graph is None:
            self.graph = self._build(frame)
        self.graph.push(frame)
        out = self.graph.pull()
        assert isinstance(out, av.VideoFrame)
        return out

    def _build(self, frame: av.VideoFrame) -> av.filter.Graph:
        s = self.s
        g = av.filter.Graph()
        buf = g.add_buffer(width=frame.width, height=frame.height, format=frame.format,
                           time_base=Fraction(1, 1000))
        head: av.filter.context.FilterContext = buf
        for name, arg in _TURNS.get(self.turn, ()):
            turn = g.add(name, arg or None)
            head.link_to(turn)
            head = turn
        scale = g.add("scale", f"w={s.width}:h={s.height}:force_original_aspect_ratio=decrease"
                               ":force_divisible_by=2:flags=bicubic")
        pad = g.add("pad", f"w={s.width}:h={s.height}:x=(ow-iw)/2:y=(oh-ih)/2:color=black")
        fmt = g.add("format", f"pix_fmts={s.pix_fmt}")
        sar = g.add("setsar", "1")
        sink = g.add("buffersink")
        head.link_to(scale)
        scale.link_to(pad)
        pad.link_to(fmt)
        fmt.link_to(sar)
        sar.link_to(sink)
        g.configure()
        return g


def with_threads(s: EncoderSettings, threads: int) -> EncoderSettings:
    return replace(s, threads=threads)
