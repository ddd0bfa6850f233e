"""Assemble the output: pieces in order, one video and one audio track, moved into place.

Video samples keep their bytes (copied or re-encoded) and get new timestamps: pts from the
plan's output grid, dts from the same grid shifted by one global reorder delay, so DTS are
uniform and never bumped to dodge a collision (the stutter seen in other smart cutters).

The track has one sample description whose record holds every parameter set of the export,
each under its own id; samples carry none in-band and their slices name the record's ids
(bitstream.py says why and how; where that is impossible, every keyframe carries its piece's
sets in-band instead). Packets are converted to the track's one sample format on the way.

The index goes at the front in one pass (``moov_size`` reserves room); if the reservation
proves too small the muxer says so at close and the file is written again with faststart.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Protocol

import av
import numpy as np
import numpy.typing as npt

from .audio import AudioTarget
from .bitstream import (
    Conformer,
    ParameterSetSurprise,
    SampleFormat,
    TrackParams,
    convert,
    mux_time_track,
    parameter_sets,
)
from .decode import source_samples
from .errors import OutputError
from .media import NAL_CODECS, SourceInfo
from .objectstore import MIN_PART_SIZE, MultipartWriter, ObjectRef
from .objectstore.writer import DEFAULT_PART_SIZE
from .piecefile import PacketChannel, read_header, read_packets
from .plan import CopyPiece, EncodePiece, Plan
from .sidedata import new_extradata

#: Bytes of moov per sample and per sample entry, with margin over what FFmpeg writes
#: (about 12 per H.264 sample, 90 per entry plus its record).
MOOV_PER_SAMPLE = 64  # FFmpeg writes 12-40; a too-small reservation costs a whole rewrite
MOOV_BASE = 16384
#: Parameter sets of our encoders (x265's with its info SEI off is well under this).
MAX_ENCODER_RECORD = 4096
log = logging.getLogger("cutfarm.mux")
_TAGS = {"h264": "avc1", "hevc": "hvc1"}


@dataclass(frozen=True)
class VideoPacket:
    data: bytes
    out_disp: int
    is_keyframe: bool
    record: bytes  # parameter-set record of the piece (avcC/hvcC/Annex-B; b"" for VP9)
    fmt: SampleFormat | None  # how ``data`` is framed (None: not a NAL codec)
    piece: int = -1  # index of the plan piece it belongs to


def estimate_moov(plan: Plan, audio_packets: int, records: int, record_bytes: int) -> int:
    samples = plan.frame_count + audio_packets
    return MOOV_BASE + MOOV_PER_SAMPLE * samples + records * 256 + record_bytes


class PieceSource(Protocol):
    """Where the muxer gets re-encoded pieces; it asks in output order and may block until
    ready. Copied samples it reads from the source files itself."""

    def encoded(self, index: int) -> Path:
        """The piece file of encode piece ``index``."""
        ...

    def copied(self, index: int) -> tuple[Path, int] | None:
        """A file of copy piece ``index``'s samples from the given one (a decode number) on,
        handed on by the encode piece that read them (render/handoff.py), or None: read
        them all from the source."""
        ...

    def release(self, index: int) -> None:
        """The muxer is done with piece ``index``: its storage may go."""
        ...


@dataclass(frozen=True)
class LocalPieces:
    """Pieces made in this process: encoded ones on disk, copies read by the muxer (or
    handed on in ``copies``)."""

    files: Mapping[int, Path]
    copies: Mapping[int, tuple[Path, int]] = field(default_factory=dict)

    def encoded(self, index: int) -> Path:
        return self.files[index]

    def copied(self, index: int) -> tuple[Path, int] | None:
        return self.copies.get(index)

    def release(self, index: int) -> None:
        """Kept: the engine's work folder goes as a whole, and a faststart rewrite needs
        the pieces again."""


def _copy_samples(src: SourceInfo, decs: npt.NDArray[np.int64],
                  shipped: tuple[Path, int] | None) -> Generator[bytes, None, None]:
    """The bytes of samples ``decs`` (ascending), those from ``shipped[1]`` on from the
    handed-on file ``shipped[0]`` when it is there and whole: a piece killed while writing
    it, or a file gone, costs a read from the source, never a wrong sample."""
    if shipped is None:
        yield from source_samples(src, decs)
        return
    path, first = shipped
    handed = decs >= first
    sizes = src.video.index.size[decs[handed]]
    try:
        whole = path.stat().st_size == int(sizes.sum())
    except OSError:
        whole = False
    if not whole:
        yield from source_samples(src, decs)
        return
    yield from source_samples(src, decs[~handed])
    with path.open("rb", buffering=1 << 20) as fh:
        for size in sizes.tolist():
            yield fh.read(size)


def video_packets(
    plan: Plan,
    sources: Mapping[int, SourceInfo],
    pieces: PieceSource,
    *,
    on_bytes: Callable[[int], None] | None = None,
    check_cancel: Callable[[], None] | None = None,
) -> Iterator[VideoPacket]:
    """Every output video sample in decode order."""
    for i, piece in enumerate(plan.pieces):
        if check_cancel is not None:
            check_cancel()
        if isinstance(piece, CopyPiece):
            src = sources[piece.source]
            index = src.video.index
            decs = piece.samples(index)
            with contextlib.closing(_copy_samples(src, decs, pieces.copied(i))) as samples:
                fmt = SampleFormat(src.video.format.codec, src.video.nal_length_size)
                for n, (dec, data) in enumerate(zip(decs, samples, strict=True)):
                    d = int(dec)
                    if on_bytes is not None:
                        on_bytes(len(data))
                    yield VideoPacket(data, int(index.disp_of_dec[d]) + piece.disp_base,
                                      bool(index.rap[d]), src.video.record_of(d), fmt, i)
                    if check_cancel is not None and n % 256 == 255:
                        check_cancel()
            pieces.release(i)
        else:
            yield from _encoded_packets(plan, piece, pieces.encoded(i), i)
            pieces.release(i)


def _encoded_packets(plan: Plan, piece: EncodePiece, path: Path,
                     index: int = -1) -> Iterator[VideoPacket]:
    header = read_header(path)
    if header.time_base != plan.out_time_base:
        raise OutputError(f"piece {path.name} has time base {header.time_base}, "
                          f"expected {plan.out_time_base}")
    lo, hi = piece.out_first, piece.out_stop
    grid = plan.out_pts[lo:hi]
    record = header.extradata
    fmt = SampleFormat(header.codec, None) if header.codec in NAL_CODECS else None
    count = 0
    for p in read_packets(path):
        k = int(np.searchsorted(grid, p.pts))
        if k >= len(grid) or int(grid[k]) != p.pts:
            raise OutputError(f"piece {path.name} holds a frame at {p.pts} that is not planned")
        yield VideoPacket(p.data, lo + k, p.is_keyframe, record, fmt, index)
        count += 1
    if count != hi - lo:
        raise OutputError(f"piece {path.name} holds {count} frames, {hi - lo} were planned")


@dataclass(frozen=True)
class StoredOutput:
    """An output written straight into S3 by a multipart upload (render/objectstore)."""

    ref: ObjectRef
    part_size: int = DEFAULT_PART_SIZE
    content_type: str = "video/mp4"


#: Attempts at a reservation for the index when the output cannot be rewritten (S3).
STORED_ATTEMPTS = 3


def assemble(
    plan: Plan,
    sources: Mapping[int, SourceInfo],
    pieces: PieceSource,
    audio: tuple[Path | PacketChannel, AudioTarget] | None,
    out_path: Path | StoredOutput,
    *,
    container_format: str = "mp4",
    timecode: str | None = None,
    params: TrackParams | None = None,
    on_bytes: Callable[[int], None] | None = None,
    check_cancel: Callable[[], None] | None = None,
) -> int:
    """Write the output, atomically; its size in bytes.

    A path is written as ``.partial`` then renamed. An S3 object is uploaded part by part
    as it is written, the part holding the index last, and appears only when complete;
    any failure aborts the upload.

    ``timecode``: the first frame's SMPTE label, written as a ``tmcd`` track (MP4 only).
    ``params``: the parameter-set plan made with the export's plan (``Prepared.params``);
    without one it is made here, from the pieces once they are all encoded.
    """
    if container_format != "mp4":
        timecode = None
        params = None
    elif params is None:
        params = _plan_parameter_sets(plan, sources, pieces)
    name = out_path.name if isinstance(out_path, Path) else out_path.ref.name

    def write(sink: Path | StoredOutput, progress: Callable[[int], None] | None,
              reserve: bool, scale: int = 1) -> int:
        nonlocal params
        try:
            return _write_to(sink, plan, sources, pieces, audio, container_format, progress,
                             check_cancel, reserve=reserve, scale=scale, timecode=timecode,
                             params=params)
        except ParameterSetSurprise as exc:
            assert params is not None
            log.warning("%s: %s; writing the parameter sets in-band instead", name, exc)
            params = TrackParams(params.codec, fallback=str(exc))
            return _write_to(sink, plan, sources, pieces, audio, container_format, None,
                             check_cancel, reserve=reserve, scale=scale, timecode=timecode,
                             params=params)

    if isinstance(out_path, StoredOutput):
        # An upload cannot be read back for a faststart rewrite: reserve more and write again.
        for attempt in range(STORED_ATTEMPTS):
            try:
                return write(out_path, on_bytes if attempt == 0 else None, True, 2 ** attempt)
            except _ReservationTooSmall:
                continue
        raise OutputError("the output's index did not fit the space reserved for it, "
                          f"{STORED_ATTEMPTS} times; please report this export")
    tmp = out_path.with_name(f".{out_path.name}.partial")
    try:
        try:
            write(tmp, on_bytes, True)
        except _ReservationTooSmall:
            write(tmp, None, False)
        tmp.replace(out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out_path.stat().st_size


class _ReservationTooSmall(Exception):
    pass


def _write_to(sink: Path | StoredOutput, plan: Plan, sources: Mapping[int, SourceInfo],
              pieces: PieceSource, audio: tuple[Path | PacketChannel, AudioTarget] | None,
              container_format: str, on_bytes: Callable[[int], None] | None,
              check_cancel: Callable[[], None] | None, *, reserve: bool, scale: int,
              timecode: str | None, params: TrackParams | None) -> int:
    """One attempt at the whole output into ``sink``; its size."""
    options = _options(plan, sources, audio, container_format, reserve, params, scale=scale)
    if isinstance(sink, Path):
        _write(plan, sources, pieces, audio, sink, container_format, on_bytes, check_cancel,
               options=options, reserve=reserve, timecode=timecode, params=params)
        return sink.stat().st_size
    # The head part holds ftyp and the reserved moov, rewritten when the muxer finishes.
    head = max(MIN_PART_SIZE, int(options.get("moov_size", 0)) + (1 << 20))
    with MultipartWriter(sink.ref, part_size=max(sink.part_size, head), head_size=head,
                         content_type=sink.content_type) as writer:
        _write(plan, sources, pieces, audio, writer, container_format, on_bytes, check_cancel,
               options=options, reserve=reserve, timecode=timecode, params=params)
        return writer.complete().size


def _write(
    plan: Plan,
    sources: Mapping[int, SourceInfo],
    pieces: PieceSource,
    audio: tuple[Path | PacketChannel, AudioTarget] | None,
    path: Path | MultipartWriter,
    container_format: str,
    on_bytes: Callable[[int], None] | None,
    check_cancel: Callable[[], None] | None,
    *,
    options: dict[str, str],
    reserve: bool,
    timecode: str | None = None,
    params: TrackParams | None = None,
) -> None:
    target = str(path) if isinstance(path, Path) else path
    try:
        out = av.open(target, "w", format=container_format, options=options)
    except (OSError, av.error.FFmpegError) as exc:
        raise OutputError(f"cannot create the output file: {exc}") from exc
    templates: list[av.container.InputContainer] = []
    try:
        vstream, track = _video_stream(out, plan, sources, pieces, templates, container_format,
                                       params)
        if timecode:
            vstream.metadata["timecode"] = timecode  # the mov muxer adds a tmcd track for it
        audio_out = _AudioOut(out, audio) if audio else None
        tb = plan.out_time_base
        # Python ints up front: numpy scalars and Fractions per packet cost more than
        # muxing a small packet does.
        out_pts = plan.out_pts.tolist()
        durations = _frame_durations(plan, out_pts)
        decode_times = _decode_times(plan.reorder_delay, out_pts, durations)
        packets = video_packets(plan, sources, pieces, on_bytes=on_bytes,
                                check_cancel=check_cancel)
        for i, vp in enumerate(packets):
            pts = out_pts[vp.out_disp]
            dts = decode_times[i]
            if dts > pts:
                raise OutputError(f"internal error: frame {vp.out_disp} decodes after it shows")
            if audio_out is not None:
                audio_out.write_until(dts, tb)  # interleave: audio that plays before this
            packet = av.Packet(track.packet_data(vp))
            packet.stream = vstream
            packet.time_base = tb
            packet.pts = pts
            packet.dts = dts
            packet.duration = durations[vp.out_disp]
            packet.is_keyframe = vp.is_keyframe
            if i == 0 and track.record:
                # The muxer takes the track's description from the first packet's side data
                # (the template stream's extradata may be a stand-in).
                new_extradata(track.record).to_packet(packet)
            out.mux(packet)
        if audio_out is not None:
            audio_out.write_until(None, tb)
    except BaseException:
        _close_quietly(out)
        raise
    finally:
        for t in templates:
            t.close()
    try:
        out.close()
    except av.error.FFmpegError as exc:
        # FFmpeg reports a too-small reservation only in its log ("reserved_moov_size is too
        # small") and as EINVAL from close, after the index has overwritten media data:
        # the file is garbage either way, so write it again without reserving.
        if reserve and getattr(exc, "errno", None) == errno.EINVAL:
            raise _ReservationTooSmall() from exc
        raise OutputError(f"finishing the output file failed: {exc}") from exc


def _options(plan: Plan, sources: Mapping[int, SourceInfo],
             audio: tuple[Path | PacketChannel, AudioTarget] | None, container_format: str,
             reserve: bool, params: TrackParams | None = None, scale: int = 1
             ) -> dict[str, str]:
    if container_format != "mp4":
        return {}
    timescale = str(plan.out_time_base.denominator)
    # movie_timescale = the track's: the edit list that hides the reorder delay is exact.
    options = {"movie_timescale": timescale, "video_track_timescale": timescale}
    if not reserve:
        options["movflags"] = "+faststart"
        return options
    # ~1 packet per 1024 samples (AAC) or 960 (Opus): estimate, with margin, from duration.
    audio_count = int(plan.duration * audio[1].sample_rate / 900) + 16 if audio else 0
    size = scale * estimate_moov(plan, audio_count, 1, _record_bound(plan, sources, params))
    options["moov_size"] = str(size)
    return options


class _AudioOut:
    """Feeds the audio piece's packets into the output in step with the video."""

    def __init__(self, out: av.container.OutputContainer,
                 audio: tuple[Path | PacketChannel, AudioTarget]) -> None:
        self.out = out
        self.target = audio[1]
        self.stream = _audio_stream(out, self.target)
        source = audio[0]
        self.packets = (read_packets(source) if isinstance(source, Path)
                        else source.packets())
        self.pending = next(self.packets, None)
        self.time_base = Fraction(1, self.target.sample_rate)

    def write_until(self, ticks: int | None, tb: Fraction) -> None:
        """Mux the audio packets that start at or before ``ticks`` * ``tb`` (all: None)."""
        # pending.dts / rate <= ticks * tb, in integers (rate and tb.denominator > 0)
        limit = None if ticks is None else ticks * tb.numerator * self.target.sample_rate
        den = tb.denominator
        while self.pending is not None and (limit is None or self.pending.dts * den <= limit):
            p = self.pending
            packet = av.Packet(p.data)
            packet.stream = self.stream
            packet.time_base = self.time_base
            packet.pts = p.pts
            packet.dts = p.dts
            packet.duration = p.duration
            self.out.mux(packet)
            self.pending = next(self.packets, None)


def _close_quietly(out: av.container.OutputContainer) -> None:
    with contextlib.suppress(av.error.FFmpegError, OSError):
        out.close()


def _frame_durations(plan: Plan, out_pts: list[int]) -> list[int]:
    """``plan.frame_duration(j)`` for every output frame ``j``."""
    if not out_pts:
        return []
    ends = [*out_pts[1:], int(plan.out_end)]
    return [end - start for start, end in zip(out_pts, ends, strict=True)]


def _decode_times(delay: int, out_pts: list[int], durations: list[int]) -> list[int]:
    """Uniform DTS: the i-th decoded sample gets the pts of display slot i - delay; the
    ``delay`` samples before the first pts are spaced by :func:`_lead_step`."""
    n = len(out_pts)
    if n == 0:
        return []
    step = _lead_step(delay, durations) if delay else 0
    lead = [out_pts[0] + (i - delay) * step for i in range(min(delay, n))]
    return lead + out_pts[:n - delay] if n > delay else lead


def _lead_step(delay: int, durations: list[int]) -> int:
    """Spacing of the dts before the first pts: at least any of the last frames' durations.

    The track's decode span (last dts + its duration - first dts) must cover the shown
    span, or FFmpeg reports the track shorter than its last frame; with uneven durations
    (Matroska's millisecond grid) one frame's duration is not always enough.
    """
    n = len(durations)
    step: int = max(durations[j] for j in {0, *range(max(0, n - 1 - delay), n)})
    return step


def _record_bound(plan: Plan, sources: Mapping[int, SourceInfo],
                  params: TrackParams | None = None) -> int:
    """Upper bound on the bytes of the track's one record, known before any piece exists:
    exact when the parameter-set plan built it, else the largest record that may head it."""
    if params is not None and params.conformant:
        return len(params.record)
    used = {p.source for p in plan.pieces if isinstance(p, CopyPiece)}
    recs = [r for i in used for r in (sources[i].video.records or (sources[i].video.extradata,))]
    return max([MAX_ENCODER_RECORD, *map(len, recs)])


def _plan_parameter_sets(plan: Plan, sources: Mapping[int, SourceInfo],
                         pieces: PieceSource) -> TrackParams | None:
    """The parameter-set plan from the encoded pieces themselves (waits for all of them)."""
    records = {i: read_header(pieces.encoded(i)).extradata
               for i, p in enumerate(plan.pieces) if isinstance(p, EncodePiece)}
    return mux_time_track(plan, sources, records)


class _Track:
    """The output track's record and sample format; converts each packet into it.

    Conformant plan: the record holds every set and packets go through a Conformer. Else
    (and for the in-band fallback) every keyframe gets its piece's sets in-band.
    """

    def __init__(self, codec: str, record: bytes, params: TrackParams | None = None) -> None:
        self.codec = codec
        self.record = record
        self.fmt = SampleFormat.of(codec, record) if codec in NAL_CODECS and record else None
        self._params: dict[bytes, list[bytes]] = {}
        self._conformer = Conformer(params) if params is not None and params.conformant else None

    def packet_data(self, vp: VideoPacket) -> bytes:
        if self.fmt is None or vp.fmt is None:
            return vp.data
        if self._conformer is not None:
            return self._conformer.packet(vp.data, vp.fmt, vp.record, vp.piece)
        params = None
        if vp.is_keyframe:
            params = self._params.get(vp.record)
            if params is None:
                params = self._params[vp.record] = parameter_sets(self.codec, vp.record)
        return convert(vp.data, vp.fmt, self.fmt, params)


def _video_stream(
    out: av.container.OutputContainer,
    plan: Plan,
    sources: Mapping[int, SourceInfo],
    pieces: PieceSource,
    templates: list[av.container.InputContainer],
    container_format: str,
    params: TrackParams | None = None,
) -> tuple[av.VideoStream, _Track]:
    fmt = plan.out_format
    if container_format != "mp4":
        # VP9 in WebM carries no extradata; an encoder-backed stream gives the muxer the
        # codec parameters, and its own encoder is never fed.
        st = out.add_stream("libvpx-vp9", rate=_rate(plan))
        st.width, st.height = fmt.width, fmt.height
        st.pix_fmt = fmt.pix_fmt
        st.time_base = plan.out_time_base
        return st, _Track(fmt.codec, b"")
    template_src = next((sources[p.source] for p in plan.pieces if isinstance(p, CopyPiece)),
                        None)
    synthetic = template_src is None or template_src.video.format != fmt
    # Conformant: one record with every set of the export, each under its own id.
    planned = params.record if params is not None and params.conformant else None
    if not synthetic:
        assert template_src is not None
        # A camera's record heads the track, so its length size frames every packet.
        record = planned or template_src.video.record_of(0)
        inp = av.open(template_src.file.demux_input(), "r", metadata_errors="ignore",
                      options=template_src.file.demux_options)
    else:
        # No copied GOP to take a record from: every piece is ours, the first heads it.
        record = planned or read_header(pieces.encoded(0)).extradata
        inp = av.open(_template_file(fmt.codec, record, fmt.width, fmt.height, _rate(plan)),
                      "r", format="mp4")
    templates.append(inp)
    st = out.add_stream_from_template(inp.streams.video[0])
    if synthetic:
        # A camera's template carries its own display matrix and frame rate; ours has
        # neither (the muxer reads the rate for a timecode track).
        st.codec_context.framerate = _rate(plan).limit_denominator(1001)
        if fmt.rotation:
            st.set_display_rotation(fmt.rotation)
    st.codec_context.extradata = record
    st.time_base = plan.out_time_base
    st.codec_tag = _TAGS.get(fmt.codec, st.codec_tag or "")
    return st, _Track(fmt.codec, record, params)


def _rate(plan: Plan) -> Fraction:
    if plan.frame_count < 2:
        return Fraction(30)
    return 1 / (plan.frame_duration(0) * plan.out_time_base)


_QUIET = {"hevc": {"x265-params": "log-level=none"}}


def _template_file(codec: str, record: bytes, width: int, height: int,
                   rate: Fraction) -> io.BytesIO:
    """A one-sample in-memory MP4 whose stream carries ``record``: a template to copy from.

    Its one frame lasts 1/``rate``, so the template has the export's frame rate, which the
    muxer needs for a timecode track.
    """
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as tmp:
        # The stream's encoder is opened but never fed; x265 would still print its banner.
        st = tmp.add_stream(codec, options=_QUIET.get(codec, {}))
        assert isinstance(st, av.VideoStream)
        st.codec_context.extradata = record
        st.width, st.height = width, height
        frame = 1 / rate.limit_denominator(1001)
        st.time_base = frame
        pkt = av.Packet(b"\x00\x00\x00\x02\x09\xf0" if codec == "h264"
                        else b"\x00\x00\x00\x03\x46\x01\x10")
        pkt.stream = st
        pkt.time_base = frame
        pkt.pts = pkt.dts = 0
        pkt.duration = 1
        tmp.mux(pkt)
    buf.seek(0)
    return buf


def _audio_stream(out: av.container.OutputContainer, target: AudioTarget) -> av.AudioStream:
    st = out.add_stream(target.codec, rate=target.sample_rate)
    assert isinstance(st, av.AudioStream)
    st.layout = target.layout
    st.bit_rate = target.bit_rate
    st.time_base = Fraction(1, target.sample_rate)
    return st
