"""Sample formats and parameter sets of the one output video track.

One sample description, every set in it
---------------------------------------
The output joins GOPs of cameras whose SPS/PPS (HEVC: VPS/SPS/PPS) differ with frames of our
own encoders. Chrome refuses a track with several sample descriptions (its demuxer keeps the
first record and fails on the first packet that needs another: "PIPELINE_ERROR_DECODE",
Debian's Chromium 156), so the track has exactly one ``avc1``/``hvc1`` description. ISO/IEC
14496-15 then wants every set the track uses inside that description: for ``hvc1`` the
arrays are complete and no set may travel in-band; for ``avc1`` an in-band set may only
repeat one of the record. Apple's decoders (QuickTime, Safari, iOS) build their decoder from
the record alone and glitch or refuse otherwise; ``hev1`` is refused outright, so HEVC
sources come out as ``hvc1`` too.

So the record holds every distinct set of the export, each under its own id
(render/paramsets.py renumbers sets and slices), and samples carry none in-band. The
numbering is planned before any piece exists (:func:`prepare_track`), from what is known
then: each copied camera's records, the in-band sets at its copied keyframes (a camera may
repeat or, like an earlier cutfarm export, change them there), and our encoders' sets, which
opening an encoder with the piece's settings yields exactly. The first camera keeps its ids;
another camera's clashing sets get free ids, preferably of the same Exp-Golomb length, and
its slices name the new PPS ids; x264 numbers its own sets where told (``sps-id``), and
x265, which cannot, has its slices renumbered, as they are ours anyway.

Where that is impossible (more distinct sets than ids, a slice header the rewriter cannot
parse) the export keeps the older design: one description with the first source's record,
every keyframe carrying its own piece's sets in-band. Chrome, Firefox and FFmpeg play that,
Apple's players may not, and the job says so (:func:`fallback_warning`). A surprise found
only while muxing (a set changed in-band inside a GOP, a header that does not parse) makes
the muxer write the file again that way.

All packets of the track are written in one format: length-prefixed NAL units with the
track record's length size, or Annex-B when the track's record is Annex-B (our encoders'
records, in the in-band design).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import BinaryIO

import numpy as np

from . import nal
from . import paramsets as ps
from .encode import EncoderSettings
from .media import SourceInfo
from .plan import CopyPiece, EncodePiece, Plan

_PARAM_TYPES = {"h264": frozenset({7, 8}), "hevc": frozenset({32, 33, 34})}
#: In-band units the conformant track cannot carry: H.264 SPS extension and subset SPS.
_FOREIGN_SETS = {"h264": frozenset({13, 15}), "hevc": frozenset[int]()}
_VCL = {"h264": frozenset(range(1, 6)), "hevc": frozenset(range(32))}
#: Every parameter-set unit type a sample may carry in-band (the probe collects them).
INBAND_TYPES = {codec: _PARAM_TYPES[codec] | _FOREIGN_SETS[codec] for codec in _PARAM_TYPES}
_AUD = {"h264": 9, "hevc": 35}
_START = b"\x00\x00\x00\x01"
_KIND_ORDER = {"vps": 0, "sps": 1, "pps": 2}
#: x264 numbers an SPS and its PPS alike, 0-31.
_X264_IDS = 32
TRACK_LENGTH_SIZE = 4
_OURS = "the re-encoded frames"

#: The sets one source has active together, in (kind, id) order: what an id map is for.
EpochKey = tuple[bytes, ...]


@dataclass(frozen=True)
class SampleFormat:
    codec: str
    length_size: int | None  # None: Annex-B

    @classmethod
    def of(cls, codec: str, record: bytes, nal_length_size: int = 4) -> SampleFormat:
        if record[:1] == b"\x01":
            size = (nal.parse_avcc(record) if codec == "h264" else nal.parse_hvcc(record))
            return cls(codec, size.length_size)
        return cls(codec, None) if record else cls(codec, nal_length_size)


def _type(codec: str, unit: bytes) -> int:
    return nal.nal_type_h264(unit) if codec == "h264" else nal.nal_type_hevc(unit)


def parameter_sets(codec: str, record: bytes) -> list[bytes]:
    """The VPS/SPS/PPS NAL units of a record (avcC, hvcC or Annex-B), in decoding order."""
    if not record:
        return []
    if record[:1] == b"\x01":
        if codec == "h264":
            cfg = nal.parse_avcc(record)
            return [*cfg.sps, *cfg.pps, *cfg.sps_ext]
        return [unit for array in nal.parse_hvcc(record).arrays for unit in array.nals
                if _type(codec, unit) in _PARAM_TYPES[codec]]
    types = _PARAM_TYPES[codec] | _FOREIGN_SETS[codec]
    return [u for u in nal.split_annexb(record) if _type(codec, u) in types]


def split(data: bytes, fmt: SampleFormat) -> list[bytes]:
    if fmt.length_size is None:
        return nal.split_annexb(data)
    return nal.split_nals(data, fmt.length_size)


def join(units: list[bytes], fmt: SampleFormat) -> bytes:
    if fmt.length_size is None:
        return b"".join(_START + u for u in units)
    size = fmt.length_size
    return b"".join(len(u).to_bytes(size, "big") + u for u in units)


def convert(data: bytes, src: SampleFormat, dst: SampleFormat,
            params: list[bytes] | None = None) -> bytes:
    """``data`` in ``dst``'s format, with ``params`` in-band unless it has its own already."""
    if src == dst and not params:
        return data
    units = split(data, src)
    if params and not any(_type(dst.codec, u) in _PARAM_TYPES[dst.codec] for u in units):
        # An access unit delimiter must stay the first NAL unit of the access unit.
        at = 1 if units and _type(dst.codec, units[0]) == _AUD[dst.codec] else 0
        units = [*units[:at], *params, *units[at:]]
    return join(units, dst)


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class TrackParams:
    """How the output track carries its parameter sets: plain data, decided at plan time.

    Conformant (``fallback`` None): ``record`` is the one sample description's record and
    ``maps`` says, for every set combination a packet may be decoded with, how its ids
    become the record's. Otherwise ``fallback`` is why the sets stay in-band.
    """

    codec: str
    record: bytes = b""
    maps: Mapping[EpochKey, ps.IdMap] = field(default_factory=dict)
    fallback: str | None = None

    @property
    def conformant(self) -> bool:
        return self.fallback is None


def fallback_warning(params: TrackParams | None) -> list[str]:
    """The sentence a job shows when its sets could not all go in the sample description."""
    if params is None or params.conformant:
        return []
    return [f"The video's parameter sets travel in-band at each keyframe instead of all in "
            f"its one sample description because {params.fallback}: Chrome, Firefox and "
            "FFmpeg play the file, but Apple players (QuickTime, Safari, iOS) may refuse it "
            "or show glitches where the picture switches source."]


def _state_key(state: Mapping[tuple[str, int], bytes]) -> EpochKey:
    return tuple(state[k] for k in sorted(state, key=lambda k: (_KIND_ORDER[k[0]], k[1])))


def _record_state(codec: str, record: bytes) -> dict[tuple[str, int], bytes]:
    state: dict[tuple[str, int], bytes] = {}
    for unit in parameter_sets(codec, record):
        _update(codec, state, unit)
    return state


def _update(codec: str, state: dict[tuple[str, int], bytes], unit: bytes) -> None:
    parsed = ps.parse_set(codec, unit)
    if parsed is None:
        raise ps.Unsupported(f"carries NAL units of type {_type(codec, unit)} (an SPS "
                             "extension or subset SPS), which one sample entry cannot hold")
    state[(parsed.kind, parsed.id)] = unit


class _Planner:
    """Numbers the sets of each contribution in turn; remembers the first failure."""

    def __init__(self, codec: str, limits: Mapping[str, int] | None = None) -> None:
        self.codec = codec
        self.alloc = ps.Allocator(codec, limits)
        self.maps: dict[EpochKey, ps.IdMap] = {}
        self.fallback: str | None = None

    def add(self, label: str, key: EpochKey) -> None:
        if self.fallback is not None or key in self.maps:
            return
        try:
            sets = [self._parse(unit) for unit in key]
            ids = self.alloc.add(sets)
            if ids.moves("pps"):
                _check_rewritable(self.codec, sets, ids)
        except (ps.Unsupported, nal.NalError) as exc:
            self.fail(label, exc)
        else:
            self.maps[key] = ids

    def fail(self, label: str, exc: Exception) -> None:
        if self.fallback is not None:
            return
        if isinstance(exc, ps.TooManySets):
            self.fallback = f"the export {exc}"
        elif isinstance(exc, ps.Unsupported):
            self.fallback = f"{label} {exc}"
        else:
            self.fallback = f"{label} has parameter sets cutfarm cannot read ({exc})"

    def add_record(self, label: str, record: bytes) -> None:
        try:
            key = record_key(self.codec, record)
        except (ps.Unsupported, nal.NalError) as exc:
            self.fail(label, exc)
        else:
            self.add(label, key)

    def add_cameras(self, plan: Plan, sources: Mapping[int, SourceInfo]) -> None:
        try:
            for label, key in camera_epochs(plan, sources):
                self.add(label, key)
        except _SourceError as exc:
            self.fail(exc.label, exc.cause)

    def _parse(self, unit: bytes) -> ps.ParamSet:
        parsed = ps.parse_set(self.codec, unit)
        if parsed is None:
            raise ps.Unsupported("carries an SPS extension or subset SPS")
        return parsed

    def result(self, extra_from: bytes) -> TrackParams:
        if self.fallback is None:
            try:
                record = _build_record(self.codec, self.alloc.record_sets(), extra_from)
            except ps.Unsupported as exc:
                self.fallback = f"the export {exc}"
            else:
                return TrackParams(self.codec, record, dict(self.maps))
        return TrackParams(self.codec, fallback=self.fallback)


def _check_rewritable(codec: str, sets: Sequence[ps.ParamSet], ids: ps.IdMap) -> None:
    """Raise Unsupported unless the slices naming a renumbered PPS can be rewritten."""
    sps = {s.id: s.nal for s in sets if s.kind == "sps"}
    for p in sets:
        if p.kind != "pps" or ids.get("pps", p.id) == p.id:
            continue
        assert p.ref is not None
        if codec == "h264":
            pps = ps.parse_avc_pps(p.nal)
            if pps.entropy_coding_mode and pps.num_slice_groups > 1:
                raise ps.Unsupported("combines CABAC with slice groups")
            ps.parse_avc_sps(sps[p.ref])
        else:
            ps.parse_hevc_pps(p.nal)
            if not ps.hevc_profile_supported(ps.parse_hevc_sps(sps[p.ref])):
                raise ps.Unsupported("uses an HEVC profile whose slice headers cutfarm "
                                     "cannot parse")


def _build_record(codec: str, sets: Mapping[str, list[bytes]], extra_from: bytes) -> bytes:
    if codec == "h264":
        return ps.avcc(sets["sps"], sets["pps"], TRACK_LENGTH_SIZE)
    extra: list[tuple[int, bool, Sequence[bytes]]] = []
    if extra_from[:1] == b"\x01":
        # Declarative SEI arrays (HDR metadata, ...) of the first camera stay with the track.
        extra = [(a.nal_type, a.complete, a.nals) for a in nal.parse_hvcc(extra_from).arrays
                 if a.nal_type not in _PARAM_TYPES[codec]]
    return ps.hvcc(sets["vps"], sets["sps"], sets["pps"], extra, TRACK_LENGTH_SIZE)


class _SourceError(Exception):
    def __init__(self, label: str, cause: Exception) -> None:
        super().__init__(f"{label}: {cause}")
        self.label = label
        self.cause = cause


def camera_epochs(plan: Plan, sources: Mapping[int, SourceInfo]) -> list[tuple[str, EpochKey]]:
    """The set combinations the copied samples decode with, in output order.

    A copy starts at a random-access point with its sample description's sets; in-band sets
    at its keyframes (collected by the probe, near the data) replace sets of the same id.
    A source whose sets cannot be read raises _SourceError.
    """
    out: dict[EpochKey, str] = {}
    handles: dict[int, BinaryIO] = {}
    try:
        for piece in plan.pieces:
            if not isinstance(piece, CopyPiece):
                continue
            src = sources[piece.source]
            fh = handles.get(piece.source)
            if fh is None and src.video.inband is None:  # not probed here: read the file
                fh = handles[piece.source] = src.file.open()
            label = f"sources[{piece.source}] ({src.name})"
            try:
                for key in _piece_epochs(piece, src, fh):
                    out.setdefault(key, label)
            except (ps.Unsupported, nal.NalError) as exc:
                raise _SourceError(label, exc) from exc
    finally:
        for fh in handles.values():
            fh.close()
    return [(label, key) for key, label in out.items()]


def _piece_epochs(piece: CopyPiece, src: SourceInfo, fh: BinaryIO | None
                  ) -> Iterable[EpochKey]:
    v = src.video
    codec = v.format.codec
    dec = piece.samples(v.index)
    if dec.size == 0:
        return
    interesting = v.index.rap[dec].copy()
    interesting[0] = True
    if v.stsd is not None and len(v.records) > 1:
        desc = v.stsd[dec]
        interesting[1:] |= desc[1:] != desc[:-1]
    record: bytes | None = None
    state: dict[tuple[str, int], bytes] = {}
    for d in (int(x) for x in dec[np.flatnonzero(interesting)]):
        rec = v.record_of(d)
        if rec != record:
            record, state = rec, _record_state(codec, rec)
        if v.index.rap[d]:
            if v.inband is not None:
                units: Sequence[bytes] = v.inband.get(d, ())
            else:
                assert fh is not None
                units = inband_sets(fh, codec, int(v.offset[d]), int(v.index.size[d]),
                                    v.nal_length_size)
            for unit in units:
                _update(codec, state, unit)
        yield _state_key(state)


def inband_sets(fh: BinaryIO, codec: str, offset: int, size: int, length_size: int
                ) -> list[bytes]:
    """The parameter-set NAL units ahead of a sample's first slice, read unit by unit."""
    fd = fh.fileno()
    wanted = INBAND_TYPES[codec]
    units: list[bytes] = []
    pos = 0
    while pos + length_size + 2 <= size:
        head = os.pread(fd, length_size + 2, offset + pos)
        length = int.from_bytes(head[:length_size], "big")
        kind = _type(codec, head[length_size:])
        if kind in _VCL[codec] or length == 0:
            break
        if kind in wanted:
            units.append(os.pread(fd, length, offset + pos + length_size))
        pos += length_size + length
    return units


#: Predicts a piece's Annex-B extradata from its settings and frame count.
Predict = Callable[[EncoderSettings, int], bytes]


def prepare_track(plan: Plan, sources: Mapping[int, SourceInfo],
                  settings: Mapping[int, EncoderSettings], predict: Predict,
                  ) -> tuple[TrackParams | None, dict[int, EncoderSettings]]:
    """The track's parameter-set plan, and the encoder settings that make it come true
    (x264 pieces get free ids). None for codecs without parameter sets (VP9)."""
    codec = plan.out_format.codec
    settings = dict(settings)
    if codec not in _PARAM_TYPES:
        return None, settings
    planner = _Planner(codec)
    planner.add_cameras(plan, sources)
    memo = _memo(predict)
    if codec == "h264" and planner.fallback is None:
        settings = _number_x264(plan, settings, planner, memo)
    for i, piece in enumerate(plan.pieces):
        if isinstance(piece, EncodePiece):
            planner.add_record(_OURS, memo(settings[i], piece.frames))
    return planner.result(_first_record(plan, sources)), settings


def _first_record(plan: Plan, sources: Mapping[int, SourceInfo]) -> bytes:
    return next((sources[p.source].video.record_of(p.dec_start) for p in plan.pieces
                 if isinstance(p, CopyPiece)), b"")


def _memo(predict: Predict) -> Predict:
    cache: dict[tuple[EncoderSettings, int], bytes] = {}

    def run(s: EncoderSettings, frames: int) -> bytes:
        # Only B-frames (none below 3 frames) and intra-only (1 frame) change the headers.
        key = (replace(s, threads=0), min(frames, 3))
        if key not in cache:
            cache[key] = predict(key[0], key[1])
        return cache[key]

    return run


def record_key(codec: str, record: bytes) -> EpochKey:
    """The set combination a record (avcC, hvcC or Annex-B extradata) starts decoding with."""
    return _state_key(_record_state(codec, record))


def plan_sets(codec: str, contributions: Iterable[tuple[str, EpochKey]],
              extra_from: bytes = b"", limits: Mapping[str, int] | None = None) -> TrackParams:
    """Number the sets of ``contributions`` (label, set combination), in order."""
    planner = _Planner(codec, limits)
    for label, key in contributions:
        planner.add(label, key)
    return planner.result(extra_from)


def _number_x264(plan: Plan, settings: dict[int, EncoderSettings], planner: _Planner,
                 predict: Predict) -> dict[int, EncoderSettings]:
    """Give each kind of x264 piece ids no camera uses, so its slices stay as encoded."""
    ids: dict[bytes, int | None] = {}
    for i, piece in enumerate(plan.pieces):
        if not isinstance(piece, EncodePiece):
            continue
        s = settings[i]
        plain = predict(replace(s, sps_id=None), piece.frames)
        if plain not in ids:
            ids[plain] = planner.alloc.free_id(("sps", "pps"), _X264_IDS)
            if ids[plain] is not None:
                # Taken now, so that the next kind of piece gets another id.
                numbered = predict(replace(s, sps_id=ids[plain]), piece.frames)
                planner.add_record(_OURS, numbered)
        settings[i] = replace(s, sps_id=ids[plain])
    return settings


def mux_time_track(plan: Plan, sources: Mapping[int, SourceInfo],
                   records: Mapping[int, bytes]) -> TrackParams | None:
    """The plan made from the pieces as encoded, for callers that planned none."""
    codec = plan.out_format.codec
    if codec not in _PARAM_TYPES:
        return None
    planner = _Planner(codec)
    planner.add_cameras(plan, sources)
    for i in sorted(records):
        planner.add_record(_OURS, records[i])
    return planner.result(_first_record(plan, sources))


# --------------------------------------------------------------------------- muxing


class ParameterSetSurprise(Exception):
    """A packet the plan did not foresee: the track must be written the in-band way."""


class _Epoch:
    """One set combination's renumbering, with the parsed sets its slices need."""

    def __init__(self, codec: str, key: EpochKey, ids: ps.IdMap) -> None:
        self.codec = codec
        self.ids = ids
        self.identity = ids.identity
        self.moves_pps = ids.moves("pps")
        self.fix_sei = ids.moves("sps") or ids.moves("vps")
        self.sps: dict[int, ps.AnySps] = {}
        self.pps: dict[int, ps.AnyPps] = {}
        if self.moves_pps:
            for unit in key:
                parsed = ps.parse_set(codec, unit)
                assert parsed is not None
                if parsed.kind == "sps":
                    self.sps[parsed.id] = (ps.parse_avc_sps(unit) if codec == "h264"
                                           else ps.parse_hevc_sps(unit))
                elif parsed.kind == "pps":
                    self.pps[parsed.id] = (ps.parse_avc_pps(unit) if codec == "h264"
                                           else ps.parse_hevc_pps(unit))

    def fix(self, unit: bytes) -> bytes | None:
        kind = _type(self.codec, unit)
        if kind in _VCL[self.codec]:
            if not self.moves_pps:
                return unit
            old = ps.slice_pps_id(self.codec, unit)
            new = self.ids.get("pps", old)
            if new == old:
                return unit
            pps = self.pps[old]
            return ps.rewrite_slice(self.codec, unit, new, self.sps[pps.sps_id], pps)
        if self.fix_sei:
            return ps.drop_sei_messages(self.codec, unit)
        return unit


class Conformer:
    """Puts each packet in the conformant track's form: in-band sets dropped (the record
    has them), slices naming their PPS by the record's id, one NAL length size."""

    def __init__(self, params: TrackParams) -> None:
        self.codec = params.codec
        self.maps = params.maps
        self.fmt = SampleFormat(params.codec, TRACK_LENGTH_SIZE)
        self._source: tuple[int, bytes] | None = None
        self._state: dict[tuple[str, int], bytes] = {}
        self._epoch: _Epoch | None = None
        self._epochs: dict[EpochKey, _Epoch] = {}
        self._initial: dict[bytes, dict[tuple[str, int], bytes]] = {}

    def packet(self, data: bytes, fmt: SampleFormat, record: bytes, piece: int) -> bytes:
        """``data`` (framed as ``fmt``) of piece ``piece``, whose description has ``record``."""
        try:
            return self._packet(data, fmt, record, piece)
        except (ps.Unsupported, nal.NalError, KeyError, AssertionError) as exc:
            raise ParameterSetSurprise(str(exc)) from exc

    def _packet(self, data: bytes, fmt: SampleFormat, record: bytes, piece: int) -> bytes:
        if self._source != (piece, record):
            # A piece starts decoding afresh from its description's sets.
            self._source = (piece, record)
            if record not in self._initial:
                self._initial[record] = _record_state(self.codec, record)
            self._state = dict(self._initial[record])
            self._epoch = None
        if fmt == self.fmt and self._passes(data, fmt):
            return data
        units = split(data, fmt)
        kept = [u for u in units if not self._absorb(u)]
        epoch = self._epoch or self._find_epoch()
        if not epoch.identity:
            kept = [f for f in map(epoch.fix, kept) if f is not None]
        if fmt == self.fmt and len(kept) == len(units) and all(
                a is b for a, b in zip(kept, units, strict=True)):
            return data
        return join(kept, self.fmt)

    def _passes(self, data: bytes, fmt: SampleFormat) -> bool:
        """Whether ``data`` (already in the track's framing) goes out as it is: it carries
        no parameter set and its sets' epoch renumbers nothing. Reads only the NAL headers:
        copying every unit out (as :meth:`_packet` must to change one) costs as much as the
        rest of the copy path for large frames."""
        assert fmt.length_size is not None
        inband = INBAND_TYPES[self.codec]
        h264 = self.codec == "h264"
        for pos, _ in nal.nal_spans(data, fmt.length_size):
            kind = data[pos] & 0x1F if h264 else (data[pos] >> 1) & 0x3F
            if kind in inband:
                return False
        epoch = self._epoch or self._find_epoch()
        return epoch.identity

    def _absorb(self, unit: bytes) -> bool:
        """Whether ``unit`` is a parameter set (now part of the decoder state)."""
        kind = _type(self.codec, unit)
        if kind not in _PARAM_TYPES[self.codec] and kind not in _FOREIGN_SETS[self.codec]:
            return False
        if self._state.get(_state_slot(self.codec, unit)) != unit:
            _update(self.codec, self._state, unit)
            self._epoch = None
        return True

    def _find_epoch(self) -> _Epoch:
        key = _state_key(self._state)
        epoch = self._epochs.get(key)
        if epoch is None:
            ids = self.maps.get(key)
            if ids is None:
                raise ParameterSetSurprise("a packet uses parameter sets the plan did not "
                                           "foresee (changed in-band inside a GOP?)")
            epoch = self._epochs[key] = _Epoch(self.codec, key, ids)
        self._epoch = epoch
        return epoch


def _state_slot(codec: str, unit: bytes) -> tuple[str, int]:
    parsed = ps.parse_set(codec, unit)
    if parsed is None:
        raise ps.Unsupported("carries an SPS extension or subset SPS in-band")
    return parsed.kind, parsed.id
