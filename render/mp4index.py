"""Sample index of MP4/MOV files, read from the moov box only.

Why this module exists
----------------------
cutfarm copies whole GOPs of 15 GB camera files and re-encodes only around the
cut points.  To plan that it needs, for every video sample, its decode and
presentation time, byte range and sync flag.  Demuxing with PyAV gives exactly
that but reads (and on network storage: transfers) the entire mdat.  All of it
is already in the sample tables of the moov box, a few MB even for an hour of
4K, so this module reads top-level box headers, seeks over mdat and parses
only moov: the cost is O(moov size), whatever the size of the media.

Why the timestamps are not simply the ``stts``/``ctts`` values
-------------------------------------------------------------
Everything downstream (decoding around a cut, muxing, the demux fallback)
speaks in the timestamps FFmpeg's mov demuxer hands to PyAV, so the tables
reproduce those, including the edit-list handling of ``mov_fix_index()``
(libavformat/mov.c), checked packet by packet against PyAV in the tests:

* video is shifted so that the earliest presented frame gets pts 0 (or the
  duration of a leading empty edit).  With B-frames the first dts is therefore
  negative (-2002 for two reordered frames at 30000/1001 fps, timescale 30000)
  while the first pts is 0;
* audio samples before ``media_time`` (AAC priming) keep their place but get
  negative timestamps and the ``discard`` flag (FFmpeg's
  ``AV_PKT_FLAG_DISCARD``); video frames outside the edit are flagged the same
  way;
* samples FFmpeg never returns (before the key frame preceding
  ``media_time``, after the first key frames past the edit's end) are left
  out; ``sample_number`` maps the remaining ones back to the sample tables;
* negative composition offsets (``ctts`` v1) shift dts down by FFmpeg's
  ``dts_shift``, which it derives from all ``ctts`` runs but the last two;
  ``cslg`` is ignored, as FFmpeg does.

Only the common edit list shape is reproduced: optional leading empty edits
followed by one edit with ``media_time >= 0`` and rate 1.  Anything else
raises :class:`Mp4IndexError`, as do fragmented files (their samples live in
``moof`` boxes spread over the whole file), truncated or missing moov boxes
(an interrupted recording), sample data past the end of the file, and tables
that disagree with each other (FFmpeg papers over those in ways not worth
reproducing).  The caller then falls back to demuxing with PyAV, which is slow
but always consistent with itself.

The ``sync`` flag is the container's claim (``stss``, plus ``stps`` and
``rap `` sample groups as FFmpeg counts them): FFmpeg's index entry flag.
PyAV's ``packet.is_keyframe`` equals it except for H.264, where FFmpeg 8 takes
the packet flag from its bitstream parser (IDR or recovery point SEI) instead.
Neither is proof that a sample is a safe place to start copying: see
:mod:`render.nal` for why, and for the check that is.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

__all__ = [
    "EditListEntry",
    "Mp4IndexError",
    "SampleEntry",
    "TrackTable",
    "read_sample_tables",
]

I64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
Boxes = dict[str, list[tuple[int, int]]]


class Mp4IndexError(Exception):
    """The file cannot be indexed from its moov box; demux it instead."""


@dataclass(frozen=True)
class SampleEntry:
    """One entry of the ``stsd`` box.

    ``config`` is the payload (without the 8-byte box header) of the codec
    configuration box named ``config_type``, e.g. the
    AVCDecoderConfigurationRecord of ``avcC``: what FFmpeg exposes as
    extradata and what :func:`render.nal.parse_avcc` reads.
    """

    fourcc: str
    width: int
    height: int
    config_type: str | None
    config: bytes | None
    channels: int = 0
    sample_rate: int = 0
    #: sound: bits per sample as described (QuickTime v2: constBitsPerChannel)
    sample_size_bits: int = 0
    #: QuickTime sound v1/v2: sample frames per packet (> 1 for compressed audio)
    samples_per_packet: int = 0


@dataclass(frozen=True)
class EditListEntry:
    """One ``elst`` entry: duration in movie timescale, media time in track timescale."""

    segment_duration: int
    media_time: int
    media_rate: float

    @property
    def is_empty(self) -> bool:
        return self.media_time == -1


@dataclass(frozen=True, eq=False)
class TrackTable:
    """Per-sample index of one track in decode order, as FFmpeg demuxes it.

    The arrays have ``sample_count`` elements each and are read-only.  Times
    are in ``timescale`` units (the track's ``mdhd`` timescale, which is also
    the PyAV stream time base).  ``sample_number`` is the 0-based sample number
    in the ``stbl`` tables; it differs from the array position only when the
    edit list makes FFmpeg skip samples (then ``sample_count <
    stbl_sample_count``).  ``stsd_index`` is 0-based into ``sample_entries``.
    ``discard`` marks samples FFmpeg flags ``AV_PKT_FLAG_DISCARD``: decoded for
    reference but outside the edit, so never presented.

    ``sync`` is the container's flag, as in FFmpeg's ``index_entries``; for
    H.264, PyAV's packet flag comes from the bitstream instead (module doc).

    ``pcm_chunked`` marks sound tracks with one-tick samples (raw PCM).  An
    hour of them is 172 million samples, so FFmpeg -- and this table -- does
    not index them one by one: each entry is one of FFmpeg's packets, up to
    1024 sample frames of one chunk, and ``sample_number`` is its first sample.
    """

    track_id: int
    handler: str
    timescale: int
    movie_timescale: int
    sample_count: int
    stbl_sample_count: int
    dts: I64Array
    pts: I64Array
    duration: I64Array
    size: I64Array
    offset: I64Array
    sync: BoolArray
    discard: BoolArray
    sample_number: I64Array
    stsd_index: I64Array
    sample_entries: tuple[SampleEntry, ...]
    edit_list: tuple[EditListEntry, ...]
    dts_shift: int
    pcm_chunked: bool

    @property
    def entries(self) -> tuple[SampleEntry, ...]:
        """Alias of ``sample_entries``."""
        return self.sample_entries


# Top-level boxes a real MP4/MOV may start with.  Anything else is rejected
# before a single size field is trusted, so a text file cannot send the reader
# seeking to a random offset.
_FIRST_BOXES = frozenset(
    {b"ftyp", b"styp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid", b"pdin"}
)
# A multi-hour moov is tens of MB; much more is a corrupt size field, and
# reading it would only exhaust memory.
_MAX_MOOV = 1 << 30
_CONFIG_BOXES = frozenset(
    {"avcC", "hvcC", "vvcC", "av1C", "vpcC", "esds", "dOps", "dfLa", "dac3", "dec3", "alac", "pcmC"}
)
# Bits per sample FFmpeg assigns to QuickTime PCM sample entries.
_PCM_BITS = {"in24": 24, "in32": 32, "fl32": 32, "fl64": 64, "ulaw": 8, "alaw": 8}
# FFmpeg packs one-tick PCM samples into packets of at most this many frames.
_PCM_PACKET = 1024
# FFmpeg throws away a ctts with offsets this large as garbage; refusing the
# file is safer than reproducing that.
_CTTS_SANE = 1 << 28
_FRAGMENTED = "fragmented MP4 is not supported by the index; demux instead"


# --------------------------------------------------------------------------
# box level


def _fourcc(raw: bytes) -> str:
    return raw.decode("latin-1")


def _printable(raw: bytes) -> bool:
    # 0xA9 ('©') starts QuickTime metadata box names.
    return all(0x20 <= b < 0x7F or b == 0xA9 for b in raw)


def _iter_boxes(buf: bytes, start: int, end: int, parent: str) -> Iterator[tuple[str, int, int]]:
    """Yield (type, payload_start, payload_end) of the child boxes in buf[start:end]."""
    pos = start
    while pos < end:
        if end - pos < 8:
            # QuickTime terminates some atom lists with a 32-bit zero.
            if not any(buf[pos:end]):
                return
            raise Mp4IndexError(f"corrupt '{parent}' box: {end - pos} stray bytes at its end")
        size, raw_type = struct.unpack_from(">I4s", buf, pos)
        header = 8
        if size == 1:
            if end - pos < 16:
                raise Mp4IndexError(f"corrupt '{parent}' box: truncated 64-bit box header")
            (size,) = struct.unpack_from(">Q", buf, pos + 8)
            header = 16
        elif size == 0:
            size = end - pos
        if not _printable(raw_type):
            raise Mp4IndexError(f"corrupt '{parent}' box: invalid child box type {raw_type!r}")
        if size < header or pos + size > end:
            raise Mp4IndexError(
                f"box '{_fourcc(raw_type)}' inside '{parent}' claims {size} bytes but only "
                f"{end - pos} remain (truncated or corrupt moov)"
            )
        yield _fourcc(raw_type), pos + header, pos + size
        pos += size


def _children(buf: bytes, start: int, end: int, parent: str) -> Boxes:
    found: Boxes = {}
    for typ, s, e in _iter_boxes(buf, start, end, parent):
        found.setdefault(typ, []).append((s, e))
    return found


def _opt(kids: Boxes, typ: str, parent: str) -> tuple[int, int] | None:
    boxes = kids.get(typ, [])
    if len(boxes) > 1:
        raise Mp4IndexError(f"'{parent}' contains {len(boxes)} '{typ}' boxes, expected one")
    return boxes[0] if boxes else None


def _req(kids: Boxes, typ: str, parent: str) -> tuple[int, int]:
    box = _opt(kids, typ, parent)
    if box is None:
        raise Mp4IndexError(f"'{parent}' has no '{typ}' box")
    return box


def _need(start: int, end: int, nbytes: int, box: str) -> None:
    if end - start < nbytes:
        raise Mp4IndexError(f"'{box}' box is truncated: {end - start} bytes, need {nbytes}")


def _table(buf: bytes, box: tuple[int, int], name: str, dtype: str, cols: int) -> I64Array:
    """A full box holding ``u32 count`` then ``count`` rows of ``cols`` big-endian values."""
    s, e = box
    _need(s, e, 8, name)
    (count,) = struct.unpack_from(">I", buf, s + 4)
    width = np.dtype(dtype).itemsize
    _need(s + 8, e, count * cols * width, name)
    raw = np.frombuffer(buf, dtype=dtype, count=count * cols, offset=s + 8)
    return raw.astype(np.int64).reshape(count, cols)


def _version_field(buf: bytes, box: tuple[int, int], name: str, v0: int, v1: int) -> int:
    """The u32 at payload offset v0 (version 0) or v1 (version 1) of a full box."""
    s, e = box
    _need(s, e, 4, name)
    at = v1 if buf[s] == 1 else v0
    _need(s, e, at + 4, name)
    value: int = struct.unpack_from(">I", buf, s + at)[0]
    return value


def _rescale(value: int, num: int, den: int) -> int:
    """av_rescale(): value * num / den rounded to nearest, halves away from zero."""
    prod = value * num
    if prod >= 0:
        return (prod + den // 2) // den
    return -((-prod + den // 2) // den)


# --------------------------------------------------------------------------
# file level


def _top_header(head: bytes, pos: int, file_size: int, name: str) -> tuple[str, int, int] | None:
    """(type, header length, box size) of the top-level box starting with ``head``.

    None if ``head`` is not a box header at all.
    """
    size, raw_type = struct.unpack_from(">I4s", head)
    if pos == 0 and raw_type not in _FIRST_BOXES:
        raise Mp4IndexError(
            f"{name} is not an ISO-BMFF (MP4/MOV) file: it starts with {head[:8]!r}"
        )
    if not _printable(raw_type):
        return None
    typ = _fourcc(raw_type)
    header = 8
    if size == 1:
        if len(head) < 16:
            raise Mp4IndexError(f"{name}: truncated 64-bit box header at offset {pos}")
        (size,) = struct.unpack_from(">Q", head, 8)
        header = 16
    elif size == 0:
        size = file_size - pos
    if size < header:
        return None
    if typ == "moof":
        raise Mp4IndexError(f"{name}: {_FRAGMENTED} ('moof' box at offset {pos})")
    return typ, header, size


def _check_overrun(typ: str, pos: int, size: int, file_size: int, name: str, moov: bool) -> None:
    """A top-level box runs past the end of the file: explain why that is fatal, if it is."""
    if typ == "moov":
        raise Mp4IndexError(
            f"{name}: truncated moov: the box at offset {pos} needs {size} bytes, "
            f"the file ends after {file_size - pos}; the file was cut short"
        )
    if not moov:
        raise Mp4IndexError(
            f"{name}: no moov box: the file ends inside the '{typ}' box at offset "
            f"{pos} ({size} bytes claimed, {file_size - pos} present); the recording "
            "was probably interrupted before its index (moov) was written"
        )


def _find_moov(f: BinaryIO, file_size: int, name: str) -> bytes:
    pos = 0
    moov: bytes | None = None
    while pos < file_size:
        f.seek(pos)
        head = f.read(16)
        if len(head) < 8:
            if pos == 0:
                raise Mp4IndexError(f"{name} is not an MP4/MOV file (only {file_size} bytes)")
            break  # a few bytes of trailing padding
        parsed = _top_header(head, pos, file_size, name)
        if parsed is None:
            if moov is not None:
                break  # junk after the last box; cameras pad files like that
            raise Mp4IndexError(f"{name}: corrupt top-level box header {head!r} at offset {pos}")
        typ, header, size = parsed
        if pos + size > file_size:
            _check_overrun(typ, pos, size, file_size, name, moov is not None)
            break  # truncated media after a leading moov: see the sample extent check
        if typ == "moov":
            if moov is not None:
                raise Mp4IndexError(f"{name}: more than one moov box")
            if size - header > _MAX_MOOV:
                raise Mp4IndexError(f"{name}: implausible moov size {size}")
            f.seek(pos + header)
            moov = f.read(size - header)
        pos += size
    if moov is None:
        raise Mp4IndexError(
            f"{name}: no moov box found; the recording was probably interrupted before its "
            "index (moov) was written"
        )
    return moov


def read_sample_tables(path: Path | str) -> list[TrackTable]:
    """Index every track of an MP4/MOV file from its moov box, in ``trak`` order.

    For ordinary files that is FFmpeg's stream order (one stream per ``trak``,
    ``stream.id == track_id``).  Raises :class:`Mp4IndexError` when the file
    cannot be indexed this way and must be demuxed instead.
    """
    path = Path(path)
    with path.open("rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        moov = _find_moov(f, file_size, path.name)
    try:
        return _parse_moov(moov, file_size)
    except Mp4IndexError as exc:
        raise Mp4IndexError(f"{path.name}: {exc}") from None


def _parse_moov(moov: bytes, file_size: int) -> list[TrackTable]:
    kids = _children(moov, 0, len(moov), "moov")
    if "mvex" in kids:
        raise Mp4IndexError(f"{_FRAGMENTED} (moov contains 'mvex')")
    if "cmov" in kids:
        raise Mp4IndexError("compressed moov ('cmov') is not supported")
    movie_timescale = _version_field(moov, _req(kids, "mvhd", "moov"), "mvhd", 12, 20)
    return [
        _parse_trak(moov, trak, number, movie_timescale, file_size)
        for number, trak in enumerate(kids.get("trak", []), start=1)
    ]


# --------------------------------------------------------------------------
# track level


def _parse_trak(
    buf: bytes, box: tuple[int, int], number: int, movie_timescale: int, file_size: int
) -> TrackTable:
    where = f"trak #{number}"
    try:
        trak = _children(buf, *box, "trak")
        track_id = _version_field(buf, _req(trak, "tkhd", "trak"), "tkhd", 12, 20)
        where = f"track {track_id}"
        edits = _parse_elst(buf, trak)
        mdia = _children(buf, *_req(trak, "mdia", "trak"), "mdia")
        timescale = _version_field(buf, _req(mdia, "mdhd", "mdia"), "mdhd", 12, 20)
        if timescale == 0:
            raise Mp4IndexError("mdhd timescale is 0")
        hs, he = _req(mdia, "hdlr", "mdia")
        _need(hs, he, 12, "hdlr")
        # QuickTime puts the component type ('mhlr') before the subtype; both
        # layouts have the handler type at payload offset 8.
        handler = _fourcc(buf[hs + 8 : hs + 12])
        where = f"track {track_id} ({handler})"
        minf = _children(buf, *_req(mdia, "minf", "mdia"), "minf")
        stbl = _children(buf, *_req(minf, "stbl", "minf"), "stbl")
        entries = _parse_sample_entries(buf, _req(stbl, "stsd", "stbl"), handler)
        return _build_table(
            buf, stbl, entries, edits, handler, track_id, timescale, movie_timescale, file_size
        )
    except Mp4IndexError as exc:
        raise Mp4IndexError(f"{where}: {exc}") from None


def _build_table(
    buf: bytes,
    stbl: Boxes,
    entries: list[SampleEntry],
    edits: list[EditListEntry],
    handler: str,
    track_id: int,
    timescale: int,
    movie_timescale: int,
    file_size: int,
) -> TrackTable:
    stts = _stts_runs(buf, stbl)
    # FFmpeg's mov_build_index() packs such tracks per chunk, not per sample.
    pcm_chunked = handler == "soun" and len(stts) == 1 and int(stts[0, 1]) == 1
    if pcm_chunked:
        lay = _pcm_layout(buf, stbl, entries, int(stts[0, 0]))
        ctts, dts_shift = None, 0
        sync = np.ones(len(lay.sizes), dtype=np.bool_)
    else:
        lay = _sample_layout(buf, stbl, entries, stts)
        ctts, dts_shift = _parse_ctts(buf, stbl, lay.stbl_count)
        sync = _parse_sync(buf, stbl, handler, lay.stbl_count)
    sizes, offsets, durations = lay.sizes, lay.offsets, lay.durations
    n = len(sizes)
    if n and int((offsets + sizes).max()) > file_size:
        raise Mp4IndexError(
            f"sample data extends past the end of the file ({int((offsets + sizes).max())} > "
            f"{file_size} bytes): the file is truncated"
        )

    keep, dts, discard = _present(
        _Raw(_exclusive_cumsum(durations), durations, ctts, sync, dts_shift, handler),
        edits,
        timescale,
        movie_timescale,
    )
    pts = dts + dts_shift + ctts[keep] if ctts is not None else dts.copy()
    out_durations = durations[keep]
    if pcm_chunked and len(keep):
        out_durations = _pcm_durations(dts, int(stts[0, 0]), edits, timescale, movie_timescale)
    return TrackTable(
        track_id=track_id,
        handler=handler,
        timescale=timescale,
        movie_timescale=movie_timescale,
        sample_count=len(keep),
        stbl_sample_count=lay.stbl_count,
        dts=_ro(dts),
        pts=_ro(pts),
        duration=_ro(out_durations),
        size=_ro(sizes[keep]),
        offset=_ro(offsets[keep]),
        sync=_ro_bool(sync[keep]),
        discard=_ro_bool(discard),
        sample_number=_ro(lay.first_sample[keep]),
        stsd_index=_ro(lay.stsd_index[keep]),
        sample_entries=tuple(entries),
        edit_list=tuple(edits),
        dts_shift=dts_shift,
        pcm_chunked=pcm_chunked,
    )


def _ro(a: npt.NDArray[np.integer]) -> I64Array:
    out = np.ascontiguousarray(a, dtype=np.int64)
    out.flags.writeable = False
    return out


def _ro_bool(a: BoolArray) -> BoolArray:
    out = np.ascontiguousarray(a, dtype=np.bool_)
    out.flags.writeable = False
    return out


def _parse_elst(buf: bytes, trak: Boxes) -> list[EditListEntry]:
    edts = _opt(trak, "edts", "trak")
    if edts is None:
        return []
    elst = _opt(_children(buf, *edts, "edts"), "elst", "edts")
    if elst is None:
        return []
    s, e = elst
    _need(s, e, 8, "elst")
    version = buf[s]
    (count,) = struct.unpack_from(">I", buf, s + 4)
    entry_size = 20 if version == 1 else 12
    _need(s, e, 8 + count * entry_size, "elst")
    fmt = ">QqhH" if version == 1 else ">IihH"
    edits = []
    for i in range(count):
        duration, media_time, rate_int, rate_frac = struct.unpack_from(
            fmt, buf, s + 8 + i * entry_size
        )
        edits.append(EditListEntry(duration, media_time, rate_int + rate_frac / 65536.0))
    return edits


def _parse_sample_entries(buf: bytes, box: tuple[int, int], handler: str) -> list[SampleEntry]:
    start, end = box
    _need(start, end, 8, "stsd")
    (count,) = struct.unpack_from(">I", buf, start + 4)
    entries: list[SampleEntry] = []
    for typ, s, e in _iter_boxes(buf, start + 8, end, "stsd"):
        if handler == "vide" and e - s >= 78:
            # VisualSampleEntry: 8 bytes of SampleEntry + 70 bytes of visual fields.
            width, height = struct.unpack_from(">HH", buf, s + 24)
            config_type, config = _codec_config(buf, s + 78, e, typ)
            entries.append(SampleEntry(typ, width, height, config_type, config))
        elif handler == "soun" and e - s >= 28:
            entries.append(_sound_entry(buf, typ, s, e))
        else:
            entries.append(SampleEntry(typ, 0, 0, None, None))
    if len(entries) != count:
        raise Mp4IndexError(f"stsd declares {count} entries but contains {len(entries)}")
    return entries


def _sound_entry(buf: bytes, typ: str, s: int, e: int) -> SampleEntry:
    version, channels, bits = struct.unpack_from(">H6xHH", buf, s + 8)
    rate = struct.unpack_from(">I", buf, s + 24)[0] >> 16
    per_packet = 0
    # QuickTime sound descriptions v1/v2 append 16/36 bytes of fields.
    if version == 1 and e - s >= 44:
        (per_packet,) = struct.unpack_from(">I", buf, s + 28)
    elif version == 2 and e - s >= 64:
        (rate_f, channels, bits, per_packet) = struct.unpack_from(">dI4xI8xI", buf, s + 32)
        rate = round(rate_f)
    child_start = s + 28 + {1: 16, 2: 36}.get(version, 0)
    config_type, config = _codec_config(buf, child_start, e, typ)
    return SampleEntry(typ, 0, 0, config_type, config, channels, rate, bits, per_packet)


def _codec_config(buf: bytes, start: int, end: int, parent: str) -> tuple[str | None, bytes | None]:
    try:
        for typ, s, e in _iter_boxes(buf, start, end, parent):
            if typ in _CONFIG_BOXES:
                return typ, bytes(buf[s:e])
    except Mp4IndexError:
        # Some writers pad sample entries with bytes that are not boxes; the
        # codec configuration, when present, comes before them.
        pass
    return None, None


# --------------------------------------------------------------------------
# sample tables


def _parse_sizes(buf: bytes, stbl: Boxes) -> I64Array:
    stsz = _opt(stbl, "stsz", "stbl")
    if stsz is not None:
        s, e = stsz
        _need(s, e, 12, "stsz")
        const_size, n = struct.unpack_from(">II", buf, s + 4)
        if const_size:
            return np.full(n, const_size, dtype=np.int64)
        return _table(buf, (s + 4, e), "stsz", ">u4", 1)[:, 0]
    stz2 = _opt(stbl, "stz2", "stbl")
    if stz2 is None:
        raise Mp4IndexError("no stsz/stz2 box")
    s, e = stz2
    _need(s, e, 12, "stz2")
    field, n = struct.unpack_from(">3xBI", buf, s + 4)
    if field not in (4, 8, 16):
        raise Mp4IndexError(f"stz2 field size {field} is invalid")
    _need(s + 12, e, (n * field + 7) // 8, "stz2")
    if field == 16:
        return np.frombuffer(buf, ">u2", n, s + 12).astype(np.int64)
    packed = np.frombuffer(buf, np.uint8, (n * field + 7) // 8, s + 12)
    if field == 8:
        return packed.astype(np.int64)
    return np.stack([packed >> 4, packed & 15], axis=1).reshape(-1)[:n].astype(np.int64)


@dataclass(frozen=True)
class _Layout:
    """Entries (samples, or PCM packets) with their place in the file."""

    sizes: I64Array
    offsets: I64Array
    durations: I64Array
    stsd_index: I64Array
    first_sample: I64Array
    stbl_count: int


@dataclass(frozen=True)
class _Chunks:
    offsets: I64Array  # file offset of each chunk
    samples: I64Array  # samples in each chunk
    stsd_index: I64Array  # 0-based sample description of each chunk


def _chunk_map(buf: bytes, stbl: Boxes, n: int, n_entries: int) -> _Chunks:
    stco, co64 = _opt(stbl, "stco", "stbl"), _opt(stbl, "co64", "stbl")
    if stco is not None and co64 is not None:
        raise Mp4IndexError("both stco and co64 present")
    if stco is not None:
        chunk_offsets = _table(buf, stco, "stco", ">u4", 1)[:, 0]
    elif co64 is not None:
        chunk_offsets = _table(buf, co64, "co64", ">u8", 1)[:, 0]
        if len(chunk_offsets) and int(chunk_offsets.min()) < 0:
            raise Mp4IndexError("co64 chunk offset does not fit in 63 bits")
    elif n == 0:
        chunk_offsets = np.zeros(0, dtype=np.int64)
    else:
        raise Mp4IndexError("no stco/co64 box")
    stsc = _opt(stbl, "stsc", "stbl")
    runs = _table(buf, stsc, "stsc", ">u4", 3) if stsc else np.zeros((0, 3), np.int64)
    first_chunk, per_chunk, desc = runs[:, 0], runs[:, 1], runs[:, 2]
    nchunks = len(chunk_offsets)
    if len(runs) and (
        first_chunk[0] != 1 or np.any(np.diff(first_chunk) <= 0) or first_chunk[-1] > nchunks
    ):
        raise Mp4IndexError(f"stsc first_chunk values are not 1, increasing, <= {nchunks}")
    if np.any(desc < 1) or np.any(desc > n_entries):
        raise Mp4IndexError("stsc sample description index out of range")
    chunks_per_run = np.diff(np.append(first_chunk, nchunks + 1))
    in_chunk = np.repeat(per_chunk, chunks_per_run)
    if int(in_chunk.sum()) != n:
        raise Mp4IndexError(f"stsc/stco describe {int(in_chunk.sum())} samples, stsz has {n}")
    return _Chunks(chunk_offsets, in_chunk, np.repeat(desc - 1, chunks_per_run))


def _exclusive_cumsum(a: I64Array) -> I64Array:
    out = np.zeros(len(a), dtype=np.int64)
    if len(a) > 1:
        np.cumsum(a[:-1], out=out[1:])
    return out


def _stts_runs(buf: bytes, stbl: Boxes) -> I64Array:
    stts = _opt(stbl, "stts", "stbl")
    tab = _table(buf, stts, "stts", ">u4", 2) if stts else np.zeros((0, 2), np.int64)
    if np.any(tab[:, 1] >= 1 << 31):
        raise Mp4IndexError("stts has negative (>= 2**31) sample deltas")
    return tab


def _sample_layout(buf: bytes, stbl: Boxes, entries: list[SampleEntry], stts: I64Array) -> _Layout:
    sizes = _parse_sizes(buf, stbl)
    n = len(sizes)
    if int(stts[:, 0].sum()) != n:
        raise Mp4IndexError(f"stts describes {int(stts[:, 0].sum())} samples, stsz has {n}")
    chunks = _chunk_map(buf, stbl, n, len(entries))
    chunk_of = np.repeat(np.arange(len(chunks.samples), dtype=np.int64), chunks.samples)
    # offset = chunk offset + sizes of the chunk's earlier samples
    before = _exclusive_cumsum(sizes)
    chunk_first = _exclusive_cumsum(chunks.samples)
    offsets = chunks.offsets[chunk_of] + before - before[chunk_first[chunk_of]]
    return _Layout(
        sizes=sizes,
        offsets=offsets,
        durations=np.repeat(stts[:, 1], stts[:, 0]),
        stsd_index=chunks.stsd_index[chunk_of],
        first_sample=np.arange(n, dtype=np.int64),
        stbl_count=n,
    )


def _pcm_durations(
    dts: I64Array, total: int, edits: list[EditListEntry], timescale: int, movie_timescale: int
) -> I64Array:
    """Packet durations of a chunked PCM track, as mov_read_packet() computes them.

    Without per-packet stts entries FFmpeg uses the distance to the next
    packet, and for the last one the stream duration, which the edit list may
    have shortened.
    """
    if edits:
        total = min(
            total, sum(_rescale(e.segment_duration, timescale, movie_timescale) for e in edits)
        )
    return np.append(np.diff(dts), max(total - int(dts[-1]), 0))


def _pcm_frame_bytes(entry: SampleEntry) -> int | None:
    """Bytes per sample frame as FFmpeg derives it from the sample description."""
    bits: int | None = _PCM_BITS.get(entry.fourcc)
    if entry.fourcc in ("twos", "sowt"):
        bits = entry.sample_size_bits if entry.sample_size_bits in (8, 24, 32) else 16
    elif entry.fourcc == "raw ":
        bits = 16 if entry.sample_size_bits == 16 else 8
    elif entry.fourcc == "lpcm":
        bits = entry.sample_size_bits
    elif entry.fourcc in ("ipcm", "fpcm") and entry.config_type == "pcmC" and entry.config:
        bits = entry.config[5] if len(entry.config) > 5 else None
    if not bits or not entry.channels:
        return None
    return (bits >> 3) * entry.channels


def _pcm_layout(buf: bytes, stbl: Boxes, entries: list[SampleEntry], n: int) -> _Layout:
    """FFmpeg's packets of a one-tick PCM track: up to 1024 frames of one chunk each."""
    stsz = _req(stbl, "stsz", "stbl")
    _need(*stsz, 12, "stsz")
    const_size, count = struct.unpack_from(">II", buf, stsz[0] + 4)
    if count != n:
        raise Mp4IndexError(f"stts describes {n} samples, stsz has {count}")
    if any(e.samples_per_packet > 1 for e in entries):
        raise Mp4IndexError("compressed QuickTime audio (samples per packet > 1) is not supported")
    frame = {_pcm_frame_bytes(e) for e in entries}
    if len(frame) != 1:
        raise Mp4IndexError("PCM sample descriptions with different frame sizes")
    # FFmpeg prefers the size derived from the description over stsz's.
    frame_bytes = frame.pop() or const_size
    if not frame_bytes:
        raise Mp4IndexError("PCM track without a constant sample size")
    chunks = _chunk_map(buf, stbl, n, len(entries))
    per_chunk = -(-chunks.samples // _PCM_PACKET)
    chunk_of = np.repeat(np.arange(len(per_chunk), dtype=np.int64), per_chunk)
    k = np.arange(len(chunk_of), dtype=np.int64) - _exclusive_cumsum(per_chunk)[chunk_of]
    frames = np.minimum(_PCM_PACKET, chunks.samples[chunk_of] - _PCM_PACKET * k)
    return _Layout(
        sizes=frames * frame_bytes,
        offsets=chunks.offsets[chunk_of] + _PCM_PACKET * k * frame_bytes,
        durations=frames,
        stsd_index=chunks.stsd_index[chunk_of],
        first_sample=_exclusive_cumsum(chunks.samples)[chunk_of] + _PCM_PACKET * k,
        stbl_count=n,
    )


def _parse_ctts(buf: bytes, stbl: Boxes, n: int) -> tuple[I64Array | None, int]:
    ctts = _opt(stbl, "ctts", "stbl")
    if ctts is None:
        return None, 0
    # Signed for both versions, like FFmpeg: version-0 offsets with the top bit
    # set are negative offsets from sloppy muxers, not 2-billion-tick delays.
    tab = _table(buf, ctts, "ctts", ">i4", 2)
    counts, offs = tab[:, 0], tab[:, 1]
    if np.any(counts < 0):
        raise Mp4IndexError("ctts has negative sample counts")
    if int(counts.sum()) == 0:
        return None, 0
    if int(counts.sum()) != n:
        raise Mp4IndexError(f"ctts describes {int(counts.sum())} samples, stsz has {n}")
    # FFmpeg (mov_read_ctts) ignores the last two runs for both checks below,
    # a workaround for muxers that write a bogus tail.
    head = offs[: max(len(offs) - 2, 0)]
    if np.any(np.abs(head) > _CTTS_SANE):
        raise Mp4IndexError("ctts offsets are implausibly large")
    dts_shift = max(0, -int(head.min())) if len(head) else 0
    return np.repeat(offs, counts), dts_shift


def _parse_sync(buf: bytes, stbl: Boxes, handler: str, n: int) -> BoolArray:
    """Sync flags exactly as mov_build_index() derives FFmpeg's key frame flags."""
    box = _opt(stbl, "stss", "stbl")
    stss = _table(buf, box, "stss", ">u4", 1)[:, 0] if box else None
    box = _opt(stbl, "stps", "stbl")
    stps = _table(buf, box, "stps", ">u4", 1)[:, 0] if box else None
    # FFmpeg accepts 0-based tables (a writer bug) when their first entry is 0.
    one_based = any(t is not None and len(t) > 0 and t[0] > 0 for t in (stss, stps))
    base = 1 if one_based else 0
    rap = _rap_group(buf, stbl, n)
    if stss is None:
        sync = np.ones(n, dtype=np.bool_)
    elif len(stss):
        sync = _mark(stss, base, n, "stss")
    elif handler == "vide":
        # FFmpeg then runs a bitstream parser to find key frames, which the
        # tables alone cannot reproduce.
        raise Mp4IndexError("empty stss box: key frames are unknown without parsing the video")
    else:
        sync = np.zeros(n, dtype=np.bool_)
        if stps is None and rap is None:
            sync[: n if handler == "soun" else 1] = True
    if stps is not None and len(stps):
        sync |= _mark(stps, base, n, "stps")
    if rap is not None:
        sync |= rap
    return sync


def _mark(numbers: I64Array, base: int, n: int, box: str) -> BoolArray:
    idx = numbers - base
    # FFmpeg walks the table in step with the samples, so an unsorted table
    # silently loses key frames there; refuse rather than guess.
    if np.any(np.diff(idx) <= 0) or int(idx[0]) < 0 or int(idx[-1]) >= n:
        raise Mp4IndexError(f"{box} sample numbers are not increasing and within the track")
    out = np.zeros(n, dtype=np.bool_)
    out[idx] = True
    return out


def _rap_group(buf: bytes, stbl: Boxes, n: int) -> BoolArray | None:
    """Samples mapped to a 'rap ' sample group, which FFmpeg also flags as key frames."""
    for s, e in stbl.get("sbgp", []):
        _need(s, e, 12, "sbgp")
        if buf[s + 4 : s + 8] != b"rap ":
            continue
        skip = 4 if buf[s] == 1 else 0  # grouping_type_parameter
        tab = _table(buf, (s + 4 + skip, e), "sbgp", ">u4", 2)
        flags = np.repeat(tab[:, 1] > 0, tab[:, 0])[:n]
        out = np.zeros(n, dtype=np.bool_)
        out[: len(flags)] = flags
        return out
    return None


# --------------------------------------------------------------------------
# edit list: what FFmpeg presents


@dataclass(frozen=True)
class _Raw:
    dts: I64Array  # stts cumulative sum, starting at 0
    durations: I64Array
    ctts: I64Array | None
    key: BoolArray
    dts_shift: int
    handler: str

    @property
    def offsets(self) -> I64Array:
        return self.ctts if self.ctts is not None else np.zeros(len(self.dts), np.int64)


def _search_backward(ts: I64Array, wanted: int, key: BoolArray | None) -> int:
    """ff_index_search_timestamp(..., AVSEEK_FLAG_BACKWARD), probe sequence included.

    The exact binary search matters when timestamps repeat, so it is copied
    rather than replaced by searchsorted.  ``key`` given: key frames only.
    """
    a, b = -1, len(ts)
    if b and int(ts[b - 1]) < wanted:
        a = b - 1
    while b - a > 1:
        m = (a + b) >> 1
        t = int(ts[m])
        if t >= wanted:
            b = m
        if t <= wanted:
            a = m
    if key is not None and a >= 0:
        earlier = np.flatnonzero(key[: a + 1])
        a = int(earlier[-1]) if len(earlier) else -1
    return a


def _find_prev_closest(raw: _Raw, ts: I64Array, wanted_pts: int, any_frame: bool) -> int:
    """find_prev_closest_index(): the first sample FFmpeg keeps for an edit."""
    if raw.dts_shift > 0:
        wanted_pts -= raw.dts_shift
    index = _search_backward(ts, wanted_pts, None if any_frame else raw.key)
    i = index
    while i > 0 and ts[i] == ts[i - 1]:
        if any_frame or raw.key[i - 1]:
            index = i - 1
        i -= 1
    if raw.ctts is not None and index >= 0:
        # Back to a key frame presented no later than the edit start, so the
        # B-frames right after the start can be decoded.
        upto = slice(0, index + 1)
        ok = np.flatnonzero(raw.key[upto] & (ts[upto] + raw.ctts[upto] <= wanted_pts))
        index = int(ok[-1]) if len(ok) else -1
    return index


def _simple_edit(
    edits: list[EditListEntry], timescale: int, movie_timescale: int
) -> tuple[int, int, int]:
    """(summed empty-edit duration, media_time, duration) in track timescale."""
    leading = 0
    while leading < len(edits) and edits[leading].is_empty:
        leading += 1
    if len(edits) - leading != 1:
        raise Mp4IndexError(
            f"edit list with {len(edits) - leading} non-empty edits is not supported "
            f"(only optional empty edits + one edit); demux instead: {edits}"
        )
    if movie_timescale == 0:
        raise Mp4IndexError("mvhd timescale is 0 but the track has an edit list")
    edit = edits[leading]
    if edit.media_time < 0:
        raise Mp4IndexError(f"edit media_time {edit.media_time} is invalid")
    if edit.media_rate != 1.0:
        raise Mp4IndexError(f"edit media_rate {edit.media_rate} != 1 is not supported")
    if edit.segment_duration == 0:
        raise Mp4IndexError("edit with zero duration is not supported")
    # FFmpeg rescales each entry on its own, so the sum carries each rounding.
    empty = sum(_rescale(x.segment_duration, timescale, movie_timescale) for x in edits[:leading])
    return empty, edit.media_time, _rescale(edit.segment_duration, timescale, movie_timescale)


def _present(
    raw: _Raw, edits: list[EditListEntry], timescale: int, movie_timescale: int
) -> tuple[npt.NDArray[np.int64], I64Array, BoolArray]:
    """Reproduce mov_fix_index(): (samples kept, their dts, their discard flags)."""
    n = len(raw.dts)
    ts = raw.dts - raw.dts_shift
    if not edits or n == 0:
        return np.arange(n, dtype=np.int64), ts, np.zeros(n, dtype=np.bool_)
    empty, media_time, edit_dur = _simple_edit(edits, timescale, movie_timescale)
    is_audio = raw.handler == "soun"

    search = media_time
    if is_audio:
        # Audio decoders need pre-roll: FFmpeg starts up to a second early.
        search = max(search - timescale, int(ts[0]))
    start = _find_prev_closest(raw, ts, search, False)
    if start < 0:
        start = _find_prev_closest(raw, ts, search, True)
    start = max(start, 0)

    frame_dur = np.empty(n - start, dtype=np.int64)
    frame_dur[:-1] = np.diff(ts[start:])
    frame_dur[-1] = edit_dur
    cts = raw.dts[start:] + raw.offsets[start:]
    edit_end = media_time + edit_dur
    outside = (cts < media_time) | (cts >= edit_end)
    # An audio frame straddling media_time is kept whole; the decoder trims it.
    partial = (cts < media_time) & (cts + frame_dur > media_time) & is_audio
    firsts = np.flatnonzero(~outside | partial)
    if len(firsts) == 0:
        raise Mp4IndexError(f"no sample lies inside the edit {edits}")
    j = int(firsts[0])

    # FFmpeg stops after the first key frame reaching the edit end -- the
    # second one for video with ctts, whose B-frames may still belong inside.
    past = np.flatnonzero((cts + frame_dur >= edit_end) & (raw.key[start:] | is_audio))
    need = 2 if (raw.ctts is not None and not is_audio) else 1
    count = int(past[need - 1]) + 1 if len(past) >= need else n - start
    if count <= j:
        raise Mp4IndexError(f"edit list ends before its first sample is reached: {edits}")
    keep = np.arange(start, start + count, dtype=np.int64)
    outside, partial = outside[:count], partial[:count]

    skip = int(media_time - cts[j]) if partial[j] else 0
    dts = empty - raw.dts_shift - skip + (raw.dts[keep] - raw.dts[start + j])
    if raw.handler == "vide":
        dts -= _video_shift(dts, raw, keep, ~outside, empty)
    return keep, dts, outside & ~partial


def _video_shift(
    dts: I64Array, raw: _Raw, keep: npt.NDArray[np.int64], inside: BoolArray, empty: int
) -> int:
    """FFmpeg's min_corrected_pts: moves the earliest presented frame to pts 0 (+ empty edits).

    FFmpeg keeps a running minimum that restarts whenever it is negative, so
    only candidates after the last negative one count; reproduced as such.
    """
    cand = dts[inside] + raw.offsets[keep[inside]] + raw.dts_shift
    neg = np.flatnonzero(cand < 0)
    tail = cand[int(neg[-1]) + 1 :] if len(neg) else cand
    if len(tail) == 0:
        return 0
    return max(0, int(tail.min()) - empty)
