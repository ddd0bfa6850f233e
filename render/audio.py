"""The output audio track: decoded per segment, trimmed sample-exactly, encoded once.

Why not copy AAC: an AAC frame copied without its predecessor decodes as garbage for its
first 1024 samples (an overlapped transform), so copied joins click, and the mp4 muxer can
signal priming only once per track. Audio is cheap next to video, so every segment's audio
is decoded with pre-roll, cut to the exact span its video occupies on the output timeline,
given a few milliseconds of fade where the signal jumps, and the whole timeline is encoded
by one encoder. Span boundaries are rounded from the cumulative timeline, never from
per-span durations, so the audio can never drift from the picture.

Audio is streamed block by block: an hour of output never sits in memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

import av
import numpy as np
import numpy.typing as npt

from .errors import CorruptMediaError, OutputError
from .media import SourceInfo
from .piecefile import PacketSink, PieceHeader, PieceWriter
from .piecejob import AudioJob
from .plan import AudioSpan

FloatBlock = npt.NDArray[np.float32]

#: Length of the fade at a seam: long enough to remove the click of a jump, far shorter
#: than anything a listener hears as a dip.
FADE_SECONDS = Fraction(3, 1000)
#: Decode this far before a span's start so the decoder's overlap has settled (AAC needs
#: one frame; Opus 80 ms).
PREROLL_SECONDS = Fraction(1, 2)
BLOCK_SAMPLES = 48000
#: A frame whose timestamp differs from the running sample count by more than this many
#: milliseconds re-synchronises the count (a gap or overlap in the source).
RESYNC_MS = 10


#: Channel layouts both AAC and Opus encode; anything else becomes stereo, with a warning.
SURROUND_LAYOUTS = frozenset({"3.0", "quad", "5.0", "5.1", "5.0(side)", "5.1(side)", "7.1"})


@dataclass(frozen=True)
class AudioTarget:
    codec: str  # "aac" or "libopus"
    sample_rate: int
    layout: str  # FFmpeg layout name: "mono", "stereo", "5.1", ...
    bit_rate: int

    @property
    def channels(self) -> int:
        return int(av.AudioLayout(self.layout).nb_channels)


def choose_target(container_format: str, sources: Sequence[SourceInfo]) -> AudioTarget:
    """AAC for MP4 at the first audio source's rate; Opus (48 kHz only) for WebM.

    ``sources`` in the order the export plays them. The layout is the first audio
    source's: a 5.1 recording stays 5.1 (later stereo sources are spread onto its front
    channels), mono stays mono.
    """
    first = next((s.audio for s in sources if s.audio is not None), None)
    layout = "stereo"
    if first is not None and first.channels == 1:
        layout = "mono"
    elif first is not None and first.layout in SURROUND_LAYOUTS:
        layout = first.layout
    channels = int(av.AudioLayout(layout).nb_channels)
    if container_format == "webm":
        # libopus knows the surround layouts only with back channels (AC-3 decodes "side").
        layout = layout.replace("(side)", "")
        return AudioTarget("libopus", 48000, layout, 64_000 * channels)
    rate = first.sample_rate if first is not None else 48000
    if rate not in (44100, 48000, 32000, 96000, 88200, 24000, 22050, 16000):
        rate = 48000
    floor = 128_000 if channels == 1 else 96_000 * channels
    src_rate = first.bit_rate if first is not None else 0
    return AudioTarget("aac", rate, layout, min(160_000 * max(channels, 2), max(floor, src_rate)))


def layout_warnings(target: AudioTarget, sources: Mapping[int, SourceInfo],
                    used: Sequence[int]) -> list[str]:
    """One sentence per used source whose channels do not all survive into the output."""
    out: list[str] = []
    for i in used:
        audio = sources[i].audio
        if audio is None or audio.channels <= target.channels:
            continue
        out.append(f"sources[{i}] ({sources[i].name}) has {audio.channels}-channel audio "
                   f"({audio.layout}); the export's audio is {target.layout}, so it is "
                   "downmixed")
    return out


def span_samples(span: AudioSpan, rate: int) -> tuple[int, int]:
    """[first, stop) output sample numbers of a span, from the cumulative timeline."""
    return round(span.out_start * rate), round((span.out_start + span.duration) * rate)


def open_audio_encoder(target: AudioTarget) -> av.AudioCodecContext:
    ctx = av.CodecContext.create(target.codec, "w")
    assert isinstance(ctx, av.AudioCodecContext)
    ctx.sample_rate = target.sample_rate
    ctx.layout = target.layout
    ctx.format = "fltp" if target.codec == "aac" else "flt"
    ctx.bit_rate = target.bit_rate
    ctx.time_base = Fraction(1, target.sample_rate)
    ctx.flags |= av.codec.context.Flags.global_header
    ctx.open()
    return ctx


def render_audio(
    job: AudioJob,
    out: Path | PacketSink,
    *,
    on_samples: Callable[[int], None] | None = None,
    check_cancel: Callable[[], None] | None = None,
) -> None:
    """Encode the whole output audio timeline into a piece file at ``out`` (or, in one
    process, into a PacketChannel the muxer reads as it goes).

    A piece file rather than a container: Matroska would round every timestamp to a
    millisecond, and the muxer needs the encoder's exact sample-count timestamps.
    """
    spans, sources, target = job.spans, job.sources, job.target
    try:
        ctx = open_audio_encoder(target)
    except av.error.FFmpegError as exc:
        raise OutputError(f"cannot start the {target.codec} audio encoder: {exc}") from exc
    header = PieceHeader(target.codec, bytes(ctx.extradata or b""),
                         Fraction(1, target.sample_rate), 0, 0)
    writer = PieceWriter(out, header) if isinstance(out, Path) else out
    inputs = _Inputs()
    try:
        feeder = _EncoderFeeder(ctx, writer, target)
        for k, span in enumerate(spans):
            if check_cancel is not None:
                check_cancel()
            first, stop = span_samples(span, target.sample_rate)
            fade_in = k == 0 or not _continuous(spans[k - 1], span)
            fade_out = k == len(spans) - 1 or not _continuous(span, spans[k + 1])
            blocks = _span_blocks(span, stop - first, sources, target, inputs)
            for block in _faded(blocks, stop - first, target.sample_rate, fade_in, fade_out):
                feeder.push(block)
                if on_samples is not None:
                    on_samples(block.shape[1])
        feeder.finish()
        writer.close()
    except av.error.FFmpegError as exc:
        writer.abort()
        raise OutputError(f"encoding the audio track failed: {exc}") from exc
    except BaseException:
        writer.abort()
        raise
    finally:
        inputs.close()


class _Inputs:
    """One demuxer input per source, reopened for each of its spans: from a bucket, what
    the reader fetched (the moov, the audio around the last cut) is not fetched again."""

    def __init__(self) -> None:
        self._open: dict[int, str | BinaryIO] = {}

    def get(self, key: int, src: SourceInfo) -> str | BinaryIO:
        stream = self._open.get(key)
        if stream is None:
            # Only the audio is demuxed: a stored source need not fetch the video samples.
            stream = self._open[key] = src.file.demux_input(
                (src.video.offset, src.video.index.size))
        elif not isinstance(stream, str):
            stream.seek(0)
        return stream

    def close(self) -> None:
        for stream in self._open.values():
            if not isinstance(stream, str):
                stream.close()
        self._open.clear()


def _continuous(a: AudioSpan, b: AudioSpan) -> bool:
    """b carries on exactly where a stopped in the same source: no seam, no fade."""
    return a.source is not None and a.source == b.source and a.src_start + a.duration == b.src_start


def _faded(
    blocks: Iterator[FloatBlock], total: int, rate: int, fade_in: bool, fade_out: bool
) -> Iterator[FloatBlock]:
    fade = max(1, math.ceil(FADE_SECONDS * rate))
    pos = 0
    for block in blocks:
        n = block.shape[1]
        if (fade_in and pos < fade) or (fade_out and pos + n > total - fade):
            idx = np.arange(pos, pos + n, dtype=np.float64)
            gain = np.ones(n, dtype=np.float64)
            if fade_in:
                gain *= np.clip((idx + 0.5) / fade, 0.0, 1.0)
            if fade_out:
                gain *= np.clip((total - idx - 0.5) / fade, 0.0, 1.0)
            block = (block * gain.astype(np.float32)).astype(np.float32)
        pos += n
        yield block


def _span_blocks(
    span: AudioSpan, n: int, sources: Mapping[int, SourceInfo], target: AudioTarget,
    inputs: _Inputs,
) -> Iterator[FloatBlock]:
    src = sources.get(span.source) if span.source is not None else None
    if span.source is None or src is None or src.audio is None:
        yield from _silence(n, target.channels)
        return
    yield from _decode_span(src, span.src_start, n, target, inputs.get(span.source, src))


def _silence(n: int, channels: int) -> Iterator[FloatBlock]:
    while n > 0:
        k = min(n, BLOCK_SAMPLES)
        yield np.zeros((channels, k), dtype=np.float32)
        n -= k


def _decode_span(src: SourceInfo, start: Fraction, n: int, target: AudioTarget,
                 stream: str | BinaryIO) -> Iterator[FloatBlock]:
    """Exactly ``n`` samples of the source's audio from ``start`` (the file's clock)."""
    assert src.audio is not None
    rate = target.sample_rate
    want = round((start - src.audio.start) * rate)  # sample number in the stream's own count
    stream_origin = src.audio.start  # container time of sample 0
    produced = 0
    try:
        with _open_audio(src, stream, src.file.demux_options) as container:
            ast = container.streams.audio[0]
            tb = Fraction(ast.time_base) if ast.time_base is not None else Fraction(1, rate)
            seek_to = stream_origin + Fraction(want, rate) - PREROLL_SECONDS
            if seek_to > stream_origin:
                container.seek(math.floor(seek_to / tb), stream=ast, backward=True)
            resampler = av.AudioResampler(format="fltp", layout=target.layout, rate=rate)
            pos: int | None = None
            for frame in _decoded(container, ast):
                for rf in resampler.resample(frame):
                    stamped = _position(rf, stream_origin, rate)
                    # Follow the stream's own clock when it jumps (a lost packet, a gap in
                    # the recording) instead of counting samples past it; small jitter from
                    # the resampler is ignored so the audio stays continuous.
                    if pos is None or (stamped is not None
                                       and abs(stamped - pos) > RESYNC_MS * rate // 1000):
                        pos = stamped if stamped is not None else (pos or 0)
                    arr = rf.to_ndarray().astype(np.float32, copy=False)
                    for block in _take(arr, pos, want + produced, want + n):
                        produced += block.shape[1]
                        yield block
                    pos += arr.shape[1]
                    if produced >= n:
                        return
                if pos is not None and pos >= want + n:
                    break
    except av.error.FFmpegError as exc:
        raise CorruptMediaError(
            f"the audio of source file {src.name!r} cannot be decoded: {exc}"
        ) from exc
    if produced < n:  # the audio ends before the picture: pad with silence
        yield from _silence(n - produced, target.channels)


def _open_audio(src: SourceInfo, stream: str | BinaryIO, options: dict[str, str]
                ) -> av.container.InputContainer:
    """The source opened for demuxing its audio alone.

    FFmpeg's probe on opening would decode a video frame (a 4K I-frame costs up to 0.2 s),
    once per audio span: the video stream's decoder is told to skip every frame. (FFmpeg
    then warns, if its log is on, that the video's pixel format is unknown; nothing here
    needs it.) The mov demuxer then skips the other streams' samples instead of reading
    (and allocating) every video byte between the audio packets; not Matroska's, where
    discarding changes where decoding resumes after a seek.
    """
    assert src.audio is not None
    probe: list[dict[str, str]] = [{} for _ in range(src.video.stream_index + 1)]
    if src.video.stream_index != src.audio.stream_index:
        probe[src.video.stream_index] = {"skip_frame": "all"}
    # PyAV's stub types stream_options as list[str]; it takes one dict per stream.
    container: av.container.InputContainer = av.open(
        stream, "r", metadata_errors="ignore", options=options,
        stream_options=probe)  # type: ignore[call-overload]
    if "mov" in src.container.split(","):
        audio_index = container.streams.audio[0].index
        for st in container.streams:
            if st.index != audio_index:
                st.discard = av.stream.Discard.all
    return container


def _position(frame: av.AudioFrame, origin: Fraction, rate: int) -> int | None:
    """Sample number of a frame's first sample on the stream's own clock."""
    if frame.pts is None:
        return None
    tb = Fraction(frame.time_base) if frame.time_base is not None else Fraction(1, rate)
    return round((frame.pts * tb - origin) * rate)


def _take(arr: FloatBlock, pos: int, lo: int, hi: int) -> Iterator[FloatBlock]:
    """The part of ``arr`` (starting at sample ``pos``) inside [lo, hi), padding a gap before."""
    if pos > lo:  # the stream starts late or has a gap: fill with silence
        yield from _silence(min(pos, hi) - lo, arr.shape[0])
        lo = min(pos, hi)
    a = max(lo - pos, 0)
    b = min(hi - pos, arr.shape[1])
    if b > a:
        yield np.ascontiguousarray(arr[:, a:b])


def _decoded(container: av.container.InputContainer, stream: av.AudioStream) -> Iterator[
        av.AudioFrame]:
    for packet in container.demux(stream):
        try:
            yield from packet.decode()
        except av.error.InvalidDataError:
            # One damaged packet costs a frame of audio, not the export: the next frame's
            # timestamp re-synchronises the position and the hole becomes silence.
            continue


class _EncoderFeeder:
    """Cuts arbitrary blocks into the encoder's frame size and keeps exact pts."""

    def __init__(self, ctx: av.AudioCodecContext, writer: PacketSink,
                 target: AudioTarget) -> None:
        self.ctx = ctx
        self.writer = writer
        self.target = target
        self.pending: list[FloatBlock] = []
        self.pending_n = 0
        self.pts = 0

    @property
    def frame_size(self) -> int:
        return int(self.ctx.frame_size or 1024)

    def push(self, block: FloatBlock) -> None:
        self.pending.append(block)
        self.pending_n += block.shape[1]
        fs = self.frame_size
        if self.pending_n < fs:
            return
        buf = np.concatenate(self.pending, axis=1)
        whole = (buf.shape[1] // fs) * fs
        for i in range(0, whole, fs):
            self._encode(buf[:, i:i + fs])
        rest = buf[:, whole:]
        self.pending = [rest] if rest.shape[1] else []
        self.pending_n = rest.shape[1]

    def finish(self) -> None:
        if self.pending_n:
            buf = np.concatenate(self.pending, axis=1)
            self._encode(buf)
        self._write(self.ctx.encode(None))

    def _encode(self, arr: FloatBlock) -> None:
        fmt = self.ctx.format.name
        data = np.ascontiguousarray(arr if fmt == "fltp" else arr.T.reshape(1, -1))
        frame = av.AudioFrame.from_ndarray(data, format=fmt, layout=self.target.layout)
        frame.sample_rate = self.target.sample_rate
        frame.pts = self.pts
        frame.time_base = Fraction(1, self.target.sample_rate)
        self.pts += arr.shape[1]
        self._write(self.ctx.encode(frame))

    def _write(self, packets: list[av.Packet[Any]]) -> None:
        for p in packets:
            assert p.pts is not None
            dts = p.dts if p.dts is not None else p.pts
            self.writer.write(p.pts, dts, int(p.duration or 0), True, bytes(p))
