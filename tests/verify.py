"""Checks of an exported file against its plan: frames, bytes, timestamps, audio sync."""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import av
import av.logging
import numpy as np
import numpy.typing as npt

from render import nal
from render.bitstream import SampleFormat, split
from render.engine import Prepared
from render.plan import CopyPiece, EncodePiece
from render.sourcefile import SourceFile
from tests import mediagen as mg

AUDIO_FRAME_SECONDS = 1024 / 48000


@dataclass
class Report:
    frames: int
    errors: int
    wrong: list[tuple[int, object, object]]
    copied_checked: int
    max_click_offset: float | None
    clicks_checked: int


def expected_stamps(prep: Prepared, cameras: Mapping[int, int]) -> list[tuple[int, int]]:
    """(camera, source frame) for every output frame of a copy-mode plan."""
    out: list[tuple[int, int]] = []
    for cut in prep.plan.cuts:
        out.extend((cameras[cut.source], f) for f in range(cut.first, cut.stop))
    return out


def check_frames(path: Path, expected: list[tuple[int, int]]) -> mg.DecodedVideo:
    decoded = mg.decode_video(path)
    wrong = [
        (i, got, exp)
        for i, (got, exp) in enumerate(zip(decoded.stamps, expected, strict=False))
        if got != exp
    ]
    assert decoded.errors == 0, decoded.messages[:5]
    assert len(decoded.stamps) == len(expected), (len(decoded.stamps), len(expected))
    assert not wrong, wrong[:10]
    return decoded


def check_copied_bytes(path: Path, prep: Prepared) -> int:
    """Every copied sample is its camera sample; returns how many were checked.

    What the muxer may change (render/bitstream.py): parameter sets leave the samples (they
    are in the sample description, or in-band at keyframes in the fallback), and where the
    camera's PPS got another id each slice names the new one. Such a slice is checked with
    FFmpeg's own reading of both headers (trace_headers): every field but the PPS id is
    the camera's, and the slice data after the header is bit for bit the camera's.
    """
    expected: list[tuple[int, int] | None] = []
    for piece in prep.plan.pieces:
        if isinstance(piece, CopyPiece):
            idx = prep.sources[piece.source].video.index
            expected.extend((piece.source, int(d)) for d in piece.samples(idx))
        else:
            expected.extend([None] * piece.frames)
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        out_fmt = SampleFormat.of(prep.plan.out_format.codec,
                                  bytes(stream.codec_context.extradata or b""))
        packets = [bytes(p) for p in c.demux(stream) if p.size]
    assert len(packets) == len(expected)
    traces = _LazyTraces(path)
    checked = 0
    handles = {i: s.file.open() for i, s in prep.sources.items()}
    try:
        for k, (data, exp) in enumerate(zip(packets, expected, strict=True)):
            if exp is None:
                continue
            src = prep.sources[exp[0]]
            fh = handles[exp[0]]
            fh.seek(int(src.video.offset[exp[1]]))
            original = fh.read(int(src.video.index.size[exp[1]]))
            src_fmt = SampleFormat(src.video.format.codec, src.video.nal_length_size)
            _same_sample(data, out_fmt, original, src_fmt,
                         partial(traces.pair, k, src.file, exp[1]))
            checked += 1
    finally:
        for fh in handles.values():
            fh.close()
    return checked


_SET_TYPES = {"h264": {7, 8}, "hevc": {32, 33, 34}}
_SLICE_PPS = {"h264": "pic_parameter_set_id", "hevc": "slice_pic_parameter_set_id"}
_ALIGNMENT = {"cabac_alignment_one_bit", "alignment_bit_equal_to_one",
              "alignment_bit_equal_to_zero"}


def _kind(codec: str, unit: bytes) -> int:
    return nal.nal_type_h264(unit) if codec == "h264" else nal.nal_type_hevc(unit)


def _is_slice(codec: str, kind: int) -> bool:
    return 1 <= kind <= 5 if codec == "h264" else kind < 32


def _same_sample(data: bytes, out_fmt: SampleFormat, original: bytes, src_fmt: SampleFormat,
                 traced: Callable[[], tuple[list[TracedUnit], list[TracedUnit]]]) -> None:
    codec = src_fmt.codec
    out_units = [u for u in split(data, out_fmt) if _kind(codec, u) not in _SET_TYPES[codec]]
    src_units = [u for u in split(original, src_fmt)
                 if _kind(codec, u) not in _SET_TYPES[codec]]
    assert [_kind(codec, u) for u in out_units] == [_kind(codec, u) for u in src_units]
    changed = [i for i, (a, b) in enumerate(zip(out_units, src_units, strict=True)) if a != b]
    if not changed:
        return
    assert all(_is_slice(codec, _kind(codec, src_units[i])) for i in changed), (
        "a copied sample's non-slice NAL unit changed")
    out_trace, src_trace = traced()
    out_slices = [u for u in out_trace if u.is_slice]
    src_slices = [u for u in src_trace if u.is_slice]
    slices = [i for i, u in enumerate(src_units) if _is_slice(codec, _kind(codec, u))]
    assert len(out_slices) == len(src_slices) == len(slices)
    for n, i in enumerate(slices):
        if i in changed:
            _same_slice_but_pps_id(codec, out_units[i], out_slices[n], src_units[i],
                                   src_slices[n])


def _same_slice_but_pps_id(codec: str, out: bytes, out_hdr: TracedUnit, src: bytes,
                           src_hdr: TracedUnit) -> None:
    skip = _ALIGNMENT | {_SLICE_PPS[codec]}
    assert out_hdr.values(skip) == src_hdr.values(skip), "a slice header field changed"
    assert out_hdr.value(_SLICE_PPS[codec]) != src_hdr.value(_SLICE_PPS[codec])
    assert _tail(codec, out, out_hdr.end) == _tail(codec, src, src_hdr.end), (
        "slice data changed")


def _tail(codec: str, unit: bytes, start: int) -> tuple[int, int]:
    """The RBSP bits from ``start`` up to its last 1 (the stop bit), as (bits, count)."""
    head = 1 if codec == "h264" else 2
    rbsp = unit[:head] + unit[head:].replace(b"\x00\x00\x03", b"\x00\x00")
    bits = int.from_bytes(rbsp, "big") & ((1 << (8 * len(rbsp) - start)) - 1)
    zeros = (bits & -bits).bit_length() - 1
    return bits >> zeros, 8 * len(rbsp) - start - zeros


# ----------------------------------------------------------- tools we did not write

_ELEMENT = re.compile(r"^(\d+)\s+(\S+)\s+([01]+) = (-?\d+)$")
_SET_TITLES = {"Video Parameter Set": "vps", "Sequence Parameter Set": "sps",
               "Picture Parameter Set": "pps"}
_SLICE_TITLES = {"Slice Header", "Slice Segment Header"}
#: Where FFmpeg's trace names each set's own id and the id of the set it refers to.
_ID_FIELDS = {
    ("h264", "sps"): ("seq_parameter_set_id", None),
    ("h264", "pps"): ("pic_parameter_set_id", ("sps", "seq_parameter_set_id")),
    ("hevc", "vps"): ("vps_video_parameter_set_id", None),
    ("hevc", "sps"): ("sps_seq_parameter_set_id", ("vps", "sps_video_parameter_set_id")),
    ("hevc", "pps"): ("pps_pic_parameter_set_id", ("sps", "pps_seq_parameter_set_id")),
}


@dataclass
class TracedUnit:
    """One NAL unit as FFmpeg's trace_headers bitstream filter prints it."""

    title: str
    fields: list[tuple[int, str, str, int]]  # (bit position, name, bits, value)

    def value(self, name: str) -> int:
        return next(v for _, n, _, v in self.fields if n == name)

    def values(self, skip: set[str] | frozenset[str] = frozenset()) -> list[tuple[str, int]]:
        return [(n, v) for _, n, _, v in self.fields if n not in skip]

    @property
    def end(self) -> int:
        pos, _, bits, _ = self.fields[-1]
        return pos + len(bits)

    @property
    def set_kind(self) -> str | None:
        return _SET_TITLES.get(self.title)

    @property
    def is_slice(self) -> bool:
        return self.title in _SLICE_TITLES


@dataclass
class Trace:
    extradata: list[TracedUnit]
    packets: list[list[TracedUnit]]


def ffmpeg_trace(path: Path | SourceFile) -> Trace:
    """FFmpeg's reading of every header of a file's video: its trace_headers bitstream
    filter parses the sample description's record and each packet with FFmpeg's own
    coded-bitstream code and logs every syntax element, which this collects."""
    level = av.logging.get_level()
    av.logging.set_level(av.logging.INFO)
    try:
        target = str(path) if isinstance(path, Path) else path.demux_input()
        with av.logging.Capture(True) as logs, av.open(target, "r") as c:
            stream = c.streams.video[0]
            bsf = av.bitstream.BitStreamFilterContext("trace_headers", stream)
            for packet in c.demux(stream):
                if packet.size:
                    bsf.filter(packet)
    finally:
        av.logging.set_level(level)
    return _parse_trace(m for lvl, name, m in logs if name == "trace_headers")


def _parse_trace(lines: Iterable[str]) -> Trace:
    trace = Trace([], [])
    target = trace.extradata
    title = ""
    unit: TracedUnit | None = None
    for raw in lines:
        line = raw.strip()
        if line.startswith("Packet:"):
            target = []
            trace.packets.append(target)
            continue
        m = _ELEMENT.match(line)
        if m is None:
            title = line
            continue
        pos, name = int(m[1]), m[2]
        if name == "forbidden_zero_bit" and pos == 0:
            unit = TracedUnit(title, [])
            target.append(unit)
        assert unit is not None
        unit.fields.append((pos, name, m[3], int(m[4])))
    return trace


class _LazyTraces:
    """FFmpeg traces of the output and of each source, made when first needed."""

    def __init__(self, output: Path) -> None:
        self.path = output
        self._traces: dict[Path | SourceFile, Trace] = {}

    def _get(self, path: Path | SourceFile) -> Trace:
        if path not in self._traces:
            self._traces[path] = ffmpeg_trace(path)
        return self._traces[path]

    def pair(self, k: int, path: Path | SourceFile, dec: int
             ) -> tuple[list[TracedUnit], list[TracedUnit]]:
        """Output packet ``k`` and sample ``dec`` of the source at ``path``."""
        return self._get(self.path).packets[k], self._get(path).packets[dec]


def traced_sets(codec: str, units: Iterable[TracedUnit]) -> dict[str, dict[int, TracedUnit]]:
    """kind -> id -> set; two different sets under one id fail."""
    sets: dict[str, dict[int, TracedUnit]] = {"vps": {}, "sps": {}, "pps": {}}
    for u in units:
        kind = u.set_kind
        if kind is None:
            continue
        own = u.value(_ID_FIELDS[(codec, kind)][0])
        seen = sets[kind].setdefault(own, u)
        assert seen.values() == u.values(), f"two different {kind.upper()}s with id {own}"
    return sets


@dataclass
class SampleEntry:
    """The video sample description as an independent parser (pymp4) reads it."""

    count: int  # sample descriptions in the track's stsd
    format: bytes
    profile: int
    compatibility: int
    level: int
    arrays: dict[int, tuple[bool | None, list[bytes]]]  # NAL type -> (complete, units)


def sample_entry(path: Path) -> SampleEntry:
    """stsd of the first video track, parsed by pymp4 (and, for hvcC's NAL arrays, which
    pymp4 leaves raw, by a construct definition of ISO/IEC 14496-15 8.3.3.1)."""
    from pymp4.parser import AVC1SampleEntryBox, Box  # type: ignore[import-untyped]

    data = path.read_bytes()
    pos = 0
    while data[pos + 4:pos + 8] != b"moov":
        pos += int.from_bytes(data[pos:pos + 4], "big")
    moov = Box.parse(data[pos:pos + int.from_bytes(data[pos:pos + 4], "big")])
    stsd = next(b for b in _boxes(moov) if b.type == b"stsd" and _is_video(b))
    entry = stsd.entries[0]
    if entry.format != b"avc1":  # pymp4 reads avc1 entries only; hvc1 has the same layout
        entry = AVC1SampleEntryBox.parse(entry.data)
        entry.format = stsd.entries[0].format
    rec = entry.avc_data
    arrays: dict[int, tuple[bool | None, list[bytes]]]
    if rec.type == b"avcC":
        arrays = {7: (None, list(rec.sps)), 8: (None, list(rec.pps))}
        return SampleEntry(len(stsd.entries), entry.format, rec.profile, rec.compatibility,
                           rec.level, arrays)
    parsed = _HVCC_ARRAYS.parse(rec.raw_bytes)
    arrays = {a.head & 0x3F: (bool(a.head & 0x80), list(a.units)) for a in parsed}
    return SampleEntry(len(stsd.entries), entry.format, rec.general_profile,
                       rec.general_profile_compatibility_flags, rec.general_level, arrays)


def _boxes(box: Any) -> Iterator[Any]:
    yield box
    for child in box.get("children") or []:
        yield from _boxes(child)


def _is_video(stsd: Any) -> bool:
    return bool(stsd.entries) and stsd.entries[0].format in (b"avc1", b"avc3", b"hvc1",
                                                             b"hev1")


def _hvcc_arrays() -> Any:
    from construct import (  # type: ignore[import-untyped]
        Int8ub,
        Int16ub,
        PascalString,
        PrefixedArray,
        Struct,
    )

    return PrefixedArray(Int8ub, Struct(
        "head" / Int8ub,  # array_completeness, reserved, NAL_unit_type
        "units" / PrefixedArray(Int16ub, PascalString(Int16ub)),
    ))


_HVCC_ARRAYS = _hvcc_arrays()


def check_parameter_sets(path: Path, codec: str) -> dict[str, dict[int, TracedUnit]]:
    """The export carries its parameter sets the way ISO/IEC 14496-15 wants, as tools we
    did not write read it: one avc1/hvc1 sample description whose record holds every set
    (hvcC arrays complete), no two different sets under one id, no in-band set (hvc1) or
    only ones equal to the record's set with that id (avc1), every id that a slice or set
    names present in the record, and profile/level fields that hold for every SPS."""
    entry = sample_entry(path)
    assert entry.count == 1
    assert entry.format == {"h264": b"avc1", "hevc": b"hvc1"}[codec]
    trace = ffmpeg_trace(path)
    record = traced_sets(codec, trace.extradata)
    kinds = {"h264": {"sps": 7, "pps": 8}, "hevc": {"vps": 32, "sps": 33, "pps": 34}}[codec]
    for kind, nal_type in kinds.items():
        complete, stored = entry.arrays[nal_type]
        assert len(stored) == len(record[kind]) > 0, kind
        assert complete in (None, True), f"hvcC {kind.upper()} array is not complete"
    for kind, sets in record.items():
        for u in sets.values():
            ref = _ID_FIELDS[(codec, kind)][1]
            if ref is not None:
                assert u.value(ref[1]) in record[ref[0]], f"{kind} names a missing {ref[0]}"
    for units in trace.packets:
        for u in units:
            if u.set_kind is not None:
                assert codec == "h264", "an hvc1 sample carries a parameter set"
                own = u.value(_ID_FIELDS[(codec, u.set_kind)][0])
                assert record[u.set_kind][own].values() == u.values(), "in-band set differs"
            elif u.is_slice:
                assert u.value(_SLICE_PPS[codec]) in record["pps"]
    _check_profile_level(codec, entry, record["sps"].values())
    return record


def _check_profile_level(codec: str, entry: SampleEntry, sps: Iterable[TracedUnit]) -> None:
    for u in sps:
        if codec == "h264":
            assert entry.level >= u.value("level_idc")
            flags = sum(u.value(f"constraint_set{i}_flag") << (7 - i) for i in range(6))
            assert entry.compatibility & ~flags == 0
        else:
            assert entry.level >= u.value("general_level_idc")
            flags = sum(u.value(f"general_profile_compatibility_flag[{j}]") << (31 - j)
                        for j in range(32))
            assert entry.compatibility & ~flags == 0


def check_timestamps(path: Path, prep: Prepared) -> None:
    """Output pts are the planned grid, dts strictly increasing, duration exact."""
    rows = mg.packet_table(path)
    pts = sorted(r.pts for r in rows if r.pts is not None)
    plan = prep.plan
    tb = plan.out_time_base
    planned = [int(t) * tb for t in plan.out_pts]
    first = planned[0]
    assert [p - pts[0] for p in pts] == [p - first for p in planned]
    dts = [r.dts for r in rows if r.dts is not None]
    assert all(b > a for a, b in itertools.pairwise(dts))
    for r in rows:
        assert r.dts is not None and r.pts is not None and r.dts <= r.pts
    steps = {b - a for a, b in itertools.pairwise(dts)}
    if all(s.is_cfr for s in (prep.sources[c.source].video.index for c in plan.cuts)):
        rates = {
            prep.sources[c.source].video.index.disp_pts[1]
            - prep.sources[c.source].video.index.disp_pts[0]
            for c in plan.cuts
        }
        if len(rates) == 1:
            assert len(steps) == 1, f"dts not uniform: {sorted(steps)[:5]}"
    info = mg.stream_info(path)
    assert info.duration == plan.duration, (info.duration, plan.duration)


def check_audio_sync(
    path: Path, prep: Prepared, media: Mapping[int, mg.GeneratedMedia], margin: float = 0.02
) -> tuple[float, int]:
    """Each source click lands where the picture says; returns (max offset s, clicks)."""
    audio = mg.decode_audio(path)
    found = mg.find_clicks(audio.samples, audio.sample_rate, audio.start_time)
    worst = 0.0
    n = 0
    for cut in prep.plan.cuts:
        if not cut.audio:
            continue
        gen = media[cut.source]
        for k in gen.click_times:
            if not (
                cut.src_start + Fraction(margin)
                <= k
                <= cut.src_start + cut.duration - Fraction(margin)
            ):
                continue
            want = float(cut.out_start + (k - cut.src_start))
            near = min(found, key=lambda t: abs(t - want), default=None)
            assert near is not None, f"no click near {want}"
            off = abs(near - want)
            assert off <= AUDIO_FRAME_SECONDS, f"click at {want:.4f}s found at {near:.4f}s"
            worst = max(worst, off)
            n += 1
    return worst, n


# ----------------------------------------------------------- picture quality

#: The floor the issue sets for a matched re-encode (same codec, size and bit depth as the
#: source): every re-encoded frame against the decoded source frame it shows, 8-bit.
PSNR_FLOOR_DB = 45.0

#: Planar formats whose ``to_ndarray`` holds the luma plane in its first ``height`` rows.
_PSNR_FORMATS = {"yuv420p", "yuvj420p", "yuv420p10le"}


def psnr(reference: npt.NDArray[Any] | Sequence[npt.NDArray[Any]],
         test: npt.NDArray[Any] | Sequence[npt.NDArray[Any]], *, peak: float = 255.0) -> float:
    """PSNR of ``test`` against ``reference`` in dB: 10 log10(peak² / MSE); inf if identical.

    Either two arrays (all planes of a frame packed the way ``to_ndarray(format="yuv420p")``
    packs them, or one plane), or two lists (or tuples) of planes of matching shapes. The MSE is
    taken over every sample given, so whole 4:2:0 frames weigh Y:U:V 4:1:1, as FFmpeg's
    psnr filter's "average" does. ``peak`` is the largest sample value: 255 for 8-bit.
    """
    if isinstance(reference, list | tuple) and isinstance(test, list | tuple):
        pairs = [(np.asarray(a), np.asarray(b)) for a, b in zip(reference, test, strict=True)]
    else:
        pairs = [(np.asarray(reference), np.asarray(test))]
    squared = 0.0
    count = 0
    for a, b in pairs:
        if a.shape != b.shape:
            raise ValueError(f"cannot compare shapes {a.shape} and {b.shape}")
        diff = a.astype(np.float64) - b.astype(np.float64)
        squared += float(np.square(diff).sum())
        count += diff.size
    if count == 0:
        raise ValueError("nothing to compare")
    if squared == 0:
        return math.inf
    return 10 * math.log10(peak * peak / (squared / count))


def frame_psnr(reference: av.VideoFrame, test: av.VideoFrame) -> tuple[float, float]:
    """(PSNR over all planes, PSNR of luma) of ``test`` against ``reference`` in dB, with the
    peak of their bit depth (255 for 8-bit). Both frames must have one size and format."""
    fmt = reference.format.name
    if fmt not in _PSNR_FORMATS:
        raise ValueError(f"no PSNR for pixel format {fmt}")
    if (test.format.name, test.width, test.height) != (fmt, reference.width, reference.height):
        raise ValueError(f"cannot compare a {test.format.name} {test.width}x{test.height} "
                         f"frame with a {fmt} {reference.width}x{reference.height} one")
    a = reference.to_ndarray(format=fmt)
    b = test.to_ndarray(format=fmt)
    if np.array_equal(a, b):
        return math.inf, math.inf
    peak = float((1 << reference.format.components[0].bits) - 1)
    h = reference.height
    return psnr(a, b, peak=peak), psnr(a[:h], b[:h], peak=peak)


def source_frames(path: Path, wanted: Iterable[int]) -> Generator[av.VideoFrame, None, None]:
    """The decoded frame at each display index of ``wanted``, in the order asked.

    Decodes forward from the start of the file (display order, as a player shows it) and
    starts again only when an index goes backwards, so a list that mostly ascends costs
    about one decode of the file and holds one frame at a time.
    """
    container: Any = None
    frames: Iterator[av.VideoFrame] = iter(())
    pos = -1
    current: av.VideoFrame | None = None
    try:
        for n in wanted:
            if container is None or n < pos:
                if container is not None:
                    container.close()
                container = av.open(str(path))
                stream = container.streams.video[0]
                stream.codec_context.thread_type = "AUTO"
                frames = iter(container.decode(stream))
                pos, current = -1, None
            while pos < n:
                current = next(frames, None)
                if current is None:
                    raise ValueError(f"{path}: no frame {n}, only {pos + 1}")
                pos += 1
            assert current is not None
            yield current
    finally:
        if container is not None:
            container.close()


class FramePsnr(NamedTuple):
    """One output frame against the source frame it shows."""

    out_frame: int  # display index in the export
    kind: str  # "copy", or the re-encoding piece's reason ("head", "tail", "short", ...)
    source: int  # config source index
    frame: int  # display index in that source
    psnr: float  # dB over all planes; inf: identical pixels
    luma: float  # dB, luma plane only


def output_psnr(path: Path, prep: Prepared, sources: Mapping[int, Path],
                cameras: Mapping[int, int] | None = None) -> list[FramePsnr]:
    """PSNR of every frame of a copy-mode export against its decoded source frame.

    Which source frame each output frame shows comes from the plan's cuts (each segment's
    frames in order); which output frames were re-encoded, from its encode pieces, whose
    own source frames must agree. ``sources`` maps config source index -> file. With
    ``cameras`` (source index -> mediagen camera id), the stamps of both frames are read
    too, so a frame compared with the wrong source frame fails as that, not as a low PSNR.
    """
    plan = prep.plan
    assert not plan.transcode, "PSNR against the source frame needs a copy-mode plan"
    expected = [(c.source, f) for c in plan.cuts for f in range(c.first, c.stop)]
    assert len(expected) == plan.frame_count, (len(expected), plan.frame_count)
    kinds = ["copy"] * len(expected)
    for piece in plan.pieces:
        if isinstance(piece, EncodePiece):
            kinds[piece.out_first:piece.out_stop] = [piece.reason] * piece.frames
            planned = [(r.source, int(d)) for r in piece.runs for d in r.src_disp]
            assert planned == expected[piece.out_first:piece.out_stop], piece
    readers = {s: source_frames(p, [f for src, f in expected if src == s])
               for s, p in sources.items()}
    rows: list[FramePsnr] = []
    try:
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            stream.codec_context.thread_type = "AUTO"
            for i, frame in enumerate(c.decode(stream)):
                assert i < len(expected), f"{path}: more than {len(expected)} frames"
                src, n = expected[i]
                ref = next(readers[src])
                if cameras is not None:
                    stamp = (cameras[src], n)
                    assert mg.read_stamp(ref) == stamp, (src, n, mg.read_stamp(ref))
                    assert mg.read_stamp(frame) == stamp, (i, mg.read_stamp(frame), stamp)
                rows.append(FramePsnr(i, kinds[i], src, n, *frame_psnr(ref, frame)))
    finally:
        for reader in readers.values():
            reader.close()
    assert len(rows) == len(expected), (len(rows), len(expected))
    return rows


def psnr_summary(rows: Iterable[FramePsnr]) -> dict[str, Any]:
    """Frames, min and mean PSNR (all planes and luma, dB) of the re-encoded rows, the worst
    frame, and per piece reason; plus how many copied rows there were and are identical."""
    rows = list(rows)
    encoded = [r for r in rows if r.kind != "copy"]
    copied = [r for r in rows if r.kind == "copy"]
    out: dict[str, Any] = {
        "reencoded_frames": len(encoded),
        "copied_frames": len(copied),
        "copied_identical": sum(math.isinf(r.psnr) for r in copied),
    }
    if encoded:
        worst = min(encoded, key=lambda r: r.psnr)
        out.update(
            psnr_min_db=worst.psnr,
            psnr_mean_db=float(np.mean([r.psnr for r in encoded])),
            luma_psnr_min_db=min(r.luma for r in encoded),
            luma_psnr_mean_db=float(np.mean([r.luma for r in encoded])),
            below_floor=sum(r.psnr < PSNR_FLOOR_DB for r in encoded),
            worst_frame=f"out {worst.out_frame} ({worst.kind}) = source {worst.source} "
                        f"frame {worst.frame}",
        )
        for kind in sorted({r.kind for r in encoded}):
            values = [r.psnr for r in encoded if r.kind == kind]
            out[f"{kind}_frames"] = len(values)
            out[f"{kind}_psnr_min_db"] = min(values)
            out[f"{kind}_psnr_mean_db"] = float(np.mean(values))
    return out
