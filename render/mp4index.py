"""Sample index of MP4/MOV files, read from the moov (and moof) boxes only.

Why this module exists
----------------------
cutfarm copies whole GOPs of 15 GB camera files and re-encodes only around the
cut points.  To plan that it needs, for every video sample, its decode and
presentation time, byte range and sync flag.  Demuxing with PyAV gives exactly
that but reads (and on network storage: transfers) the entire mdat.  All of it
is already in the sample tables of the moov box, a few MB even for an hour of
4K, so this module reads top-level box headers, seeks over mdat and parses
only moov -- and, in fragmented files, the ``moof`` boxes, a few hundred bytes
each: the cost is O(moov size + number of fragments), whatever the size of the
media.  ``select`` (or :func:`read_video_table`) limits the work to the tracks
wanted: the others are only identified, so nothing odd in them (a timecode
track, a phone's slow-motion audio edits) can make the file unindexable.

Why the timestamps are not simply the ``stts``/``ctts`` values
-------------------------------------------------------------
Everything downstream (decoding around a cut, muxing, the audio demuxer)
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
raises :class:`Mp4IndexError`, as do truncated or missing moov boxes (an
interrupted recording), sample data past the end of the file, and tables that
disagree with each other (FFmpeg papers over those in ways not worth
reproducing).  The probe (render/probe.py) turns it into a sentence for the
user: an edit list it does not support, or a damaged file.  There is no demux
fallback: demuxing a 15 GB file to index it would read every byte of it.

Fragmented files (OBS, DASH/CMAF, FFmpeg's ``frag_*`` movflags)
--------------------------------------------------------------
Their moov holds ``mvex/trex`` defaults and usually no samples; the samples
are described by ``moof/traf`` boxes (``tfhd`` defaults and base offset,
``tfdt`` decode time, ``trun`` runs) before each ``mdat``.  The moov's own
samples, if any (FFmpeg's ``frag_keyframe`` without ``empty_moov``), come
first, then the runs in file order, as FFmpeg appends them to its index.
What FFmpeg 8 does with them, and so this module:

* edit lists: mov_read_trak() switches ``advanced_editlist`` off for good at
  the first trak without samples -- a fragmented moov's, but also an empty
  track of a regular file -- so that trak and all later ones get no
  ``mov_fix_index()``: every sample is kept, nothing is flagged ``discard``,
  no video shift; timestamps only move by ``time_offset``, the media_time of
  the first non-empty edit minus the duration of a leading empty edit.  Other
  edits and rates are ignored, so any edit list is accepted there.  A
  regular track before such a trak keeps the full treatment;
* a run starts at the end of the previous run of its traf, else at the
  fragment's ``tfdt``, else where the track's last run ended (for the first:
  the moov's stts total); dts is that minus ``time_offset``;
* data offsets: ``tfhd`` base-data-offset, else the moof's start with
  default-base-is-moof, else where the fragment's previous run (of any track)
  ended; plus the trun's signed data offset.  Sample description, duration,
  size and flags default to ``tfhd``, then ``trex``; ``first_sample_flags``
  replaces the first sample's flags unless the run has per-sample flags;
* ``sync``: every audio sample; otherwise unless ``sample_is_non_sync_sample``
  or ``sample_depends_on == 1``;
* composition offsets are signed whatever the trun version; negative ones
  raise ``dts_shift``, which FFmpeg adds to every pts of the track;
* ``discard``: runs overlapping in time -- samples whose dts is not after the
  last index entry before their run;
* durations come from the runs; where one is 0 FFmpeg uses the distance to the
  next sample (tracks without composition offsets only), then
  libavformat's codec-based guess, reproduced for AAC only;
* FFmpeg ignores a run whose sample description it does not expect, a tfhd
  whose track has no ``trex`` (its runs then go to the previous traf's
  track), and the ``mfra`` (unless ``use_mfra_for``); with a ``sidx`` it
  reads fragments lazily and times runs without ``tfdt`` from the sidx.

Refused: runs of the wanted tracks that FFmpeg would drop or misattribute,
fragmented tracks with several sample descriptions, runs without ``tfdt`` in
files with a ``sidx``, and (with a sidx) negative composition offsets that
raise ``dts_shift`` after the first fragment; also ``moof`` before the moov,
fragments without ``mvex``, a last fragment cut short, raw PCM both in the
moov and in fragments, and a fragmented moov with no fragment at all (a
recording that stopped before its first one).  Tracks not selected are only
followed as far as the data offsets of selected ones depend on them.

The ``sync`` flag is the container's claim (``stss``, plus ``stps`` and
``rap `` sample groups as FFmpeg counts them): FFmpeg's index entry flag.
PyAV's ``packet.is_keyframe`` equals it except for H.264, where FFmpeg 8 takes
the packet flag from its bitstream parser (IDR or recovery point SEI) instead.
Neither is proof that a sample is a safe place to start copying: see
:mod:`render.nal` for why, and for the check that is.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from .sourcefile import SourceFile, as_source_file

__all__ = [
    "EditListEntry",
    "Mp4IndexError",
    "SampleEntry",
    "TrackTable",
    "read_sample_tables",
    "read_video_table",
]

I64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
Boxes = dict[str, list[tuple[int, int]]]


class Mp4IndexError(Exception):
    """The file cannot be indexed from its moov box (the probe says why, to the user)."""


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
    reference but outside the edit (or, in fragments, overlapping an earlier
    run), so never presented.

    ``sync`` is the container's flag, as in FFmpeg's ``index_entries``; for
    H.264, PyAV's packet flag comes from the bitstream instead (module doc).

    ``pcm_chunked`` marks sound tracks with one-tick samples (raw PCM).  An
    hour of them is 172 million samples, so FFmpeg -- and this table -- does
    not index them one by one: each entry is one of FFmpeg's packets, up to
    1024 sample frames of one chunk, and ``sample_number`` is its first sample.

    In fragmented files the moov's own samples (usually none) come first, then
    the samples of the movie fragments in file order (the last
    ``fragment_sample_count`` entries); ``sample_number`` counts on across
    them and ``stbl_sample_count`` includes them.  ``dts_shift`` is the shift
    FFmpeg adds to every pts, raised by negative composition offsets in the
    fragments.  FFmpeg does not chunk PCM in fragments: OBS's one-frame PCM
    samples are entries of their own, here as there.
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
    fragment_sample_count: int = 0
    #: tkhd's transformation matrix (a, b, u, c, d, v, x, y, w; 16.16 and 2.30 fixed
    #: point), what FFmpeg exports as the display matrix; None when it is the identity.
    display_matrix: tuple[int, ...] | None = None

    @property
    def entries(self) -> tuple[SampleEntry, ...]:
        """Alias of ``sample_entries``."""
        return self.sample_entries


# Top-level boxes a real MP4/MOV may start with.  Anything else is rejected
# before a single size field is trusted, so a text file cannot send the reader
# seeking to a random offset.
# moof/sidx: a media segment without its initialisation segment, refused later
# with a message that says so.
_FIRST_BOXES = frozenset(
    {b"ftyp", b"styp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid", b"pdin"}
    | {b"moof", b"sidx"}
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


# --------------------------------------------------------------------------
# box level


def _fourcc(raw: bytes) -> str:
    return raw.decode("latin-1")


# 0xA9 ('©') starts QuickTime metadata box names.
_BOX_NAME_BYTES = bytes(range(0x20, 0x7F)) + b"\xa9"


def _printable(raw: bytes) -> bool:
    # Deleting the allowed bytes leaves nothing: C speed, which counts in
    # files with a hundred thousand fragments.
    return not raw.translate(None, _BOX_NAME_BYTES)


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


@dataclass(frozen=True)
class _Moof:
    """One top-level movie fragment box: where it starts and its payload."""

    offset: int
    payload: bytes


@dataclass(frozen=True)
class _TopLevel:
    moov: bytes
    moofs: list[_Moof]
    sidx: bool


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
    if typ == "moof":
        raise Mp4IndexError(
            f"{name}: the last movie fragment is cut short: its 'moof' box at offset {pos} "
            f"needs {size} bytes, the file ends after {file_size - pos}; the recording was "
            "interrupted"
        )


def _read_payload(f: BinaryIO, pos: int, header: int, size: int, name: str, typ: str) -> bytes:
    if size - header > _MAX_MOOV:
        raise Mp4IndexError(f"{name}: implausible {typ} size {size} at offset {pos}")
    f.seek(pos + header)
    return f.read(size - header)


def _scan_top_level(f: BinaryIO, file_size: int, name: str) -> _TopLevel:
    """Read the moov and every moof; of all other top-level boxes only the header."""
    pos = 0
    moov: bytes | None = None
    moofs: list[_Moof] = []
    sidx = False
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
            break  # truncated media after the moov: see the sample extent check
        if typ == "moov":
            if moov is not None:
                raise Mp4IndexError(f"{name}: more than one moov box")
            moov = _read_payload(f, pos, header, size, name, typ)
        elif typ == "moof":
            if moov is None:
                # FFmpeg knows no track defaults (trex) yet and refuses the fragment.
                raise Mp4IndexError(
                    f"{name}: movie fragment ('moof' at offset {pos}) before the moov"
                )
            moofs.append(_Moof(pos, _read_payload(f, pos, header, size, name, typ)))
        sidx = sidx or typ == "sidx"
        pos += size
    if moov is None:
        raise Mp4IndexError(
            f"{name}: no moov box found; the recording was probably interrupted before its "
            "index (moov) was written"
        )
    return _TopLevel(moov, moofs, sidx)


def read_sample_tables(
    path: Path | str | SourceFile, *, select: Callable[[int, str], bool] | None = None
) -> list[TrackTable]:
    """Index the tracks of an MP4/MOV file from its moov (and moof) boxes, in ``trak`` order.

    For ordinary files that is FFmpeg's stream order (one stream per ``trak``,
    ``stream.id == track_id``).  ``select(track_id, handler)`` -- called once
    per ``trak``, in order -- picks the tracks to index; the others are read
    no further than their ``tkhd`` and ``hdlr`` (plus the entry counts FFmpeg's
    treatment of other tracks depends on), are not returned, and nothing wrong
    inside them raises.  Default: every track.

    Raises :class:`Mp4IndexError` when a wanted track cannot be indexed this
    way and the file must be demuxed instead.
    """
    return _read(as_source_file(path), select).tables


def read_video_table(path: Path | str | SourceFile, track_id: int | None = None) -> TrackTable:
    """The first video (``vide``) track, or the video track ``track_id``; nothing else is parsed."""
    source = as_source_file(path)
    chosen: list[int] = []

    def first_video(tid: int, handler: str) -> bool:
        if chosen or handler != "vide" or (track_id is not None and tid != track_id):
            return False
        chosen.append(tid)
        return True

    result = _read(source, first_video)
    if result.tables:
        return result.tables[0]
    raise Mp4IndexError(f"{source.name}: {_no_video(result, track_id)}")


@dataclass(frozen=True)
class _ReadResult:
    tables: list[TrackTable]
    tracks: list[tuple[int, str]]  # (track_id, handler) of every identifiable trak
    unreadable: list[str]  # why the other traks could not even be identified


def _no_video(result: _ReadResult, track_id: int | None) -> str:
    listing = ", ".join(f"{tid} '{h}'" for tid, h in result.tracks) or "none"
    if result.unreadable:
        listing += "; unreadable: " + "; ".join(result.unreadable)
    if track_id is None:
        return f"no video track (tracks: {listing})"
    handlers = [h for tid, h in result.tracks if tid == track_id]
    if handlers:
        return f"track {track_id} is a '{handlers[0]}' track, not video"
    return f"no track {track_id} (tracks: {listing})"


def _read(source: SourceFile, select: Callable[[int, str], bool] | None) -> _ReadResult:
    with source.open() as f:
        top = _scan_top_level(f, source.size, source.name)
    try:
        return _parse_file(top, source.size, select)
    except Mp4IndexError as exc:
        raise Mp4IndexError(f"{source.name}: {exc}") from None


def _parse_file(
    top: _TopLevel, file_size: int, select: Callable[[int, str], bool] | None
) -> _ReadResult:
    moov = top.moov
    kids = _children(moov, 0, len(moov), "moov")
    if "cmov" in kids:
        raise Mp4IndexError("compressed moov ('cmov') is not supported")
    movie_timescale = _version_field(moov, _req(kids, "mvhd", "moov"), "mvhd", 12, 20)
    trex = _parse_mvex(moov, kids)
    if top.moofs and not trex:
        # FFmpeg then has no defaults for the fragments' tracks and refuses them.
        raise Mp4IndexError("movie fragments ('moof') but no 'mvex/trex' in the moov")
    traks = _trak_headers(moov, kids, select is None)
    chosen = [t for t in traks if t.ident and (select is None or select(*t.ident))]
    tracks = [_setup_track(moov, t, movie_timescale, _legacy_edits(traks, t)) for t in chosen]
    runs = _read_fragments(top, trex, traks, tracks) if top.moofs else {}
    tables = [_assemble(t, runs.get(t.track_id), file_size) for t in tracks]
    if "mvex" in kids and not top.moofs and tables and not any(t.sample_count for t in tables):
        raise Mp4IndexError(
            "no samples: the moov announces movie fragments ('mvex') but the file has none; "
            "the recording stopped before its first fragment was written"
        )
    return _ReadResult(
        tables,
        [t.ident for t in traks if t.ident],
        [f"trak #{t.number}: {t.error}" for t in traks if t.error],
    )


# --------------------------------------------------------------------------
# track level


@dataclass(frozen=True)
class _TrakHeader:
    """What is known of a ``trak`` before deciding whether to index it."""

    number: int  # 1-based position among the traks
    box: tuple[int, int]
    ident: tuple[int, str] | None  # (track_id, handler); None if unreadable
    error: str | None
    # Entry counts as FFmpeg sees them (0 for anything unreadable: it finds none either).
    stts_entries: int
    chunks: int
    samples: int
    stsd_entries: int | None


def _trak_headers(buf: bytes, kids: Boxes, strict: bool) -> list[_TrakHeader]:
    out = []
    for number, box in enumerate(kids.get("trak", []), start=1):
        try:
            ident, error = _trak_ident(buf, box), None
        except Mp4IndexError as exc:
            if strict:
                raise Mp4IndexError(f"trak #{number}: {exc}") from None
            ident, error = None, str(exc)
        out.append(_TrakHeader(number, box, ident, error, *_stbl_counts(buf, box)))
    return out


def _trak_ident(buf: bytes, box: tuple[int, int]) -> tuple[int, str]:
    trak = _children(buf, *box, "trak")
    track_id = _version_field(buf, _req(trak, "tkhd", "trak"), "tkhd", 12, 20)
    mdia = _children(buf, *_req(trak, "mdia", "trak"), "mdia")
    hs, he = _req(mdia, "hdlr", "mdia")
    _need(hs, he, 12, "hdlr")
    # QuickTime puts the component type ('mhlr') before the subtype; both
    # layouts have the handler type at payload offset 8.
    return track_id, _fourcc(buf[hs + 8 : hs + 12])


def _stbl_counts(buf: bytes, box: tuple[int, int]) -> tuple[int, int, int, int | None]:
    """(stts entries, chunks, samples, stsd entries) of any trak, without raising.

    Other tracks matter to FFmpeg in two ways: a trak with no samples at all
    switches off its edit-list processing for itself and all later traks, and
    the number of sample descriptions decides which fragment runs it accepts.
    """

    def count(stbl: Boxes, typ: str, at: int) -> int:
        box = stbl.get(typ)
        if not box or box[0][1] - box[0][0] < at + 4:
            return 0
        value: int = struct.unpack_from(">I", buf, box[0][0] + at)[0]
        return value

    try:
        stbl = _children(buf, *_path(buf, box, ("mdia", "minf", "stbl")), "stbl")
    except Mp4IndexError:
        return 0, 0, 0, None
    chunks = count(stbl, "stco", 4) or count(stbl, "co64", 4)
    samples = count(stbl, "stsz", 8) or count(stbl, "stz2", 8)
    stsd = count(stbl, "stsd", 4) if "stsd" in stbl else None
    return count(stbl, "stts", 4), chunks, samples, stsd


def _path(buf: bytes, box: tuple[int, int], names: tuple[str, ...]) -> tuple[int, int]:
    parent = "trak"
    for name in names:
        box = _req(_children(buf, *box, parent), name, parent)
        parent = name
    return box


def _legacy_edits(traks: list[_TrakHeader], track: _TrakHeader) -> bool:
    """Whether FFmpeg has switched ``advanced_editlist`` off by the time it reads ``track``.

    mov_read_trak() does so for good at the first trak without any sample
    (stts, stco and stsz all empty: a fragmented file's moov) -- also for the
    traks after it, whatever they hold.
    """
    return any(
        t.stts_entries == 0 and t.chunks == 0 and t.samples == 0 for t in traks[: track.number]
    )


@dataclass(frozen=True)
class _MoovPart:
    """The samples of the moov's own tables as FFmpeg indexes them (mov_build_index)."""

    lay: _Layout
    ctts: I64Array | None  # per stbl sample
    dts_shift: int
    sync: BoolArray  # per stbl sample
    keep: I64Array
    dts: I64Array
    discard: BoolArray
    durations: I64Array  # of the kept entries
    pcm_chunked: bool
    track_end: int  # sum of the stts deltas: where fragments continue without tfdt


@dataclass(frozen=True)
class _Track:
    number: int  # of the trak
    track_id: int
    handler: str
    timescale: int
    movie_timescale: int
    entries: list[SampleEntry]
    edits: list[EditListEntry]
    legacy: bool
    time_offset: int
    moov: _MoovPart
    media_duration: int  # mdhd's, 0 if unknown: FFmpeg's initial stream duration
    display_matrix: tuple[int, ...] | None


def _setup_track(buf: bytes, header: _TrakHeader, movie_timescale: int, legacy: bool) -> _Track:
    assert header.ident is not None
    track_id, handler = header.ident
    try:
        trak = _children(buf, *header.box, "trak")
        edits = _parse_elst(buf, trak)
        mdia = _children(buf, *_req(trak, "mdia", "trak"), "mdia")
        timescale, media_duration = _mdhd(buf, _req(mdia, "mdhd", "mdia"))
        if timescale == 0:
            raise Mp4IndexError("mdhd timescale is 0")
        minf = _children(buf, *_req(mdia, "minf", "mdia"), "minf")
        stbl = _children(buf, *_req(minf, "stbl", "minf"), "stbl")
        entries = _parse_sample_entries(buf, _req(stbl, "stsd", "stbl"), handler)
        time_offset = _time_offset(edits, timescale, movie_timescale)
        part = _moov_part(
            buf, stbl, entries, edits, handler, (timescale, movie_timescale), legacy, time_offset
        )
    except Mp4IndexError as exc:
        raise Mp4IndexError(f"track {track_id} ({handler}): {exc}") from None
    return _Track(
        header.number,
        track_id,
        handler,
        timescale,
        movie_timescale,
        entries,
        edits,
        legacy,
        time_offset,
        part,
        media_duration,
        _tkhd_matrix(buf, _req(trak, "tkhd", "trak")),
    )


_IDENTITY = (0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


def _tkhd_matrix(buf: bytes, box: tuple[int, int]) -> tuple[int, ...] | None:
    s, e = box
    at = s + (52 if buf[s] == 1 else 40)
    if e - at < 36:
        return None
    matrix = struct.unpack_from(">9i", buf, at)
    return None if matrix == _IDENTITY else matrix


def _mdhd(buf: bytes, box: tuple[int, int]) -> tuple[int, int]:
    """(timescale, duration); an all-ones duration means unknown, 0 as FFmpeg has it."""
    s, e = box
    _need(s, e, 4, "mdhd")
    fmt, at, unknown = (">IQ", 20, (1 << 64) - 1) if buf[s] == 1 else (">II", 12, (1 << 32) - 1)
    _need(s, e, at + struct.calcsize(fmt), "mdhd")
    timescale, duration = struct.unpack_from(fmt, buf, s + at)
    return int(timescale), 0 if duration == unknown else int(duration)


def _time_offset(edits: list[EditListEntry], timescale: int, movie_timescale: int) -> int:
    """sc->time_offset of mov_build_index(): the edit list without mov_fix_index().

    It is all that applies to fragments, and to every sample once FFmpeg has
    switched advanced_editlist off.  Only a leading empty edit and the
    media_time of the edit after it count; further edits and rates are
    ignored (FFmpeg merely warns).  mov_read_mvhd() replaces a zero movie
    timescale by 1.
    """
    first = 1 if edits and edits[0].is_empty else 0
    empty = edits[0].segment_duration if first else 0
    start = edits[first].media_time if len(edits) > first else 0
    if start < 0:
        start = 0
    if empty:
        empty = _rescale(empty, timescale, movie_timescale or 1)
    return start - empty


def _moov_part(
    buf: bytes,
    stbl: Boxes,
    entries: list[SampleEntry],
    edits: list[EditListEntry],
    handler: str,
    timescales: tuple[int, int],
    legacy: bool,
    time_offset: int,
) -> _MoovPart:
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
    raw = _Raw(_exclusive_cumsum(lay.durations), lay.durations, ctts, sync, dts_shift, handler)
    if legacy:
        # No mov_fix_index(): every sample, shifted by time_offset only.
        keep = np.arange(len(raw.dts), dtype=np.int64)
        dts, discard = raw.dts - time_offset - dts_shift, np.zeros(len(keep), dtype=np.bool_)
    else:
        keep, dts, discard = _present(raw, edits, *timescales)
    durations = lay.durations[keep]
    if pcm_chunked and len(keep):
        durations = _pcm_durations(dts, int(stts[0, 0]), [] if legacy else edits, *timescales)
    return _MoovPart(
        lay=lay,
        ctts=ctts,
        dts_shift=dts_shift,
        sync=sync,
        keep=keep,
        dts=dts,
        discard=discard,
        durations=durations,
        pcm_chunked=pcm_chunked,
        track_end=int(lay.durations.sum()),
    )


def _assemble(track: _Track, runs: _Runs | None, file_size: int) -> TrackTable:
    part = track.moov
    frag = _fragment_samples(track, runs) if runs is not None and runs.count else None
    try:
        if frag is not None and part.pcm_chunked and len(part.keep):
            raise Mp4IndexError("raw PCM in both the moov and fragments is not supported")
        _check_extent(part.lay, frag, file_size)
        cols = _combine(part, frag)
        durations = _fill_durations(cols, track, frag)
    except Mp4IndexError as exc:
        raise Mp4IndexError(f"track {track.track_id} ({track.handler}): {exc}") from None
    n_frag = len(frag.dts) if frag is not None else 0
    return TrackTable(
        track_id=track.track_id,
        handler=track.handler,
        timescale=track.timescale,
        movie_timescale=track.movie_timescale,
        sample_count=len(cols.dts),
        stbl_sample_count=part.lay.stbl_count + n_frag,
        dts=read_only(cols.dts),
        pts=read_only(cols.pts),
        duration=read_only(durations),
        size=read_only(cols.size),
        offset=read_only(cols.offset),
        sync=read_only_bool(cols.sync),
        discard=read_only_bool(cols.discard),
        sample_number=read_only(cols.sample_number),
        stsd_index=read_only(cols.stsd_index),
        sample_entries=tuple(track.entries),
        edit_list=tuple(track.edits),
        dts_shift=cols.dts_shift,
        pcm_chunked=part.pcm_chunked,
        fragment_sample_count=n_frag,
        display_matrix=track.display_matrix,
    )


@dataclass(frozen=True)
class _Columns:
    dts: I64Array
    pts: I64Array
    duration: I64Array
    size: I64Array
    offset: I64Array
    sync: BoolArray
    discard: BoolArray
    sample_number: I64Array
    stsd_index: I64Array
    dts_shift: int


def _combine(part: _MoovPart, frag: _FragSamples | None) -> _Columns:
    """The moov's samples followed by the fragments', as FFmpeg appends them to its index."""
    keep, lay = part.keep, part.lay
    ctts = part.ctts[keep] if part.ctts is not None else None
    if frag is None:
        pts = part.dts + part.dts_shift + ctts if ctts is not None else part.dts.copy()
        return _Columns(
            dts=part.dts,
            pts=pts,
            duration=part.durations,
            size=lay.sizes[keep],
            offset=lay.offsets[keep],
            sync=part.sync[keep],
            discard=part.discard,
            sample_number=lay.first_sample[keep],
            stsd_index=lay.stsd_index[keep],
            dts_shift=part.dts_shift,
        )
    # Fragments raise the shift FFmpeg adds to every pts, moov samples included.
    dts_shift = max(part.dts_shift, frag.dts_shift)
    prev = int(part.dts[-1]) if len(keep) else None
    dts = np.concatenate([part.dts, frag.dts])
    offsets = ctts if ctts is not None else np.zeros(len(keep), dtype=np.int64)
    return _Columns(
        dts=dts,
        pts=dts + dts_shift + np.concatenate([offsets, frag.cts]),
        duration=np.concatenate([part.durations, frag.duration]),
        size=np.concatenate([lay.sizes[keep], frag.size]),
        offset=np.concatenate([lay.offsets[keep], frag.offset]),
        sync=np.concatenate([part.sync[keep], frag.sync]),
        discard=np.concatenate([part.discard, frag.overlaps(prev)]),
        sample_number=np.concatenate(
            [lay.first_sample[keep], lay.stbl_count + np.arange(len(frag.dts))]
        ),
        stsd_index=np.concatenate([lay.stsd_index[keep], frag.stsd_index]),
        dts_shift=dts_shift,
    )


def _check_extent(lay: _Layout, frag: _FragSamples | None, file_size: int) -> None:
    """Refuse sample data past the end of the file, whether FFmpeg would return it or not."""
    ends = lay.offsets + lay.sizes
    if frag is not None:
        ends = np.concatenate([ends, frag.offset + frag.size])
    if not len(ends) or int(ends.max()) <= file_size:
        return
    first = int(np.argmax(ends > file_size)) - len(lay.sizes)
    where = ""
    if frag is not None and first >= 0:
        where = f" (in the movie fragment at offset {int(frag.moof[first])})"
    raise Mp4IndexError(
        f"sample data extends past the end of the file ({int(ends.max())} > {file_size} "
        f"bytes){where}: the file is truncated"
    )


def read_only(a: npt.NDArray[np.integer]) -> I64Array:
    """A contiguous int64 copy that cannot be written to (tables are shared freely)."""
    out = np.ascontiguousarray(a, dtype=np.int64)
    out.flags.writeable = False
    return out


def read_only_bool(a: BoolArray) -> BoolArray:
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
    if (e - s - 8) // entry_size != count:
        # FFmpeg then reads as many entries as fit, garbage included.
        raise Mp4IndexError(f"elst declares {count} edits but has room for more")
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


# AAC sampling frequency indices (ISO 14496-3).
_AAC_RATES = (
    96000,
    88200,
    64000,
    48000,
    44100,
    32000,
    24000,
    22050,
    16000,
    12000,
    11025,
    8000,
    7350,
)
# Audio object types with a GASpecificConfig whose frameLengthFlag picks 1024 or 960.
_AAC_GA_TYPES = frozenset({1, 2, 3, 4, 6, 7, 17, 19, 20, 21, 22})


def _fill_durations(cols: _Columns, track: _Track, frag: _FragSamples | None) -> I64Array:
    """Durations of the samples stored without one (0), as FFmpeg 8 fills them in.

    Without composition offsets (no ctts, no trun offsets) mov_read_packet()
    takes the distance to the next index entry, for the last one to the
    stream duration.  What is still 0 libavformat's compute_pkt_fields()
    guesses from the codec: reproduced for AAC (frame size over sample rate,
    rounded down), left 0 otherwise (video: from a frame rate FFmpeg
    estimates while probing).
    """
    durations = cols.duration
    zero = durations == 0
    if track.moov.pcm_chunked or not zero.any():
        return durations
    durations = durations.copy()
    if track.moov.ctts is None and (frag is None or not frag.has_cts):
        following = np.append(cols.dts[1:], _stream_duration(track, frag)) - cols.dts
        fill = zero & (following >= 0)
        durations[fill] = following[fill]
        zero = durations == 0
    if track.handler == "soun" and zero.any():
        ticks = np.array([_aac_frame_ticks(e, track.timescale) or 0 for e in track.entries])
        if len(ticks):
            durations[zero] = ticks[np.clip(cols.stsd_index[zero], 0, len(ticks) - 1)]
    return durations


def _stream_duration(track: _Track, frag: _FragSamples | None) -> int:
    """FFmpeg's st->duration: mdhd, capped by the stts total and the edit, raised by fragments."""
    duration = track.media_duration
    if track.moov.lay.stbl_count:
        duration = min(duration, track.moov.track_end)
        if track.edits and not track.legacy:
            scale = track.timescale, track.movie_timescale or 1
            duration = min(duration, sum(_rescale(e.segment_duration, *scale) for e in track.edits))
    if frag is not None:
        duration = max(duration, frag.end_raw)
    return duration


def _aac_frame_ticks(entry: SampleEntry, timescale: int) -> int | None:
    """One AAC frame in track ticks: 1024 (or 960) samples of the core rate.

    SBR doubles both the decoder's frame size and its rate, so the core
    rate of the AudioSpecificConfig gives the same result.
    """
    if entry.config_type != "esds" or not entry.config:
        return None
    asc = _esds_decoder_info(entry.config)
    frame = _asc_frame(asc) if asc else None
    if frame is None:
        return None
    samples, rate = frame
    return samples * timescale // rate


def _esds_decoder_info(esds: bytes) -> bytes | None:
    """The DecoderSpecificInfo (AudioSpecificConfig) of an AAC esds payload."""
    es = _descriptor(esds, 4, 0x03)
    if es is None or es[1] - es[0] < 3:
        return None
    pos, flags = es[0] + 3, esds[es[0] + 2]
    if flags & 0x80:  # streamDependenceFlag
        pos += 2
    if flags & 0x40:  # URL_Flag
        pos += 1 + (esds[pos] if pos < len(esds) else 0)
    if flags & 0x20:  # OCRstreamFlag
        pos += 2
    config = _descriptor(esds, pos, 0x04)
    # objectTypeIndication: MPEG-4 AAC, or MPEG-2 AAC main/LC/SSR
    if (
        config is None
        or config[1] - config[0] < 13
        or esds[config[0]] not in (0x40, 0x66, 0x67, 0x68)
    ):
        return None
    info = _descriptor(esds, config[0] + 13, 0x05)
    return esds[info[0] : info[1]] if info else None


def _descriptor(buf: bytes, pos: int, tag: int) -> tuple[int, int] | None:
    """(start, end) of the MPEG-4 descriptor with ``tag`` at ``pos``."""
    if pos >= len(buf) or buf[pos] != tag:
        return None
    size, pos = 0, pos + 1
    for _ in range(4):
        if pos >= len(buf):
            return None
        size = size << 7 | (buf[pos] & 0x7F)
        pos += 1
        if not buf[pos - 1] & 0x80:
            break
    return pos, min(pos + size, len(buf))


def _asc_frame(asc: bytes) -> tuple[int, int] | None:
    """(samples per frame, core sample rate) of an AudioSpecificConfig, if plain AAC."""
    value, avail = int.from_bytes(asc, "big"), len(asc) * 8

    def read(n: int) -> int:
        nonlocal avail
        if avail < n:
            raise ValueError("short AudioSpecificConfig")
        avail -= n
        return (value >> avail) & ((1 << n) - 1)

    def object_type() -> int:
        aot = read(5)
        return 32 + read(6) if aot == 31 else aot

    def rate() -> int | None:
        index = read(4)
        if index == 15:
            return read(24)
        return _AAC_RATES[index] if index < len(_AAC_RATES) else None

    try:
        aot, core = object_type(), rate()
        read(4)  # channel configuration
        if aot in (5, 29):  # SBR / PS: the core object type follows
            rate()
            aot = object_type()
        if aot not in _AAC_GA_TYPES or not core:
            return None
        return (960 if read(1) else 1024), core
    except ValueError:
        return None


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


# --------------------------------------------------------------------------
# fragments: moof/traf/tfhd/tfdt/trun as mov.c reads them

# tfhd flags
_TFHD_BASE_OFFSET = 0x000001
_TFHD_STSD = 0x000002
_TFHD_DURATION = 0x000008
_TFHD_SIZE = 0x000010
_TFHD_FLAGS = 0x000020
_TFHD_BASE_IS_MOOF = 0x020000
# trun flags; per sample: duration, size, flags, composition offset, in this order
_TRUN_DATA_OFFSET = 0x001
_TRUN_FIRST_FLAGS = 0x004
_TRUN_DURATION, _TRUN_SIZE, _TRUN_FLAGS, _TRUN_CTS = 0x100, 0x200, 0x400, 0x800
_TRUN_FIELDS = (_TRUN_DURATION, _TRUN_SIZE, _TRUN_FLAGS, _TRUN_CTS)
# Sample flags FFmpeg reads as "not a key frame": sample_is_non_sync_sample,
# or sample_depends_on == 1 (depends on others).
_NOT_KEY = 0x00010000 | 0x01000000
# A run without per-sample fields costs no bytes whatever its count; more
# samples than this (6 minutes of 48 kHz PCM, one frame a sample, as OBS
# writes it) in one run is a corrupt count, not something to allocate.
_MAX_RUN = 1 << 24


@dataclass(frozen=True)
class _Trex:
    stsd_id: int
    duration: int
    size: int
    flags: int


def _parse_mvex(buf: bytes, kids: Boxes) -> dict[int, _Trex]:
    mvex = _opt(kids, "mvex", "moov")
    if mvex is None:
        return {}
    out: dict[int, _Trex] = {}
    for s, e in _children(buf, *mvex, "mvex").get("trex", []):
        _need(s, e, 24, "trex")
        track_id, stsd_id, duration, size, flags = struct.unpack_from(">5I", buf, s + 4)
        out.setdefault(track_id, _Trex(stsd_id, duration, size, flags))  # FFmpeg takes the first
    return out


@dataclass
class _Runs:
    """The accepted truns of one indexed track, as read.

    Plain lists, per run and per sample, that numpy turns into arrays once
    all fragments are read: per-run numpy calls would cost more than the
    parsing in files with a fragment per frame.
    """

    raw_start: list[int] = field(default_factory=list)  # media time of the first sample
    offset_start: list[int] = field(default_factory=list)
    stsd_id: list[int] = field(default_factory=list)
    moof: list[int] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    durations: list[int] = field(default_factory=list)  # per sample from here on
    sizes: list[int] = field(default_factory=list)
    flags: list[int] = field(default_factory=list)
    cts: list[int] = field(default_factory=list)  # unsigned, as stored
    sidx: bool = False  # the file has a sidx: FFmpeg reads its fragments lazily
    has_cts: bool = False  # a run carried composition offsets (FFmpeg's ctts_count > 0)

    @property
    def count(self) -> int:
        return len(self.raw_start)


@dataclass
class _Stream:
    """FFmpeg's view of one track while it reads fragments."""

    stsd_entries: int | None  # None: unknown (a track not indexed, unreadable)
    track_end: int  # media time a run continues from when nothing else says
    runs: _Runs | None  # None: not indexed, only its effect on data offsets matters

    def accepts(self, stsd_id: int) -> bool | None:
        """mov_read_trun()'s pseudo_stream_id test; None when it cannot be known."""
        if self.stsd_entries is None or stsd_id < 0:
            return None
        return self.stsd_entries > 1 or stsd_id == 1


@dataclass(frozen=True)
class _Tfhd:
    """mov.c's MOVFragment after a tfhd: the defaults of the runs that follow."""

    track_id: int
    base: int | None  # None: unknown (follows a run that could not be read)
    stsd_id: int
    duration: int
    size: int
    sample_flags: int


@dataclass(frozen=True)
class _TrunHead:
    count: int
    data_offset: int
    first_flags: int
    pos: int  # where the per-sample records start
    present: tuple[int, ...]  # per-sample fields, in record order


def _trun_head(buf: bytes, s: int, e: int, default_flags: int) -> _TrunHead:
    _need(s, e, 8, "trun")
    vf, count = struct.unpack_from(">II", buf, s)
    flags = vf & 0xFFFFFF
    pos, data_offset, first_flags = s + 8, 0, default_flags
    if flags & _TRUN_DATA_OFFSET:
        _need(pos, e, 4, "trun")
        (data_offset,) = struct.unpack_from(">i", buf, pos)  # signed, as FFmpeg reads it
        pos += 4
    if flags & _TRUN_FIRST_FLAGS:
        _need(pos, e, 4, "trun")
        (first_flags,) = struct.unpack_from(">I", buf, pos)
        pos += 4
    present = tuple(bit for bit in _TRUN_FIELDS if flags & bit)
    _need(pos, e, count * 4 * len(present), "trun")
    if count > _MAX_RUN:
        raise Mp4IndexError(f"implausible trun of {count} samples")
    return _TrunHead(count, data_offset, first_flags, pos, present)


def _trun_records(buf: bytes, head: _TrunHead) -> tuple[int, ...]:
    """The per-sample fields of a run, sample after sample."""
    if not head.present:
        return ()
    return struct.unpack_from(f">{head.count * len(head.present)}I", buf, head.pos)


def _trun_field(records: tuple[int, ...], head: _TrunHead, bit: int, default: int) -> list[int]:
    if bit not in head.present:
        return [default] * head.count
    width = len(head.present)
    return list(records[head.present.index(bit) :: width])


class _FragmentReader:
    """mov_read_moof() with the tfhd, tfdt and trun handlers, for one moof.

    The state mirrors mov.c: the current tfhd (MOVFragment), the running
    implicit data offset, and per track the fragment's tfdt and where its
    previous run ended.  Only indexed tracks' runs are parsed in full; for
    the others only how far their data reaches matters, and only if a later
    run relies on the implicit offset.
    """

    def __init__(self, moof: _Moof, trex: dict[int, _Trex], streams: dict[int, _Stream]) -> None:
        self.moof, self.buf, self.trex, self.streams = moof, moof.payload, trex, streams
        self.implicit: int | None = moof.offset
        self.tfhd: _Tfhd | None = None
        self.skip = False  # the current traf names a track without trex
        self.tfdt: dict[int, int] = {}
        self.next_raw: dict[int, int] = {}

    def read(self) -> None:
        try:
            self._boxes(0, len(self.buf), "moof")
        except Mp4IndexError as exc:
            raise Mp4IndexError(f"movie fragment at offset {self.moof.offset}: {exc}") from None

    def _boxes(self, start: int, end: int, parent: str) -> None:
        for typ, s, e in _iter_boxes(self.buf, start, end, parent):
            if typ == "traf":
                self._boxes(s, e, typ)
            elif typ == "tfhd":
                self._read_tfhd(s, e)
            elif typ == "tfdt":
                self._read_tfdt(s, e)
            elif typ == "trun":
                self._read_trun(s, e)

    def _indexed(self, track_id: int) -> bool:
        stream = self.streams.get(track_id)
        return stream is not None and stream.runs is not None

    def _read_tfhd(self, s: int, e: int) -> None:
        _need(s, e, 8, "tfhd")
        vf, track_id = struct.unpack_from(">II", self.buf, s)
        if track_id == 0:
            raise Mp4IndexError("tfhd with track_ID 0")
        trex = self.trex.get(track_id)
        if trex is None:
            # FFmpeg ignores this tfhd, so the runs that follow go to the
            # previous traf's track, if any.
            prev = self.tfhd
            if prev is not None and self._indexed(prev.track_id):
                raise Mp4IndexError(
                    f"traf of track {track_id}, which has no 'trex', follows one of track "
                    f"{prev.track_id}: FFmpeg would add its samples to track {prev.track_id}"
                )
            self.skip = True
            return
        self.skip = False
        self.next_raw.pop(track_id, None)
        try:
            self.tfhd = self._tfhd_fields(s + 8, e, track_id, vf & 0xFFFFFF, trex)
        except Mp4IndexError:
            if self._indexed(track_id):
                raise
            self.tfhd = _Tfhd(track_id, None, -1, 0, 0, 0)

    def _tfhd_fields(self, pos: int, e: int, track_id: int, flags: int, trex: _Trex) -> _Tfhd:
        base = self.moof.offset if flags & _TFHD_BASE_IS_MOOF else self.implicit
        if flags & _TFHD_BASE_OFFSET:
            _need(pos, e, 8, "tfhd")
            (base,) = struct.unpack_from(">Q", self.buf, pos)
            pos += 8
        values = []
        for bit, default in (
            (_TFHD_STSD, trex.stsd_id),
            (_TFHD_DURATION, trex.duration),
            (_TFHD_SIZE, trex.size),
            (_TFHD_FLAGS, trex.flags),
        ):
            if flags & bit:
                _need(pos, e, 4, "tfhd")
                (default,) = struct.unpack_from(">I", self.buf, pos)
                pos += 4
            values.append(default)
        return _Tfhd(track_id, base, *values)

    def _current(self, box: str) -> _Tfhd:
        if self.tfhd is None:
            raise Mp4IndexError(f"'{box}' before any 'tfhd'")
        return self.tfhd

    def _read_tfdt(self, s: int, e: int) -> None:
        if self.skip:
            return
        tfhd = self._current("tfdt")
        stream = self.streams.get(tfhd.track_id)
        if stream is None or stream.runs is None or not stream.accepts(tfhd.stsd_id):
            return
        _need(s, e, 8, "tfdt")
        if self.buf[s] == 1:
            _need(s, e, 12, "tfdt")
            (value,) = struct.unpack_from(">q", self.buf, s + 4)
        else:
            (value,) = struct.unpack_from(">I", self.buf, s + 4)
        self.tfdt[tfhd.track_id] = stream.track_end = int(value)

    def _read_trun(self, s: int, e: int) -> None:
        if self.skip:
            self.implicit = None
            return
        tfhd = self._current("trun")
        stream = self.streams.get(tfhd.track_id)
        if stream is None:
            return  # FFmpeg has no stream for it and skips the run entirely
        if stream.runs is None:
            self._pass_over(s, e, tfhd, stream.accepts(tfhd.stsd_id))
        else:
            try:
                self._index_run(s, e, tfhd, stream, stream.runs)
            except Mp4IndexError as exc:
                raise Mp4IndexError(f"track {tfhd.track_id}: {exc}") from None

    def _pass_over(self, s: int, e: int, tfhd: _Tfhd, accepted: bool | None) -> None:
        """A run of a track not indexed: only where its data ends can matter."""
        if accepted is False:
            return
        try:
            head = _trun_head(self.buf, s, e, tfhd.sample_flags)
        except Mp4IndexError:
            self.implicit = None
            return
        if head.count == 0:
            return
        if accepted is None or tfhd.base is None:
            self.implicit = None
            return
        sizes = _trun_field(_trun_records(self.buf, head), head, _TRUN_SIZE, tfhd.size)
        self.implicit = tfhd.base + head.data_offset + sum(sizes)

    def _index_run(self, s: int, e: int, tfhd: _Tfhd, stream: _Stream, runs: _Runs) -> None:
        if stream.stsd_entries is not None and stream.stsd_entries > 1:
            raise Mp4IndexError(
                f"fragmented MP4 track with {stream.stsd_entries} sample descriptions "
                "is not supported"
            )
        if not stream.accepts(tfhd.stsd_id):
            raise Mp4IndexError(
                f"run of sample description {tfhd.stsd_id}, the track has "
                f"{stream.stsd_entries}: FFmpeg would drop its samples"
            )
        if tfhd.base is None:
            raise Mp4IndexError(
                "the run's data offset follows a run of another track that cannot be read"
            )
        head = _trun_head(self.buf, s, e, tfhd.sample_flags)
        if head.count == 0:
            return
        raw = self._run_start(tfhd.track_id, stream, runs)
        records = _trun_records(self.buf, head)
        durations = _trun_field(records, head, _TRUN_DURATION, tfhd.duration)
        sizes = _trun_field(records, head, _TRUN_SIZE, tfhd.size)
        if 0 in sizes:
            raise Mp4IndexError("trun has a sample of size 0 (FFmpeg refuses the file)")
        flags = _trun_field(records, head, _TRUN_FLAGS, tfhd.sample_flags)
        if _TRUN_FLAGS not in head.present:
            flags[0] = head.first_flags
        offset = tfhd.base + head.data_offset
        if offset < 0:
            raise Mp4IndexError(f"run data offset {offset} is negative")
        runs.raw_start.append(raw)
        runs.offset_start.append(offset)
        runs.stsd_id.append(tfhd.stsd_id)
        runs.moof.append(self.moof.offset)
        runs.counts.append(head.count)
        runs.durations += durations
        runs.sizes += sizes
        runs.flags += flags
        runs.cts += _trun_field(records, head, _TRUN_CTS, 0)
        runs.has_cts = runs.has_cts or _TRUN_CTS in head.present
        self.next_raw[tfhd.track_id] = stream.track_end = raw + sum(durations)
        self.implicit = offset + sum(sizes)

    def _run_start(self, track_id: int, stream: _Stream, runs: _Runs) -> int:
        """Media time of a run's first sample: mov_read_trun()'s choice, use_tfdt being on."""
        if track_id in self.next_raw:  # a later run of the same traf
            return self.next_raw[track_id]
        if track_id in self.tfdt:
            return self.tfdt[track_id]
        if runs.sidx:
            raise Mp4IndexError(
                "run without tfdt in a file with 'sidx': FFmpeg then times it from the "
                "sidx, which is not reproduced"
            )
        return stream.track_end


def _read_fragments(
    top: _TopLevel, trex: dict[int, _Trex], traks: list[_TrakHeader], tracks: list[_Track]
) -> dict[int, _Runs]:
    streams = _fragment_streams(traks, tracks, top.sidx)
    for moof in top.moofs:
        _FragmentReader(moof, trex, streams).read()
    return {tid: s.runs for tid, s in streams.items() if s.runs is not None}


def _fragment_streams(
    traks: list[_TrakHeader], tracks: list[_Track], sidx: bool
) -> dict[int, _Stream]:
    """One stream per track_ID, the first trak's, as FFmpeg looks them up."""
    indexed = {t.number: t for t in tracks}
    streams: dict[int, _Stream] = {}
    for trak in traks:
        if trak.ident is None:
            continue
        track_id = trak.ident[0]
        track = indexed.get(trak.number)
        if track_id in streams:
            if track is not None:
                raise Mp4IndexError(
                    f"two traks have track_ID {track_id}: fragments cannot be assigned"
                )
            continue
        if track is None:
            streams[track_id] = _Stream(trak.stsd_entries, 0, None)
        else:
            streams[track_id] = _Stream(len(track.entries), track.moov.track_end, _Runs(sidx=sidx))
    return streams


@dataclass(frozen=True)
class _FragSamples:
    """All fragment samples of one track, in FFmpeg's index order."""

    dts: I64Array
    duration: I64Array
    size: I64Array
    offset: I64Array
    cts: I64Array
    sync: BoolArray
    stsd_index: I64Array
    moof: I64Array
    run_of: I64Array  # run number of each sample
    run_last: I64Array  # index of each run's last sample
    dts_shift: int
    has_cts: bool  # some run carries composition offsets
    end_raw: int  # furthest media time a run reached: FFmpeg's stream duration

    def overlaps(self, prev: int | None) -> BoolArray:
        """AVINDEX_DISCARD_FRAME: samples not after the index entry before their run."""
        before = np.empty(len(self.run_last), dtype=np.int64)
        before[0] = np.iinfo(np.int64).min if prev is None else prev
        before[1:] = self.dts[self.run_last[:-1]]
        overlap: BoolArray = self.dts <= before[self.run_of]
        return overlap


def _fragment_samples(track: _Track, runs: _Runs) -> _FragSamples:
    counts = np.array(runs.counts, dtype=np.int64)
    run_of = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    first = _exclusive_cumsum(counts)
    durations = np.array(runs.durations, dtype=np.int64)
    sizes = np.array(runs.sizes, dtype=np.int64)
    cts = np.array(runs.cts, dtype=np.int64)
    cts[cts >= 1 << 31] -= 1 << 32  # signed whatever the trun version, as FFmpeg stores them
    into_run = _exclusive_cumsum(durations)
    into_run -= into_run[first][run_of]
    dts = np.asarray(runs.raw_start, dtype=np.int64)[run_of] - track.time_offset + into_run
    bytes_in = _exclusive_cumsum(sizes)
    bytes_in -= bytes_in[first][run_of]
    offsets = np.asarray(runs.offset_start, dtype=np.int64)[run_of] + bytes_in
    if track.handler == "soun":
        sync = np.ones(len(dts), dtype=np.bool_)
    else:
        sync = (np.array(runs.flags, dtype=np.int64) & _NOT_KEY) == 0
    return _FragSamples(
        dts=dts,
        duration=durations,
        size=sizes,
        offset=offsets,
        cts=cts,
        sync=sync,
        stsd_index=np.asarray(runs.stsd_id, dtype=np.int64)[run_of] - 1,
        moof=np.asarray(runs.moof, dtype=np.int64)[run_of],
        run_of=run_of,
        run_last=first + counts - 1,
        dts_shift=_trun_dts_shift(cts, first, track.moov.dts_shift, runs.sidx),
        has_cts=runs.has_cts,
        end_raw=int((np.asarray(runs.raw_start) + np.add.reduceat(durations, first)).max()),
    )


def _trun_dts_shift(cts: I64Array, first: I64Array, moov_shift: int, lazy: bool) -> int:
    """sc->dts_shift once FFmpeg has read the runs (mov_update_dts_shift() per sample).

    FFmpeg adds the shift current when it returns a packet.  It reads all
    fragments while opening the file -- unless a sidx lets it read them one
    by one, and then a shift that still grows later is not reproduced.
    """
    per_run = np.maximum(-np.minimum.reduceat(cts, first), 0)
    per_run = np.minimum(per_run, (1 << 31) - 1)  # INT_MIN becomes INT_MAX
    running = np.maximum(np.maximum.accumulate(per_run), moov_shift)
    final = int(running[-1])
    if lazy and int(running[0]) != final:
        raise Mp4IndexError(
            "negative composition offsets grow from fragment to fragment in a file with "
            "'sidx': FFmpeg's pts then depend on the order it reads fragments in"
        )
    return final
