"""Sample index of Matroska/WebM files, read from element headers only.

Why this module exists
----------------------
OBS records to Matroska by default.  The engine plans frame-exact cuts from a
per-sample index of the video track (decode order: pts, duration, byte range,
sync flag) and copies samples' bytes straight from the file, the way
:mod:`render.mp4index` provides it for MP4.  Matroska has no sample table: the
only complete index is the sequence of blocks itself (Cues list key frames at
best).  So this module walks the EBML element headers of the whole file --
EBML header, Segment, Info, Tracks, and in each Cluster its Timestamp and the
few header bytes of every SimpleBlock/BlockGroup (track number, 16-bit
relative timestamp, flags, lace sizes) -- and seeks over every frame payload.

Reading
-------
Headers are parsed from an in-memory window filled by large reads, not from a
syscall per field.  The window adapts: after seeking over a payload it reads
4 KiB (enough for the next few small audio blocks and the next video block
header); while consecutive elements keep running off its end (dense small
blocks) each refill doubles, up to 1 MiB.  An hour of 1080p video
(~110k video blocks, ~170k audio blocks) costs roughly one small read per
video frame, a small fraction of the file's bytes.  SeekHead, Cues, Tags,
Chapters, Attachments, Void and CRC-32 elements are skipped by their size:
a linear walk over the Segment finds everything they point to.

What FFmpeg's matroska demuxer does, and so does this index
-----------------------------------------------------------
Everything downstream speaks in the timestamps PyAV reports, so the tables
reproduce libavformat/matroskadec.c plus libavformat's generic timestamp
fix-ups, checked packet by packet against PyAV in the tests:

* the time base is TimestampScale / 1e9 s, so ``timescale`` = 1e9 /
  TimestampScale ticks per second (1000 for the default 1 ms);
* pts = cluster Timestamp + block relative timestamp - CodecDelay (the
  latter in ticks, rounded to nearest: 21 for AAC's 1024 priming samples and
  7 for Opus' 6.5 ms pre-skip, hence audio starting at -21 or -7);
* duration: BlockDuration when present and non-zero, else DefaultDuration *
  laces / TimestampScale (truncated), split over the laces of a block as
  ``d*(k+1)//n - d*k//n``; each lace's pts advances by the durations of the
  laces before it;
* sync: the SimpleBlock key frame flag, or for a Block in a BlockGroup, the
  absence of ReferenceBlock.  FFmpeg flags only the first lace of a laced
  block, then libavformat flags every packet of intra-only (audio) codecs; the
  table gives every lace its block's flag.  For H.264, FFmpeg 8 takes
  ``packet.is_keyframe`` from its bitstream parser (IDR or recovery point SEI)
  instead, exactly as for MP4 (see :mod:`render.mp4index`);
* dts: the matroska demuxer sets only pts.  libavformat derives dts from pts
  through a reorder buffer as deep as the decoder's ``has_b_frames``: dts[i]
  is the smallest of the last ``has_b_frames + 1`` pts once that buffer is
  full.  ``has_b_frames`` is read here from the SPS in CodecPrivate, as
  FFmpeg's decoders set it: H.264 ``max_num_reorder_frames`` (VUI bitstream
  restriction), HEVC ``sps_max_num_reorder_pics``.  An H.264 SPS without that
  field makes FFmpeg grow the buffer as it sees frames out of order; the
  table then uses the smallest depth the pts order needs.  Other codecs are
  not reordered in Matroska practice (VP8/VP9/AV1 store pts in decode order)
  and get the same smallest depth (0: dts = pts), as do all audio tracks.

Where this table deliberately differs from PyAV
-----------------------------------------------
* The first ``has_b_frames`` packets of a reordered stream have *no* dts in
  FFmpeg (``packet.dts is None``).  The table extrapolates them backwards from
  the first known dts by one frame duration (DefaultDuration, else the
  smallest pts step), so dts stays strictly increasing and <= pts, like the
  MP4 tables' negative leading dts: -66, -33, 0, ... at 1 ms ticks.
* Blocks without any stored duration: FFmpeg reports 0 and libavformat fills
  in a duration from the codec -- 1024 samples for AAC and the payload size
  for PCM, which the table reproduces from the Audio element; the frame rate
  it estimated for video; or the packet's own bytes (Opus TOC), which the
  table cannot see (for Opus it uses the typical block spacing: encoders keep
  one frame size).  FFmpeg may also leave the very first audio packet at 0,
  read before its decoder reported the frame size; the table does not.
  Otherwise the table uses the distance to the next pts:
  in display order for video, in decode order for other tracks (the last
  block repeats its predecessor's).  A laced block without any duration is
  split evenly over that distance (FFmpeg gives such laces no pts at all).
* FFmpeg rewrites the payload of a few exotic codecs (ProRes, WavPack,
  RealAudio); offset/size here are always the bytes stored in the block.

Not supported (raises :class:`MkvIndexError`, for the selected tracks only):
ContentEncoding (header stripping, zlib, encryption: the stored bytes are not
the frame), TrackTimestampScale other than 1, a TimestampScale that does not
divide one second, blocks before time 0 or in a cluster without Timestamp,
and anything that is not Matroska/WebM.  Only the first Segment is read.

Truncated files (a recording that crashed) are indexed, not refused: every
block that lies completely inside the file is indexed and the walk stops at
the first element cut short, as FFmpeg stops returning packets there.  It
also stops where an element header should start but zeros follow, the
zero-filled tail a crash can leave behind; a block running into such a tail
counts as complete, zeros and all, as it does for FFmpeg.  Unknown-size
Segments and Clusters (live writers, OBS files whose sizes were never
patched) end where the file ends or where an element of a higher level
starts.
"""

from __future__ import annotations

import heapq
import struct
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from . import nal
from .mp4index import SampleEntry, TrackTable, read_only, read_only_bool
from .sourcefile import SourceFile, as_source_file

__all__ = ["MkvIndexError", "read_mkv_tables"]

I64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


class MkvIndexError(Exception):
    """The file cannot be indexed from its element headers; demux it instead."""


# --------------------------------------------------------------------------
# element IDs (with their length marker, as written in the file)

_EBML = 0x1A45DFA3
_DOCTYPE = 0x4282
_SEGMENT = 0x18538067
_SEEKHEAD = 0x114D9B74
_INFO = 0x1549A966
_TIMESTAMP_SCALE = 0x2AD7B1
_TRACKS = 0x1654AE6B
_CLUSTER = 0x1F43B675
_CUES = 0x1C53BB6B
_TAGS = 0x1254C367
_CHAPTERS = 0x1043A770
_ATTACHMENTS = 0x1941A469
_VOID = 0xEC
_CRC32 = 0xBF

_TRACK_ENTRY = 0xAE
_TRACK_NUMBER = 0xD7
_TRACK_TYPE = 0x83
_CODEC_ID = 0x86
_CODEC_PRIVATE = 0x63A2
_DEFAULT_DURATION = 0x23E383
_CODEC_DELAY = 0x56AA
_TRACK_TIMESTAMP_SCALE = 0x23314F
_CONTENT_ENCODINGS = 0x6D80
_CONTENT_ENCODING = 0x6240
_CONTENT_COMPRESSION = 0x5034
_CONTENT_COMP_ALGO = 0x4254
_CONTENT_ENCRYPTION = 0x5035
_VIDEO = 0xE0
_PIXEL_WIDTH = 0xB0
_PIXEL_HEIGHT = 0xBA
_AUDIO = 0xE1
_SAMPLING_FREQUENCY = 0xB5
_OUTPUT_SAMPLING_FREQUENCY = 0x78B5
_CHANNELS = 0x9F
_BIT_DEPTH = 0x6264

_CLUSTER_TIMESTAMP = 0xE7
_SIMPLE_BLOCK = 0xA3
_BLOCK_GROUP = 0xA0
_BLOCK = 0xA1
_BLOCK_DURATION = 0x9B
_REFERENCE_BLOCK = 0xFB

# An element of unknown size ends where one of these starts: they can only be
# its siblings or belong further up the tree.
_LEVEL1 = frozenset(
    {_SEEKHEAD, _INFO, _TRACKS, _CLUSTER, _CUES, _TAGS, _CHAPTERS, _ATTACHMENTS}
)
_ABOVE_CLUSTER_CHILDREN = _LEVEL1 | {_SEGMENT, _EBML}

_DOCTYPES = ("matroska", "webm")
_HANDLERS = {1: "vide", 2: "soun", 3: "cmpx", 0x10: "logo", 0x11: "subt", 0x12: "bttn",
             0x20: "ctrl", 0x21: "meta"}
_FOURCCS = {"V_MPEG4/ISO/AVC": "avc1", "V_MPEGH/ISO/HEVC": "hvc1"}
_CONFIG_TYPES = {"avc1": "avcC", "hvc1": "hvcC", "V_AV1": "av1C"}
_PCM_CODECS = frozenset({"A_PCM/INT/LIT", "A_PCM/INT/BIG", "A_PCM/FLOAT/IEEE"})
_AAC_FRAME = 1024  # samples per AAC frame, FFmpeg's frame_size for AAC-LC
_NS = 1_000_000_000
# Info and Tracks are read whole; a few MB is already absurd for them.
_MAX_HEADER_ELEMENT = 64 << 20
_MIN_READ = 4 << 10
_MAX_READ = 1 << 20
# Enough for any element header (4-byte ID + 8-byte size) plus a block header
# (8-byte track number + timestamp + flags + lace count).
_HEAD = 32
_MAX_REORDER = 16  # libavformat's MAX_REORDER_DELAY


# --------------------------------------------------------------------------
# reading


class _Window:
    """Reads the file in adaptive chunks; headers are parsed from ``buf``."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f = f
        self.size = size
        self.buf = b""
        self.start = 0
        self.read_size = _MIN_READ

    def at(self, pos: int, need: int) -> tuple[bytes, int]:
        """(buffer, index of ``pos`` in it) with ``need`` bytes from pos, fewer only at EOF."""
        i = pos - self.start
        if i >= 0 and i + need <= len(self.buf):
            return self.buf, i
        # Still walking small elements (or a header straddles the end): read
        # more at once.  Jumped over a payload: the next headers are probably
        # just as sparse, so read little.
        if 0 <= i <= len(self.buf):
            self.read_size = min(self.read_size * 2, _MAX_READ)
        else:
            self.read_size = _MIN_READ
        self.f.seek(pos)
        self.buf = self.f.read(max(need, self.read_size))
        self.start = pos
        return self.buf, 0

    def bytes_at(self, pos: int, n: int) -> bytes:
        buf, i = self.at(pos, n)
        return buf[i : i + n]


def _header(buf: bytes, i: int) -> tuple[int, int, int] | None:
    """(id, size, header length) of the element at ``buf[i]``; size -1 = unknown.

    None if ``buf`` ends first.  Raises ValueError for bytes that are no
    element header.
    """
    end = len(buf)
    if i >= end:
        return None
    b = buf[i]
    if b < 0x10:
        raise ValueError(f"invalid element ID byte 0x{b:02X}")
    n = 9 - b.bit_length()  # 1..4
    if i + n >= end:
        return None
    eid = b if n == 1 else int.from_bytes(buf[i : i + n], "big")
    s = buf[i + n]
    # This runs once per block of an hour-long file: 1-byte sizes without slicing.
    if s >= 0x80:
        return eid, (-1 if s == 0xFF else s & 0x7F), n + 1
    if s == 0:
        raise ValueError("invalid element size (more than 8 bytes)")
    m = 9 - s.bit_length()
    if i + n + m > end:
        return None
    mask = (1 << (7 * m)) - 1
    size = int.from_bytes(buf[i + n : i + n + m], "big") & mask
    return eid, (-1 if size == mask else size), n + m


def _uint(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


def _float(raw: bytes) -> float:
    if len(raw) == 4:
        return float(struct.unpack(">f", raw)[0])
    if len(raw) == 8:
        return float(struct.unpack(">d", raw)[0])
    if not raw:
        return 0.0
    raise MkvIndexError(f"float element of {len(raw)} bytes")


def _children(data: bytes, where: str) -> list[tuple[int, bytes]]:
    """(id, payload) of the elements in an in-memory master element."""
    out: list[tuple[int, bytes]] = []
    i = 0
    while i < len(data):
        try:
            head = _header(data, i)
        except ValueError as exc:
            raise MkvIndexError(f"corrupt {where}: {exc}") from None
        if head is None:
            raise MkvIndexError(f"corrupt {where}: truncated element header")
        eid, size, hlen = head
        if size < 0 or i + hlen + size > len(data):
            raise MkvIndexError(f"corrupt {where}: element 0x{eid:X} overruns its parent")
        out.append((eid, data[i + hlen : i + hlen + size]))
        i += hlen + size
    return out


# --------------------------------------------------------------------------
# track headers


@dataclass
class _Track:
    number: int = 0
    kind: int = 0
    codec_id: str = ""
    codec_private: bytes | None = None
    default_duration: int = 0  # ns
    codec_delay: int = 0  # ns
    track_timescale: float = 1.0
    encodings: list[str] = field(default_factory=list)
    width: int = 0
    height: int = 0
    sample_rate: float = 8000.0
    output_sample_rate: float = 0.0
    channels: int = 1
    bit_depth: int = 0

    @property
    def handler(self) -> str:
        return _HANDLERS.get(self.kind, f"t{self.kind:03d}")


def _parse_track(data: bytes) -> _Track:
    t = _Track()
    for eid, raw in _children(data, "TrackEntry"):
        if eid == _TRACK_NUMBER:
            t.number = _uint(raw)
        elif eid == _TRACK_TYPE:
            t.kind = _uint(raw)
        elif eid == _CODEC_ID:
            t.codec_id = raw.rstrip(b"\0").decode("ascii", "replace")
        elif eid == _CODEC_PRIVATE:
            t.codec_private = raw
        elif eid == _DEFAULT_DURATION:
            t.default_duration = _uint(raw)
        elif eid == _CODEC_DELAY:
            t.codec_delay = _uint(raw)
        elif eid == _TRACK_TIMESTAMP_SCALE:
            t.track_timescale = _float(raw)
        elif eid == _CONTENT_ENCODINGS:
            t.encodings = _parse_encodings(raw)
        elif eid == _VIDEO:
            _parse_video(t, raw)
        elif eid == _AUDIO:
            _parse_audio(t, raw)
    return t


def _parse_video(t: _Track, data: bytes) -> None:
    for eid, raw in _children(data, "Video"):
        if eid == _PIXEL_WIDTH:
            t.width = _uint(raw)
        elif eid == _PIXEL_HEIGHT:
            t.height = _uint(raw)


def _parse_audio(t: _Track, data: bytes) -> None:
    for eid, raw in _children(data, "Audio"):
        if eid == _SAMPLING_FREQUENCY:
            t.sample_rate = _float(raw)
        elif eid == _OUTPUT_SAMPLING_FREQUENCY:
            t.output_sample_rate = _float(raw)
        elif eid == _CHANNELS:
            t.channels = _uint(raw)
        elif eid == _BIT_DEPTH:
            t.bit_depth = _uint(raw)


def _parse_encodings(data: bytes) -> list[str]:
    """A description of each ContentEncoding, for the error message."""
    out = []
    for eid, raw in _children(data, "ContentEncodings"):
        if eid != _CONTENT_ENCODING:
            continue
        kinds = []
        for sub, body in _children(raw, "ContentEncoding"):
            if sub == _CONTENT_COMPRESSION:
                algo = next((_uint(v) for i, v in _children(body, "ContentCompression")
                             if i == _CONTENT_COMP_ALGO), 0)
                kinds.append({0: "zlib compression", 1: "bzlib compression",
                              2: "lzo compression", 3: "header stripping"}.get(
                                  algo, f"compression algorithm {algo}"))
            elif sub == _CONTENT_ENCRYPTION:
                kinds.append("encryption")
        out.append(" + ".join(kinds) or "an unknown content encoding")
    return out


def _parse_tracks(data: bytes) -> list[_Track]:
    return [_parse_track(raw) for eid, raw in _children(data, "Tracks") if eid == _TRACK_ENTRY]


def _parse_info(data: bytes) -> int:
    """TimestampScale in ns (default 1 ms)."""
    for eid, raw in _children(data, "Info"):
        if eid == _TIMESTAMP_SCALE:
            return _uint(raw)
    return 1_000_000


# --------------------------------------------------------------------------
# walking the file

# Columns of the block rows collected while walking (one row per lace).
_COLS = 9
(_C_TRACK, _C_CLUSTER, _C_REL, _C_KEY, _C_OFFSET, _C_SIZE, _C_DURATION, _C_LACE,
 _C_LACES) = range(_COLS)


@dataclass
class _Scan:
    doctype: str = ""
    timestamp_scale: int = 1_000_000
    tracks: list[_Track] | None = None
    # 8 bytes a value, not a Python int object each: hours of blocks stay small
    rows: array[int] = field(default_factory=lambda: array("q"))
    truncated: bool = False


def _scan(w: _Window) -> _Scan:
    scan = _Scan()
    pos = _read_ebml_header(w, scan)
    seg_start, seg_end = _find_segment(w, pos)
    pos = seg_start
    while pos < seg_end:
        buf, i = w.at(pos, _HEAD)
        head = _element(buf, i, pos, "Segment")
        if head is None:
            scan.truncated = True
            break
        eid, size, hlen = head
        data = pos + hlen
        if eid in (_SEGMENT, _EBML):
            break  # a chained second segment: FFmpeg reads only the first
        if eid == _CLUSTER:
            end = w.size if size < 0 else data + size
            pos, complete = _scan_cluster(w, data, min(end, seg_end), size < 0, scan.rows)
            if not complete:
                scan.truncated = True
                break
            continue
        if size < 0:
            raise MkvIndexError(f"element 0x{eid:X} at offset {pos} has unknown size")
        if data + size > w.size:
            scan.truncated = True
            break
        if eid in (_INFO, _TRACKS):
            _read_header_element(w, scan, eid, data, size)
        pos = data + size
    if scan.tracks is None:
        raise MkvIndexError(
            "no Tracks element"
            + (" before the file ends (truncated)" if scan.truncated else "")
        )
    return scan


def _read_header_element(
    w: _Window, scan: _Scan, eid: int, pos: int, size: int
) -> None:
    """Parse Info or Tracks (read whole: they are small)."""
    if size > _MAX_HEADER_ELEMENT:
        raise MkvIndexError(f"implausible size {size} of element 0x{eid:X}")
    body = w.bytes_at(pos, size)
    if eid == _INFO:
        scan.timestamp_scale = _parse_info(body)
    elif scan.tracks is None:
        scan.tracks = _parse_tracks(body)


def _element(buf: bytes, i: int, pos: int, parent: str) -> tuple[int, int, int] | None:
    """Header of the element at file offset ``pos``; None where the recorded data ends."""
    try:
        return _header(buf, i)
    except ValueError as exc:
        if buf[i] == 0 or not any(buf[i + 1 : i + 16]):
            return None  # zeros where data should be: the tail of a crashed recording
        raise MkvIndexError(f"corrupt element header at offset {pos} in {parent}: {exc}") from None


def _read_ebml_header(w: _Window, scan: _Scan) -> int:
    buf, _ = w.at(0, _HEAD)
    if len(buf) < 4 or _uint(buf[:4]) != _EBML:
        raise MkvIndexError(
            f"not a Matroska/WebM file: it starts with {buf[:8]!r}, not an EBML header"
        )
    head = _header(buf, 0)
    if head is None or head[1] < 0 or head[2] + head[1] > w.size:
        raise MkvIndexError("truncated EBML header")
    _, size, hlen = head
    if size > _MAX_HEADER_ELEMENT:
        raise MkvIndexError(f"implausible EBML header size {size}")
    body = w.bytes_at(hlen, size)
    fields = dict(_children(body, "EBML header"))
    scan.doctype = fields.get(_DOCTYPE, b"").rstrip(b"\0").decode("ascii", "replace")
    if scan.doctype not in _DOCTYPES:
        raise MkvIndexError(
            f"an EBML file of DocType {scan.doctype!r}, not Matroska or WebM"
        )
    return hlen + size


def _find_segment(w: _Window, pos: int) -> tuple[int, int]:
    """(payload start, payload end) of the first Segment."""
    while True:
        buf, i = w.at(pos, _HEAD)
        try:
            head = _header(buf, i)
        except ValueError as exc:
            raise MkvIndexError(f"corrupt element after the EBML header: {exc}") from None
        if head is None:
            raise MkvIndexError(f"no Segment element (the file ends at offset {w.size})")
        eid, size, hlen = head
        if eid == _SEGMENT:
            end = w.size if size < 0 else min(pos + hlen + size, w.size)
            return pos + hlen, end
        if eid not in (_VOID, _CRC32) or size < 0:
            raise MkvIndexError(f"expected a Segment at offset {pos}, found 0x{eid:X}")
        pos += hlen + size


def _scan_cluster(
    w: _Window, pos: int, end: int, unknown: bool, rows: array[int]
) -> tuple[int, bool]:
    """Collect the blocks of a cluster's payload [pos, end).

    Returns (where the next element starts, False if the file ends inside).
    """
    timestamp = -1
    file_size = w.size
    while pos < end:
        buf, i = w.buf, pos - w.start
        if i < 0 or i + _HEAD > len(buf):  # inlined w.at(): once per block
            buf, i = w.at(pos, _HEAD)
        head = _element(buf, i, pos, "a Cluster")
        if head is None:
            return pos, False
        eid, size, hlen = head
        if unknown and eid in _ABOVE_CLUSTER_CHILDREN:
            return pos, True
        if size < 0:
            raise MkvIndexError(
                f"element 0x{eid:X} of unknown size inside a Cluster (offset {pos})"
            )
        data = pos + hlen
        stop = data + size
        if stop > file_size:
            return pos, False  # cut short: the recording ends inside this element
        if eid == _SIMPLE_BLOCK:
            _add_block(w, buf, i + hlen, data, size, timestamp, -1, -1, rows)
        elif eid == _BLOCK_GROUP:
            _add_block_group(w, data, stop, timestamp, rows)
        elif eid == _CLUSTER_TIMESTAMP:
            timestamp = _uint(buf[i + hlen : i + hlen + size])
        pos = stop
    return pos, True


def _add_block_group(w: _Window, pos: int, end: int, timestamp: int, rows: array[int]) -> None:
    block: tuple[int, int] | None = None
    duration = -1
    referenced = False
    while pos < end:
        buf, i = w.at(pos, _HEAD)
        head = _header(buf, i)
        if head is None or head[1] < 0 or pos + head[2] + head[1] > end:
            raise MkvIndexError(f"corrupt BlockGroup: bad child element at offset {pos}")
        eid, size, hlen = head
        if eid in (_BLOCK, _SIMPLE_BLOCK):
            block = (pos + hlen, size)
        elif eid == _BLOCK_DURATION:
            duration = _uint(buf[i + hlen : i + hlen + size]) or -1  # 0 means "not given"
        elif eid == _REFERENCE_BLOCK:
            referenced = True
        pos += hlen + size
    if block is not None:
        data, size = block
        buf, i = w.at(data, _HEAD)
        _add_block(w, buf, i, data, size, timestamp, duration, 0 if referenced else 1, rows)


def _add_block(
    w: _Window,
    buf: bytes,
    i: int,
    data: int,
    size: int,
    timestamp: int,
    duration: int,
    key: int,
    rows: array[int],
) -> None:
    """Rows for the block whose header starts at ``buf[i]`` (file offset ``data``)."""
    b = buf[i] if size else 0
    n = 9 - b.bit_length()
    if n > 8 or size < n + 3:
        return  # FFmpeg drops such blocks as invalid too
    track = b & 0x7F if n == 1 else int.from_bytes(buf[i : i + n], "big") & ((1 << (7 * n)) - 1)
    rel = (buf[i + n] << 8) | buf[i + n + 1]
    if rel >= 0x8000:
        rel -= 0x10000
    flags = buf[i + n + 2]
    if key < 0:
        key = flags >> 7
    start = data + n + 3
    left = size - n - 3
    lacing = (flags >> 1) & 3
    if lacing == 0:
        rows.extend((track, timestamp, rel, key, start, left, duration, 0, 1))
        return
    sizes, header = _lace_sizes(w, start, left, lacing)
    offset = start + header
    count = len(sizes)
    for k, lace in enumerate(sizes):
        rows.extend((track, timestamp, rel, key, offset, lace, duration, k, count))
        offset += lace


def _lace_sizes(w: _Window, pos: int, size: int, lacing: int) -> tuple[list[int], int]:
    """(frame sizes, lace header length) of a laced block's payload [pos, pos+size).

    Mirrors matroska_parse_laces(); the header is read in growing windows
    because Xiph lace sizes of large frames take many bytes.
    """
    need = min(size, 256)
    while True:
        head = w.bytes_at(pos, need)
        try:
            return _parse_laces(head, size, lacing)
        except IndexError:
            if need >= size:
                raise MkvIndexError(f"invalid lace header in the block at offset {pos}") from None
            need = min(size, need * 4)


def _parse_laces(head: bytes, size: int, lacing: int) -> tuple[list[int], int]:
    if size <= 0:
        raise MkvIndexError("laced block without payload")
    count = head[0] + 1
    p = 1
    sizes: list[int] = []
    if lacing == 1:  # Xiph: each size as a run of 255s plus a final byte
        for _ in range(count - 1):
            lace = 0
            while True:
                byte = head[p]
                p += 1
                lace += byte
                if byte != 255:
                    break
            sizes.append(lace)
    elif lacing == 3:  # EBML: first size unsigned, then signed differences
        lace, n = _lace_vint(head, p)
        p += n
        sizes.append(lace)
        for _ in range(count - 2):
            delta, n = _lace_vint(head, p)
            p += n
            lace += delta - ((1 << (7 * n - 1)) - 1)
            sizes.append(lace)
    else:  # fixed
        if (size - 1) % count:
            raise MkvIndexError(f"fixed-size lacing: {size - 1} bytes do not split into {count}")
        return [(size - 1) // count] * count, 1
    rest = size - p - sum(sizes)
    if rest < 0 or any(s < 0 for s in sizes):
        raise MkvIndexError("lace sizes exceed the block")
    sizes.append(rest)
    return sizes, p


def _lace_vint(buf: bytes, p: int) -> tuple[int, int]:
    b = buf[p]
    if b == 0:
        raise MkvIndexError("invalid EBML lace size")
    n = 9 - b.bit_length()
    if p + n > len(buf):
        raise IndexError("lace header continues past the bytes read")
    return int.from_bytes(buf[p : p + n], "big") & ((1 << (7 * n)) - 1), n


# --------------------------------------------------------------------------
# tables


def read_mkv_tables(
    path: Path | str | SourceFile, *, select: Callable[[int, str], bool] | None = None
) -> list[TrackTable]:
    """Index the tracks of a Matroska/WebM file in TrackEntry (= FFmpeg stream) order.

    ``select(track_number, handler)`` picks the tracks to index ("vide",
    "soun", "subt", ...); the others are neither indexed nor checked, so an
    unsupported audio track need not fail a video index.  Raises
    :class:`MkvIndexError` when the file cannot be indexed this way.
    """
    source = as_source_file(path)
    try:
        with source.open() as f:
            scan = _scan(_Window(f, source.size))
        return _build(scan, select)
    except MkvIndexError as exc:
        raise MkvIndexError(f"{source.name}: {exc}") from None


def _build(scan: _Scan, select: Callable[[int, str], bool] | None) -> list[TrackTable]:
    ts = scan.timestamp_scale
    if ts <= 0 or _NS % ts:
        raise MkvIndexError(
            f"TimestampScale {ts} ns does not divide a second; only 1/N s time bases are supported"
        )
    rows = np.frombuffer(scan.rows, dtype=np.int64).reshape(-1, _COLS)
    tracks = scan.tracks or []
    out = []
    for t in tracks:
        if select is not None and not select(t.number, t.handler):
            continue
        try:
            out.append(_track_table(t, rows[rows[:, _C_TRACK] == t.number], ts))
        except MkvIndexError as exc:
            raise MkvIndexError(f"track {t.number} ({t.codec_id}): {exc}") from None
    return out


def _track_table(t: _Track, rows: I64Array, ts: int) -> TrackTable:
    if t.encodings:
        raise MkvIndexError(
            f"ContentEncoding ({'; '.join(t.encodings)}) is not supported: the stored bytes "
            "are not the frames"
        )
    if t.track_timescale != 1.0:
        raise MkvIndexError(f"TrackTimestampScale {t.track_timescale} is not supported")
    if np.any(rows[:, _C_CLUSTER] < 0):
        raise MkvIndexError("a block lies in a Cluster without Timestamp")
    start = rows[:, _C_CLUSTER] + rows[:, _C_REL]
    if np.any(start < 0):
        first = int(np.flatnonzero(start < 0)[0])
        raise MkvIndexError(f"block at offset {int(rows[first, _C_OFFSET])} has a negative time")
    tps = _NS // ts
    start = start - _rescale(t.codec_delay, ts)
    pts, duration = _times(t, rows, start, ts, tps)
    if t.kind == 1:
        dts = _video_dts(pts, _reorder_delay(t, pts), int(t.default_duration // ts))
    else:
        dts = pts.copy()
    n = len(rows)
    return TrackTable(
        track_id=t.number,
        handler=t.handler,
        timescale=tps,
        movie_timescale=tps,
        sample_count=n,
        stbl_sample_count=n,
        dts=read_only(dts),
        pts=read_only(pts),
        duration=read_only(duration),
        size=read_only(rows[:, _C_SIZE]),
        offset=read_only(rows[:, _C_OFFSET]),
        sync=read_only_bool(rows[:, _C_KEY] != 0),
        discard=read_only_bool(np.zeros(n, dtype=np.bool_)),
        sample_number=read_only(np.arange(n, dtype=np.int64)),
        stsd_index=read_only(np.zeros(n, dtype=np.int64)),
        sample_entries=(_sample_entry(t),),
        edit_list=(),
        dts_shift=0,
        pcm_chunked=False,
    )


def _rescale(ns: int, ts: int) -> int:
    """av_rescale_q(ns, 1/1e9, ts/1e9): rounded to nearest, halves away from zero."""
    return (ns + ts // 2) // ts


def _times(
    t: _Track, rows: I64Array, start: I64Array, ts: int, tps: int
) -> tuple[I64Array, I64Array]:
    """(pts, duration) of every lace, as matroska_parse_block() assigns them."""
    lace, laces = rows[:, _C_LACE], rows[:, _C_LACES]
    block = rows[:, _C_DURATION].copy()
    if t.default_duration:
        missing = block < 0
        block[missing] = t.default_duration * laces[missing] // ts
    unknown = block < 0
    if np.any(unknown):
        frame = _codec_durations(t, rows, start, tps)
        if frame is not None:
            # One frame per block: FFmpeg's codec-derived packet duration.
            fill = unknown & (laces == 1)
            block[fill] = frame[fill]
            unknown &= ~fill
        block[unknown] = _spacing(t, start, lace == 0)[unknown]
    before = block * lace // laces
    return start + before, block * (lace + 1) // laces - before


def _codec_durations(t: _Track, rows: I64Array, start: I64Array, tps: int) -> I64Array | None:
    """Durations libavformat derives from the codec when the container has none."""
    if t.kind != 2 or t.sample_rate <= 0:
        return None
    if t.codec_id == "A_OPUS":
        # FFmpeg's parser reads each packet's frame size from its TOC byte;
        # encoders keep one frame size, which the typical block spacing shows.
        gaps = np.diff(start)
        gaps = gaps[gaps > 0]
        return np.full(len(rows), int(np.median(gaps)) if len(gaps) else 0, dtype=np.int64)
    # FFmpeg: av_rescale_rnd(1, frame_size * tb.den, sample_rate * tb.num, AV_ROUND_DOWN)
    rate = int(t.sample_rate)
    if t.codec_id.startswith("A_AAC"):
        return np.full(len(rows), _AAC_FRAME * tps // rate, dtype=np.int64)
    if t.codec_id in _PCM_CODECS and t.bit_depth >= 8 and t.channels > 0:
        frames: I64Array = rows[:, _C_SIZE] // (t.channels * (t.bit_depth // 8))
        return np.asarray(frames * tps // rate, dtype=np.int64)
    return None


def _spacing(t: _Track, start: I64Array, first: BoolArray) -> I64Array:
    """Per row: distance from its block's start to the next block's (display order for video)."""
    block_start = start[first]
    order = np.argsort(block_start, kind="stable") if t.kind == 1 else np.arange(len(block_start))
    gaps = np.diff(block_start[order])
    per_block = np.empty(len(block_start), dtype=np.int64)
    per_block[order] = np.append(gaps, gaps[-1] if len(gaps) else 0)
    out: I64Array = per_block[np.cumsum(first) - 1]
    return out


def _video_dts(pts: I64Array, delay: int, frame: int) -> I64Array:
    """dts as libavformat derives it from pts (compute_pkt_fields' pts_buffer)."""
    n = len(pts)
    if delay == 0 or n == 0:
        return pts.copy()
    # FFmpeg keeps the buffer sorted and replaces its smallest entry by each
    # new pts; a heap does the same.  The sentinel is AV_NOPTS_VALUE.
    buffer = [-(1 << 63)] * (delay + 1)
    smallest = []
    for p in pts.tolist():
        heapq.heapreplace(buffer, p)
        smallest.append(buffer[0])
    out = np.array(smallest, dtype=np.int64)
    # FFmpeg has no dts for the first `delay` packets; extrapolate (module doc).
    known = min(delay, n)
    anchor = int(out[known]) if known < n else int(pts.min())
    if frame <= 0:
        steps = np.diff(np.unique(pts))
        frame = int(steps.min()) if len(steps) else 1
    out[:known] = anchor - (known - np.arange(known, dtype=np.int64)) * frame
    return out


def _sample_entry(t: _Track) -> SampleEntry:
    fourcc = _FOURCCS.get(t.codec_id, t.codec_id)
    config = t.codec_private
    config_type = _CONFIG_TYPES.get(fourcc, "CodecPrivate") if config else None
    if t.kind == 2:
        rate = t.output_sample_rate or t.sample_rate
        return SampleEntry(fourcc, 0, 0, config_type, config, t.channels, round(rate), t.bit_depth)
    return SampleEntry(fourcc, t.width, t.height, config_type, config)


# --------------------------------------------------------------------------
# reorder delay: FFmpeg's has_b_frames


def _reorder_delay(t: _Track, pts: I64Array) -> int:
    """The reorder buffer depth FFmpeg uses for this video track's dts."""
    delay: int | None = None
    try:
        if t.codec_id == "V_MPEG4/ISO/AVC" and t.codec_private:
            sps = nal.parse_avcc(t.codec_private).sps
            delay = _h264_reorder(sps[0]) if sps else None
        elif t.codec_id == "V_MPEGH/ISO/HEVC" and t.codec_private:
            sps = nal.parse_hvcc(t.codec_private).sps
            delay = _hevc_reorder(sps[0]) if sps else None
    except (nal.NalError, IndexError):
        delay = None
    if delay is None:
        delay = _needed_delay(pts)
    return min(delay, _MAX_REORDER)


def _needed_delay(pts: I64Array) -> int:
    """Smallest D with sorted(pts)[i - D] <= pts[i]: the depth the pts order needs."""
    if len(pts) == 0:
        return 0
    rank = np.empty(len(pts), dtype=np.int64)
    rank[np.argsort(pts, kind="stable")] = np.arange(len(pts))
    return max(0, int(np.max(np.arange(len(pts)) - rank)))


class _Bits:
    """Exp-Golomb reader over an RBSP; IndexError past its end."""

    def __init__(self, nal_unit: bytes, header: int) -> None:
        rbsp = nal_unit[header:].replace(b"\x00\x00\x03", b"\x00\x00")
        self.value = int.from_bytes(rbsp, "big")
        self.left = 8 * len(rbsp)

    def u(self, n: int) -> int:
        if n > self.left:
            raise IndexError("SPS is truncated")
        self.left -= n
        return (self.value >> self.left) & ((1 << n) - 1)

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise IndexError("invalid Exp-Golomb code")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


_H264_CHROMA_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


def _h264_reorder(sps: bytes) -> int | None:
    """max_num_reorder_frames of an H.264 SPS, None without VUI bitstream restriction."""
    r = _Bits(sps, 1)
    profile = r.u(8)
    r.u(16)  # constraint flags, level_idc
    r.ue()  # seq_parameter_set_id
    if profile in _H264_CHROMA_PROFILES:
        _skip_h264_chroma_info(r)
    r.ue()  # log2_max_frame_num_minus4
    poc_type = r.ue()
    if poc_type == 0:
        r.ue()
    elif poc_type == 1:
        r.u(1)
        r.se()
        r.se()
        for _ in range(r.ue()):
            r.se()
    r.ue()  # max_num_ref_frames
    r.u(1)
    r.ue()
    r.ue()
    if not r.u(1):  # frame_mbs_only_flag
        r.u(1)
    r.u(1)
    if r.u(1):  # frame_cropping_flag
        for _ in range(4):
            r.ue()
    if not r.u(1):  # vui_parameters_present_flag
        return None
    return _h264_vui_reorder(r)


def _skip_h264_chroma_info(r: _Bits) -> None:
    """chroma_format_idc .. seq_scaling_matrix of the High profiles."""
    chroma = r.ue()
    if chroma == 3:
        r.u(1)
    r.ue()
    r.ue()
    r.u(1)
    if r.u(1):  # seq_scaling_matrix_present_flag
        for i in range(12 if chroma == 3 else 8):
            if r.u(1):
                _skip_scaling_list(r, 16 if i < 6 else 64)


def _skip_scaling_list(r: _Bits, size: int) -> None:
    last = nxt = 8
    for _ in range(size):
        if nxt:
            nxt = (last + r.se()) % 256
        last = nxt or last


def _h264_vui_reorder(r: _Bits) -> int | None:
    if r.u(1) and r.u(8) == 255:  # aspect_ratio_info, Extended_SAR
        r.u(32)
    if r.u(1):  # overscan_info_present_flag
        r.u(1)
    if r.u(1):  # video_signal_type_present_flag
        r.u(4)
        if r.u(1):
            r.u(24)
    if r.u(1):  # chroma_loc_info_present_flag
        r.ue()
        r.ue()
    if r.u(1):  # timing_info_present_flag
        r.u(65)
    nal_hrd = r.u(1)
    if nal_hrd:
        _skip_hrd(r)
    vcl_hrd = r.u(1)
    if vcl_hrd:
        _skip_hrd(r)
    if nal_hrd or vcl_hrd:
        r.u(1)
    r.u(1)  # pic_struct_present_flag
    if not r.u(1):  # bitstream_restriction_flag
        return None
    r.u(1)
    for _ in range(4):
        r.ue()
    return r.ue()  # max_num_reorder_frames


def _skip_hrd(r: _Bits) -> None:
    count = r.ue() + 1
    r.u(8)
    for _ in range(count):
        r.ue()
        r.ue()
        r.u(1)
    r.u(20)


def _hevc_reorder(sps: bytes) -> int:
    """sps_max_num_reorder_pics of the highest sub-layer, which FFmpeg uses."""
    r = _Bits(sps, 2)
    r.u(4)
    sub_layers = r.u(3) + 1
    r.u(1)
    _skip_profile_tier_level(r, sub_layers)
    r.ue()  # sps_seq_parameter_set_id
    if r.ue() == 3:  # chroma_format_idc
        r.u(1)
    r.ue()
    r.ue()
    if r.u(1):  # conformance_window_flag
        for _ in range(4):
            r.ue()
    r.ue()
    r.ue()
    r.ue()  # log2_max_pic_order_cnt_lsb_minus4
    ordering_info = r.u(1)
    reorder = 0
    for _ in range(0 if ordering_info else sub_layers - 1, sub_layers):
        r.ue()
        reorder = r.ue()
        r.ue()
    return reorder


def _skip_profile_tier_level(r: _Bits, sub_layers: int) -> None:
    r.u(96)  # general profile (88 bits) and level (8 bits)
    present = [(r.u(1), r.u(1)) for _ in range(sub_layers - 1)]
    if sub_layers > 1:
        r.u(2 * (9 - sub_layers))
    for profile, level in present:
        if profile:
            r.u(88)
        if level:
            r.u(8)
