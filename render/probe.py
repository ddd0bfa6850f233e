"""Probe a source: codec parameters from FFmpeg, the video's sample index from the container.

The index of the one video track the export uses comes from MP4's ``moov`` (and the
``moof`` boxes of a fragmented file) or from Matroska's element headers: a read of a few
megabytes, or a walk over block headers, whatever the file size; a 15 GB camera file's media
data is never scanned, and no other track is read (so none can make the file fail). Sync
samples are then checked at the NAL level by reading the first bytes of each NAL unit
(SEI and parameter-set units whole: a few hundred bytes), because the container's sync flag
also marks H.264 non-IDR I-frames and HEVC CRAs, which need special handling, and because
the plan's one sample description needs every in-band parameter set.

Times stay on the file's own presentation clock (see render/plan.py).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Generator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
import numpy.typing as npt

from . import bitstream, mkvindex, mp4index, nal
from .errors import (
    CorruptMediaError,
    NotAVideoError,
    SourceNotFoundError,
    UnsupportedMediaError,
)
from .media import (
    NAL_CODECS,
    AudioTrackInfo,
    FrameIndex,
    SourceInfo,
    VideoFormat,
    VideoTrackInfo,
)
from .sourcefile import LocalFile, SourceFile, StoredFile, read_samples

_MP4_FORMATS = ("mov", "mp4", "m4a", "3gp", "3g2", "mj2")


def probe(source: Path | SourceFile) -> SourceInfo:
    """Probe a local file or an S3 object (a :class:`StoredFile` from ``stat``); raises the
    engine's MediaError subclasses (and ObjectStoreErrors) with a readable message."""
    if isinstance(source, StoredFile):
        file: SourceFile = source
    else:  # checked again: a folder or an unreadable file is refused here, by name
        file = _local(source.path if isinstance(source, LocalFile) else source)
    if file.size == 0:
        raise NotAVideoError(f"source file {file.name!r} is empty")
    stream = file.demux_input()
    try:
        container = _open(file, stream, file.demux_options)
        if file.demux_options and _pixel_format_unknown(container):
            # A short probe that met no video packet (audio first): probe in full.
            container.close()
            if not isinstance(stream, str):
                stream.seek(0)
            container = _open(file, stream, {})
        try:
            return _probe_open(file, container)
        finally:
            container.close()
    finally:
        if not isinstance(stream, str):
            stream.close()


def _open(file: SourceFile, stream: str | BinaryIO, options: dict[str, str]
          ) -> av.container.InputContainer:
    try:
        return av.open(stream, "r", metadata_errors="ignore", options=options)
    except av.error.InvalidDataError as exc:
        raise _open_error(file) from exc
    except av.error.FFmpegError as exc:
        raise CorruptMediaError(f"source file {file.name!r} cannot be opened: {exc}") from exc


def _pixel_format_unknown(container: av.container.InputContainer) -> bool:
    """Whether a video stream the export could use came out of the probe without its
    pixel format (cover art does not count)."""
    return any(s.codec_context.format is None for s in container.streams.video
               if not s.disposition & av.stream.Disposition.attached_pic)


def _local(path: Path) -> LocalFile:
    name = path.name
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise SourceNotFoundError(f"source file {name!r} does not exist") from exc
    except OSError as exc:
        raise SourceNotFoundError(f"source file {name!r} cannot be read: {exc.strerror}") from exc
    if not path.is_file():
        raise SourceNotFoundError(f"source {name!r} is not a regular file")
    if not os.access(path, os.R_OK):
        raise SourceNotFoundError(f"source file {name!r} is not readable")
    return LocalFile(path, st.st_size)


def _open_error(file: SourceFile) -> Exception:
    with file.open() as fh:
        head = fh.read(12)
    if head[4:8] in (b"ftyp", b"mdat", b"moov", b"free", b"wide", b"skip"):
        return CorruptMediaError(
            f"source file {file.name!r} is damaged or truncated (no readable index); "
            "was the recording stopped before the file was finished?"
        )
    return NotAVideoError(f"source file {file.name!r} is not a video file")


def _probe_open(file: SourceFile, container: av.container.InputContainer) -> SourceInfo:
    name = file.name
    vstreams = [s for s in container.streams.video
                if not (s.disposition & av.stream.Disposition.attached_pic)]
    if not vstreams:
        raise NotAVideoError(f"source file {name!r} has no video stream")
    vs = vstreams[0]
    fmt_name = container.format.name
    formats = fmt_name.split(",")
    matroska = "matroska" in formats or "webm" in formats
    if not matroska and not any(f in formats for f in _MP4_FORMATS):
        raise UnsupportedMediaError(
            f"source file {name!r} is a {fmt_name} file; MP4, MOV, MKV and WebM sources "
            "are supported (remux it to MP4 without re-encoding first)"
        )
    cc = vs.codec_context
    codec = cc.name
    track = _mkv_video_table(file, vs) if matroska else _mp4_video_table(file, vs)
    if track is None or track.sample_count == 0:
        raise CorruptMediaError(f"source file {name!r} has a video track with no frames")
    _check_extent(file, track)
    length_size = 4
    if codec in NAL_CODECS:
        length_size = _length_size(codec, bytes(cc.extradata or b""), name)
    access = _random_access_points(file, codec, track, length_size)
    # The file's own presentation clock, as FFmpeg, ffprobe, a browser's <video> and the
    # editor's playhead read it: the first shown frame may sit after 0 (B-frame delay
    # without an edit list, an empty edit). Samples an edit list hides stay in the index
    # as decode references, with times before the first shown frame.
    index = FrameIndex(
        time_base=Fraction(1, track.timescale),
        pts=track.pts.astype(np.int64),
        duration=track.duration.astype(np.int64),
        rap=access.rap,
        size=track.size.astype(np.int64),
        shown=_shown_range(track, name),
        decode_start=access.start,
    )
    pix_fmt = cc.format.name if cc.format is not None else "unknown"
    vformat = VideoFormat(codec, cc.width, cc.height, pix_fmt,
                          _rotation(track.display_matrix, name))
    sar = cc.sample_aspect_ratio
    video = VideoTrackInfo(
        index=index,
        format=vformat,
        offset=track.offset.astype(np.int64),
        extradata=bytes(cc.extradata or b""),
        nal_length_size=length_size,
        profile=cc.profile,
        bit_rate=int(cc.bit_rate or vs.bit_rate or _mean_bitrate(track)),
        sample_aspect_ratio=Fraction(sar) if sar else None,
        color_primaries=int(cc.color_primaries),
        color_trc=int(cc.color_trc),
        colorspace=int(cc.colorspace),
        color_range=int(cc.color_range),
        stream_index=vs.index,
        records=tuple(e.config or b"" for e in track.sample_entries),
        stsd=np.asarray(track.stsd_index, dtype=np.int64),
        inband=access.inband,
    )
    audio = _probe_audio(container)
    timecode = vs.metadata.get("timecode") or container.metadata.get("timecode")
    return SourceInfo(file=file, container=fmt_name, video=video, audio=audio,
                      timecode=timecode or None)


def _rotation(matrix: tuple[int, ...] | None, name: str) -> int:
    """Counter-clockwise quarter turns of a display matrix, as FFmpeg reads it.

    av_display_rotation_get(): the angle of the matrix's first column, negated. Scaling is
    ignored; a mirrored picture (negative determinant) is refused rather than shown turned.
    """
    if matrix is None:
        return 0
    a, b, c, d = (v / 65536 for v in (matrix[0], matrix[1], matrix[3], matrix[4]))
    if math.hypot(a, c) == 0 or math.hypot(b, d) == 0:
        return 0
    if a * d - b * c < 0:
        raise UnsupportedMediaError(
            f"source file {name!r} is displayed mirrored (its display matrix flips the "
            "picture); mirrored sources are not supported")
    angle = -math.degrees(math.atan2(b / math.hypot(b, d), a / math.hypot(a, c)))
    turns = round(angle / 90)
    if abs(angle - 90 * turns) > 1:
        raise UnsupportedMediaError(
            f"source file {name!r} is displayed rotated by {angle:.1f}°; only quarter turns "
            "are supported")
    return (90 * turns) % 360


def _shown_range(track: mp4index.TrackTable, name: str) -> tuple[int, int]:
    """Display range of the frames the edit list presents (all frames without one)."""
    order = np.argsort(np.asarray(track.pts), kind="stable")
    shown = np.flatnonzero(~np.asarray(track.discard, dtype=bool)[order])
    if shown.size == 0:
        return 0, 0
    if int(shown[-1]) + 1 - int(shown[0]) != shown.size:
        # Only the ends can be hidden by an edit list; holes come from overlapping
        # fragments, whose hidden frames would share times with shown ones.
        raise UnsupportedMediaError(
            f"source file {name!r} has hidden video frames between shown ones "
            "(overlapping fragments); remux it to a regular MP4 first")
    return int(shown[0]), int(shown[-1]) + 1


def _mp4_video_table(file: SourceFile, vs: av.VideoStream) -> mp4index.TrackTable | None:
    """The index of the stream's own track; no other track is read, so none can fail it."""
    try:
        try:
            return mp4index.read_video_table(file, vs.id)
        except mp4index.Mp4IndexError as first_error:
            # Stream ids are track ids in FFmpeg's mov demuxer; only when that track is
            # not there (or not video) is the first video track the one FFmpeg decodes.
            text = str(first_error)
            if f"no track {vs.id}" not in text and "not video" not in text:
                raise
            return mp4index.read_video_table(file)
    except mp4index.Mp4IndexError as exc:
        text = str(exc)
        if "edit" in text:
            raise UnsupportedMediaError(
                f"source file {file.name!r} uses an edit list the engine does not support: {text}"
            ) from exc
        raise CorruptMediaError(f"source file {file.name!r} is damaged: {text}") from exc


def _mkv_video_table(file: SourceFile, vs: av.VideoStream) -> mp4index.TrackTable | None:
    """Matroska (OBS's default): the n-th video track in TrackEntry order is FFmpeg's."""
    nth = list(vs.container.streams.video).index(vs)
    seen: list[int] = []

    def wanted(_number: int, handler: str) -> bool:
        if handler != "vide":
            return False
        seen.append(0)
        return len(seen) == nth + 1

    try:
        tables = mkvindex.read_mkv_tables(file, select=wanted)
    except mkvindex.MkvIndexError as exc:
        raise CorruptMediaError(f"source file {file.name!r} cannot be indexed: {exc}") from exc
    return tables[0] if tables else None


def _check_extent(file: SourceFile, track: mp4index.TrackTable) -> None:
    """A recording cut short keeps its index but loses sample data: refuse it up front."""
    end = int(np.max(track.offset + track.size)) if track.sample_count else 0
    if end > file.size:
        missing = end - file.size
        raise CorruptMediaError(
            f"source file {file.name!r} is truncated: its index points {missing} bytes past "
            "the end of the file"
        )


def _length_size(codec: str, extradata: bytes, name: str) -> int:
    try:
        if codec == "h264":
            return nal.parse_avcc(extradata).length_size
        return nal.parse_hvcc(extradata).length_size
    except (ValueError, IndexError) as exc:
        raise UnsupportedMediaError(
            f"source file {name!r} stores {codec} without an avcC/hvcC configuration "
            "(Annex-B in MP4 is not supported)"
        ) from exc


@dataclass(frozen=True)
class _Access:
    rap: np.ndarray  # a copy may start here
    start: np.ndarray | None  # decoding may start here (None: where a copy may)
    inband: dict[int, tuple[bytes, ...]] | None  # parameter sets ahead of each RAP's slices


def _random_access_points(
    file: SourceFile, codec: str, track: mp4index.TrackTable, length_size: int
) -> _Access:
    """Where copies and decoding may start, and the in-band parameter sets there.

    Only the container's sync samples are inspected, reading a few bytes of each NAL unit
    (SEI and parameter-set units whole, which are small): an H.264 I-frame with a recovery
    point SEI (an open-GOP camera) is where decoding can start without going back to the
    last IDR, though a copy cannot; the sets are what the plan's one sample description
    needs (render/bitstream.py), collected here, near the data.
    """
    sync = np.asarray(track.sync, dtype=bool).copy()
    if codec not in NAL_CODECS:
        return _Access(sync, None, None)
    rap = np.zeros_like(sync)
    start = np.zeros_like(sync)
    inband: dict[int, tuple[bytes, ...]] = {}
    shared: dict[tuple[bytes, ...], tuple[bytes, ...]] = {}  # cameras repeat the same sets
    keys = np.flatnonzero(sync)
    with file.open() as fh, contextlib.closing(_sample_heads(file, track, keys)) as heads:
        for i, head in zip(keys, heads, strict=True):
            view = _Prefixed(fh, int(track.offset[i]), head)
            nals = _sample_nals(view, int(track.offset[i]), int(track.size[i]), length_size, codec)
            types = [t for t, _ in nals]
            rap[i] = _is_rap(codec, types)
            start[i] = rap[i] or (codec == "h264" and _is_recovery_point(nals))
            units = tuple(b for t, b in nals if t in bitstream.INBAND_TYPES[codec])
            if rap[i] and units:
                inband[int(i)] = shared.setdefault(units, units)
    return _Access(rap, start, inband)


#: Bytes of each sync sample fetched up front when the file is in a bucket: what comes
#: before the first slice (delimiter, parameter sets, SEI) fits in it on every camera seen.
_HEAD_BYTES = 4096
#: ... with this many GETs in flight (one per sync sample: they lie a GOP apart).
_HEAD_GETS_IN_FLIGHT = 16


def _sample_heads(file: SourceFile, track: mp4index.TrackTable, keys: npt.NDArray[np.intp]
                  ) -> Generator[bytes, None, None]:
    """The first ``_HEAD_BYTES`` of each sample in ``keys`` from a bucket, several GETs at
    once; nothing from a disk (its page cache serves the scan's small reads as they come)."""
    if not isinstance(file, StoredFile):
        for _ in keys:
            yield b""
        return
    spans = ((int(track.offset[i]), min(int(track.size[i]), _HEAD_BYTES)) for i in keys)
    yield from read_samples(file, spans, in_flight=_HEAD_GETS_IN_FLIGHT, stats=file.stats)


class _Prefixed(io.RawIOBase, BinaryIO):
    """A file whose bytes from ``offset`` on start with ``head`` (already fetched): reads
    inside it cost nothing, others go to ``fh``. Without it, each sync sample's few hundred
    bytes would cost a 64 KiB page of a ranged reader, one GET after another."""

    def __init__(self, fh: BinaryIO, offset: int, head: bytes) -> None:
        super().__init__()
        self._fh, self._offset, self._head, self._pos = fh, offset, head, 0

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = io.SEEK_SET, /) -> int:
        if whence != io.SEEK_SET:
            raise io.UnsupportedOperation("only absolute seeks")
        self._pos = pos
        return pos

    def read(self, n: int | None = -1, /) -> bytes:
        assert n is not None and n >= 0
        lo = self._pos - self._offset
        if lo >= 0 and lo + n <= len(self._head):
            data = self._head[lo:lo + n]
        else:
            self._fh.seek(self._pos)
            data = self._fh.read(n)
        self._pos += len(data)
        return data


#: Bytes read of a non-SEI NAL unit: its header and the first fields of a slice header.
_NAL_HEAD = 16
_MAX_SEI = 4096
_MAX_SET = 65536


def _sample_nals(fh: BinaryIO, offset: int, size: int, length_size: int,
                 codec: str) -> list[tuple[int, bytes]]:
    """(type, leading bytes) of each NAL unit of one sample, up to the first slice.

    SEI and parameter-set units are read whole (up to 4 KiB / 64 KiB), the others only as
    far as a slice header's first fields.
    """
    found: list[tuple[int, bytes]] = []
    pos = 0
    while pos + length_size < size:
        fh.seek(offset + pos)
        head = fh.read(length_size + _NAL_HEAD)
        if len(head) < length_size + 1:
            break
        nal_len = int.from_bytes(head[:length_size], "big")
        if nal_len == 0:
            break  # padding or damage: nothing after it is a unit of this sample
        body = head[length_size:length_size + nal_len]
        kind = nal.nal_type_h264(body) if codec == "h264" else nal.nal_type_hevc(body)
        whole = (_MAX_SEI if codec == "h264" and kind == nal.H264_SEI
                 else _MAX_SET if kind in bitstream.INBAND_TYPES[codec] else 0)
        if whole and nal_len > len(body):
            fh.seek(offset + pos + length_size)
            body = fh.read(min(nal_len, whole))
        found.append((kind, body))
        if (codec == "h264" and 1 <= kind <= 5) or (codec == "hevc" and kind < 32):
            break  # the first slice: nothing after it matters here
        pos += length_size + nal_len
        if len(found) > 64:
            break
    return found


def _is_rap(codec: str, types: list[int]) -> bool:
    if codec == "h264":
        return 5 in types
    return any(16 <= t <= 21 for t in types)


def _is_recovery_point(nals: list[tuple[int, bytes]]) -> bool:
    """An intra picture whose recovery point SEI says every later frame decodes exactly."""
    kind = nal.classify_sample("h264", b"".join(len(b).to_bytes(4, "big") + b for _, b in nals), 4)
    return kind.intra is True and kind.recovery_frame_cnt == 0


def _mean_bitrate(track: mp4index.TrackTable) -> int:
    span = int(np.max(track.pts + track.duration) - np.min(track.pts))
    if span <= 0:
        return 0
    return int(int(np.sum(track.size)) * 8 * track.timescale / span)


def _probe_audio(container: av.container.InputContainer) -> AudioTrackInfo | None:
    if not container.streams.audio:
        return None
    st = container.streams.audio[0]
    cc = st.codec_context
    start = Fraction(0)
    if st.start_time is not None and st.time_base is not None:
        start = st.start_time * Fraction(st.time_base)
    return AudioTrackInfo(
        codec=cc.name,
        sample_rate=int(cc.sample_rate),
        channels=int(cc.channels),
        layout=cc.layout.name,
        start=start,
        stream_index=st.index,
        bit_rate=int(cc.bit_rate or st.bit_rate or 0),
    )
