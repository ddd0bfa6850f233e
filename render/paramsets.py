"""Parameter-set ids: read them, renumber them, and give every set of an export its own.

Why
---
An export joins GOPs of several cameras and pieces of our own encoders in one track. Their
SPS/PPS (and HEVC VPS) differ, yet nearly all of them are numbered 0. ISO/IEC 14496-15
wants every parameter set an ``hvc1`` track uses in its one sample entry (arrays marked
complete, none in-band), and an ``avc1`` track may repeat in-band only sets that are in the
entry. Apple's decoders (QuickTime, Safari, iOS) build their decoder from the sample entry
alone, and Chrome refuses a track with several entries, so the only output that satisfies
both is one entry holding every set, each distinct set under its own id, and every slice
naming its PPS by that id. This module does the bit work for that, on bytes only:

* ids of a set: H.264 ``seq_parameter_set_id`` / ``pic_parameter_set_id`` (+ its SPS), HEVC
  VPS id, SPS id (+ its VPS), PPS id (+ its SPS). They sit near the start of the RBSP; a
  renumbered set is re-serialised from the changed field on (the Exp-Golomb code length may
  change), its trailing bits redone and emulation prevention applied afresh.
* the PPS id of a slice: H.264's third ``ue(v)``, HEVC's ``slice_pic_parameter_set_id``.
  When its code length changes, the bits after it move: a CAVLC slice is shifted as a
  whole (its data is a bit string ending in ``rbsp_slice_trailing_bits``); a CABAC slice
  and every HEVC slice segment are parsed to the end of their header, whose alignment
  (``cabac_alignment_one_bit`` / ``byte_alignment()``) is redone, and the slice data bytes
  follow untouched. HEVC entry points count bytes of slice data, which do not change.
* SEI messages that name an SPS/VPS id (buffering period, active parameter sets) are
  dropped from samples whose ids moved: their HRD values describe the source's buffer,
  which a splice invalidates anyway.
* :class:`Allocator` numbers the sets of every source so that identical sets share an id
  and different sets never collide, keeping a source's own ids where it can and otherwise
  preferring ids of the same code length (ue(v) 0 is 1 bit, 1-2 are 3, 3-6 are 5, 7-14 are
  7), so most renumbered slices need no shift at all.
* :func:`avcc` / :func:`hvcc` write the one record, with profile/tier/level fields valid
  for every set in it.

Anything the rewriter cannot parse raises :class:`Unsupported`; the caller then keeps the
old in-band design for that export and says so.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .nal import NalError, nal_type_h264, nal_type_hevc

__all__ = [
    "LIMITS",
    "Allocator",
    "AvcPps",
    "AvcSps",
    "HevcPps",
    "HevcSps",
    "IdMap",
    "ParamSet",
    "TooManySets",
    "Unsupported",
    "avcc",
    "drop_sei_messages",
    "escape",
    "hvcc",
    "is_parameter_set",
    "parse_avc_pps",
    "parse_avc_sps",
    "parse_hevc_pps",
    "parse_hevc_sps",
    "parse_set",
    "renumber",
    "rewrite_slice",
    "skip_avc_pred_weight_table",
    "slice_pps_id",
    "unescape",
]

#: How many sets of each kind a stream may define (H.264 7.4.2.1, HEVC 7.4.3).
LIMITS: dict[str, dict[str, int]] = {
    "h264": {"sps": 32, "pps": 256},
    "hevc": {"vps": 16, "sps": 16, "pps": 64},
}
_KINDS = {"h264": ("sps", "pps"), "hevc": ("vps", "sps", "pps")}
_SET_TYPES = {"h264": {7: "sps", 8: "pps"}, "hevc": {32: "vps", 33: "sps", 34: "pps"}}
_HEADER = {"h264": 1, "hevc": 2}
#: SEI payload types that name an SPS (buffering period) or VPS/SPS (HEVC active sets).
_SEI_WITH_IDS = {"h264": frozenset({0}), "hevc": frozenset({0, 129})}
_SEI_TYPES = {"h264": frozenset({6}), "hevc": frozenset({39, 40})}


class Unsupported(ValueError):
    """A stream feature the renumbering cannot handle. The message is a predicate ("uses
    ...", "has ...") that completes a sentence about the source it came from."""


class TooManySets(Unsupported):
    """More distinct parameter sets than a stream has ids for."""


# --------------------------------------------------------------------------- RBSP bits

_NEEDS_EPB = re.compile(rb"\x00\x00(?=[\x00-\x03]|\Z)")


def unescape(payload: bytes) -> bytes:
    """RBSP of a NAL payload (after its header): every 00 00 03 loses its 03."""
    return payload.replace(b"\x00\x00\x03", b"\x00\x00")


def escape(rbsp: bytes) -> bytes:
    """NAL payload of an RBSP: an emulation prevention byte after each 00 00 that precedes
    a byte <= 3 (or ends the unit, after cabac_zero_words)."""
    return _NEEDS_EPB.sub(b"\x00\x00\x03", rbsp)


class BitReader:
    """Big-endian bit reader over an RBSP; any overrun is a NalError."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos
        self.size = 8 * len(data)

    def u(self, n: int) -> int:
        if n == 0:
            return 0
        end = self.pos + n
        if end > self.size:
            raise NalError("header is truncated")
        first, last = self.pos >> 3, (end + 7) >> 3
        chunk = int.from_bytes(self.data[first:last], "big")
        self.pos = end
        return (chunk >> ((last << 3) - end)) & ((1 << n) - 1)

    def flag(self) -> bool:
        return self.u(1) == 1

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise NalError("invalid Exp-Golomb code")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


def ue_code(value: int) -> tuple[int, int]:
    """(bits, width) of ``value`` as ue(v)."""
    return value + 1, 2 * (value + 1).bit_length() - 1


def ue_width(value: int) -> int:
    return ue_code(value)[1]


def _stop_bit(rbsp: bytes) -> int:
    """Bit position of rbsp_stop_one_bit: the last 1 of the RBSP."""
    end = len(rbsp.rstrip(b"\x00"))
    if end == 0:
        raise NalError("RBSP has no stop bit")
    last = rbsp[end - 1]
    return 8 * end - 1 - ((last & -last).bit_length() - 1)


def _pack(segments: Iterable[tuple[int, int]]) -> tuple[int, int]:
    value = width = 0
    for bits, n in segments:
        value = (value << n) | bits
        width += n
    return value, width


def _to_bytes(value: int, width: int) -> bytes:
    if width % 8:
        raise AssertionError("unaligned bit string")
    return value.to_bytes(width // 8, "big")


def _segment(rbsp: bytes, start: int, end: int) -> tuple[int, int]:
    return BitReader(rbsp, start).u(end - start), end - start


def _edit(rbsp: bytes, edits: Sequence[tuple[int, int, int, int]]) -> bytes:
    """``rbsp`` with each bit range (start, end) replaced by (bits, width), its
    rbsp_trailing_bits redone after the (possibly moved) content."""
    stop = _stop_bit(rbsp)
    segments: list[tuple[int, int]] = []
    pos = 0
    for start, end, bits, width in sorted(edits):
        segments += [_segment(rbsp, pos, start), (bits, width)]
        pos = end
    segments += [_segment(rbsp, pos, stop), (1, 1)]
    value, width = _pack(segments)
    pad = -width % 8
    return _to_bytes(value << pad, width + pad)


def _payload(codec: str, nal: bytes) -> bytes:
    """The NAL unit as one RBSP, header bytes included (bit positions count from 0)."""
    h = _HEADER[codec]
    return nal[:h] + unescape(nal[h:])


def _nal(codec: str, rbsp: bytes) -> bytes:
    h = _HEADER[codec]
    return rbsp[:h] + escape(rbsp[h:])


def nal_type(codec: str, nal: bytes) -> int:
    return nal_type_h264(nal) if codec == "h264" else nal_type_hevc(nal)


# --------------------------------------------------------------------------- set ids


@dataclass(frozen=True)
class ParamSet:
    """One VPS/SPS/PPS and the ids in it. ``ref`` is the id of the set it names (a PPS's
    SPS, an HEVC SPS's VPS), None for sets that name none."""

    kind: str
    id: int
    ref: int | None
    nal: bytes
    id_at: tuple[int, int] = (0, 0)
    ref_at: tuple[int, int] | None = None


def is_parameter_set(codec: str, nal: bytes) -> bool:
    return nal_type(codec, nal) in _SET_TYPES[codec]


def parse_set(codec: str, nal: bytes) -> ParamSet | None:
    """The ids of a parameter-set NAL unit; None for any other NAL unit."""
    kind = _SET_TYPES[codec].get(nal_type(codec, nal))
    if kind is None:
        return None
    r = BitReader(_payload(codec, nal[:64]))
    if codec == "h264":
        return _avc_ids(kind, nal, r)
    return _hevc_ids(kind, nal, r)


def _avc_ids(kind: str, nal: bytes, r: BitReader) -> ParamSet:
    if kind == "sps":
        r.pos = 32  # header, profile_idc, constraint flags, level_idc
        start = r.pos
        sps_id = r.ue()
        _check(sps_id, 31, "seq_parameter_set_id")
        return ParamSet("sps", sps_id, None, nal, (start, r.pos))
    r.pos = 8
    start = r.pos
    pps_id = r.ue()
    mid = r.pos
    sps_id = r.ue()
    _check(pps_id, 255, "pic_parameter_set_id")
    _check(sps_id, 31, "seq_parameter_set_id")
    return ParamSet("pps", pps_id, sps_id, nal, (start, mid), (mid, r.pos))


def _hevc_ids(kind: str, nal: bytes, r: BitReader) -> ParamSet:
    if kind == "vps":
        r.pos = 16
        return ParamSet("vps", r.u(4), None, nal, (16, 20))
    if kind == "sps":
        r.pos = 16
        vps_id = r.u(4)
        max_sub_layers_minus1 = r.u(3)
        r.u(1)
        _skip_profile_tier_level(r, max_sub_layers_minus1)
        start = r.pos
        sps_id = r.ue()
        _check(sps_id, 15, "sps_seq_parameter_set_id")
        return ParamSet("sps", sps_id, vps_id, nal, (start, r.pos), (16, 20))
    r.pos = 16
    pps_id = r.ue()
    mid = r.pos
    sps_id = r.ue()
    _check(pps_id, 63, "pps_pic_parameter_set_id")
    _check(sps_id, 15, "pps_seq_parameter_set_id")
    return ParamSet("pps", pps_id, sps_id, nal, (16, mid), (mid, r.pos))


def _check(value: int, limit: int, name: str) -> None:
    if value > limit:
        raise NalError(f"{name} {value} is out of range")


def _skip_profile_tier_level(r: BitReader, max_sub_layers_minus1: int) -> None:
    r.u(8)  # general_profile_space, tier, profile_idc
    r.u(32)  # compatibility flags
    r.u(48)  # constraint flags
    r.u(8)  # general_level_idc
    present = [(r.flag(), r.flag()) for _ in range(max_sub_layers_minus1)]
    if max_sub_layers_minus1 > 0:
        r.u(2 * (8 - max_sub_layers_minus1))
    for profile, level in present:
        r.u(88 if profile else 0)
        r.u(8 if level else 0)


def renumber(codec: str, ps: ParamSet, new_id: int, new_ref: int | None = None) -> bytes:
    """The NAL unit of ``ps`` with its own id (and the id it names) replaced."""
    edits: list[tuple[int, int, int, int]] = []
    if new_id != ps.id:
        edits.append((*ps.id_at, *_field(codec, ps.kind, new_id, own=True)))
    if new_ref is not None and ps.ref_at is not None and new_ref != ps.ref:
        edits.append((*ps.ref_at, *_field(codec, ps.kind, new_ref, own=False)))
    if not edits:
        return ps.nal
    rbsp = _payload(codec, ps.nal)
    return _nal(codec, _edit(rbsp, edits))


def _field(codec: str, kind: str, value: int, *, own: bool) -> tuple[int, int]:
    # HEVC's VPS ids are u(4), both in the VPS and in the SPS that names it.
    if codec == "hevc" and (kind == "vps" if own else kind == "sps"):
        return value, 4
    return ue_code(value)


def canonical(codec: str, ps: ParamSet) -> bytes:
    """The set's NAL unit with its own id set to 0: equal for sets that differ only in id."""
    return renumber(codec, ps, 0)


@dataclass(frozen=True)
class IdMap:
    """How one source's ids become the track's: kind -> {old id: new id}."""

    ids: Mapping[str, Mapping[int, int]] = field(default_factory=dict)

    def get(self, kind: str, old: int) -> int:
        return self.ids.get(kind, {}).get(old, old)

    def moves(self, kind: str) -> bool:
        return any(a != b for a, b in self.ids.get(kind, {}).items())

    @property
    def identity(self) -> bool:
        return not any(self.moves(k) for k in self.ids)


# --------------------------------------------------------------------------- H.264 sets

_AVC_CHROMA_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


@dataclass(frozen=True)
class AvcSps:
    """The SPS fields a slice header depends on, plus what the avcC record needs."""

    sps_id: int
    profile_idc: int
    constraint_flags: int
    level_idc: int
    chroma_format_idc: int
    separate_colour_plane: bool
    bit_depth_luma: int
    bit_depth_chroma: int
    log2_max_frame_num: int
    poc_type: int
    log2_max_poc_lsb: int
    delta_pic_order_always_zero: bool
    frame_mbs_only: bool
    #: What a decoder's picture buffer and a whole-picture slice need (render/avcrefs.py).
    max_num_ref_frames: int = 0
    width_in_mbs: int = 0
    height_in_map_units: int = 0

    @property
    def chroma_array_type(self) -> int:
        return 0 if self.separate_colour_plane else self.chroma_format_idc


@dataclass(frozen=True)
class AvcPps:
    pps_id: int
    sps_id: int
    entropy_coding_mode: bool
    bottom_field_pic_order_in_frame_present: bool
    num_slice_groups: int
    num_ref_idx_default: tuple[int, int] = (1, 1)
    weighted_pred: bool = False
    weighted_bipred_idc: int = 0
    deblocking_filter_control_present: bool = False
    redundant_pic_cnt_present: bool = False
    pic_init_qp: int = 26


def _skip_avc_scaling_list(r: BitReader, size: int) -> None:
    last = nxt = 8
    for _ in range(size):
        if nxt != 0:
            nxt = (last + r.se() + 256) % 256
        last = nxt or last


def parse_avc_sps(nal: bytes) -> AvcSps:
    r = BitReader(_payload("h264", nal))
    r.pos = 8
    profile, constraints, level = r.u(8), r.u(8), r.u(8)
    sps_id = r.ue()
    chroma, separate, depth_luma, depth_chroma = 1, False, 8, 8
    if profile in _AVC_CHROMA_PROFILES:
        chroma = r.ue()
        separate = chroma == 3 and r.flag()
        depth_luma, depth_chroma = r.ue() + 8, r.ue() + 8
        r.u(1)  # qpprime_y_zero_transform_bypass_flag
        if r.flag():  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma != 3 else 12):
                if r.flag():
                    _skip_avc_scaling_list(r, 16 if i < 6 else 64)
    log2_max_frame_num = r.ue() + 4
    poc_type = r.ue()
    log2_max_poc_lsb, always_zero = 0, False
    if poc_type == 0:
        log2_max_poc_lsb = r.ue() + 4
    elif poc_type == 1:
        always_zero = r.flag()
        r.se()
        r.se()
        for _ in range(r.ue()):
            r.se()
    max_refs = r.ue()
    r.u(1)  # gaps_in_frame_num_value_allowed_flag: any gap is refused by avcrefs anyway
    width, height = r.ue() + 1, r.ue() + 1
    frame_mbs_only = r.flag()
    return AvcSps(sps_id, profile, constraints, level, chroma, separate, depth_luma,
                  depth_chroma, log2_max_frame_num, poc_type, log2_max_poc_lsb, always_zero,
                  frame_mbs_only, max_refs, width, height)


def parse_avc_pps(nal: bytes) -> AvcPps:
    r = BitReader(_payload("h264", nal))
    r.pos = 8
    pps_id, sps_id = r.ue(), r.ue()
    entropy, bottom = r.flag(), r.flag()
    groups = r.ue() + 1
    if groups > 1:
        # Slice groups (FMO, Baseline only) need the SPS to size their map; a CAVLC slice is
        # renumbered without reading further, and a CABAC one with groups cannot exist.
        return AvcPps(pps_id, sps_id, entropy, bottom, groups)
    refs = (r.ue() + 1, r.ue() + 1)
    weighted, bipred = r.flag(), r.u(2)
    init_qp = 26 + r.se()
    r.se()
    r.se()
    deblocking = r.flag()
    r.u(1)  # constrained_intra_pred_flag
    redundant = r.flag()
    return AvcPps(pps_id, sps_id, entropy, bottom, groups, refs, weighted, bipred, deblocking,
                  redundant, init_qp)


# --------------------------------------------------------------------------- HEVC sets


@dataclass(frozen=True)
class ShortTermRps:
    """A short-term reference picture set: (delta POC, used by the current picture)."""

    s0: tuple[tuple[int, bool], ...]
    s1: tuple[tuple[int, bool], ...]

    @property
    def count(self) -> int:
        return len(self.s0) + len(self.s1)

    @property
    def used(self) -> int:
        return sum(u for _, u in self.s0) + sum(u for _, u in self.s1)


@dataclass(frozen=True)
class HevcSps:
    sps_id: int
    vps_id: int
    max_sub_layers: int
    temporal_id_nesting: bool
    profile_space: int
    tier: int
    profile_idc: int
    compatibility: int
    constraints: int
    level_idc: int
    chroma_format_idc: int
    separate_colour_plane: bool
    bit_depth_luma: int
    bit_depth_chroma: int
    pic_size_in_ctbs: int
    log2_max_poc_lsb: int
    sao: bool
    short_term_rps: tuple[ShortTermRps, ...]
    long_term_refs: bool
    lt_used_by_curr: tuple[bool, ...]
    temporal_mvp: bool

    @property
    def chroma_array_type(self) -> int:
        return 0 if self.separate_colour_plane else self.chroma_format_idc


@dataclass(frozen=True)
class HevcPps:
    pps_id: int
    sps_id: int
    dependent_slice_segments: bool
    output_flag_present: bool
    num_extra_slice_header_bits: int
    cabac_init_present: bool
    num_ref_idx_default: tuple[int, int]
    slice_chroma_qp_offsets_present: bool
    weighted_pred: bool
    weighted_bipred: bool
    entry_points: bool  # tiles or WPP
    loop_filter_across_slices: bool
    deblocking_override_enabled: bool
    deblocking_disabled: bool
    lists_modification_present: bool
    slice_header_extension_present: bool
    chroma_qp_offset_list: bool


def _ceil_log2(n: int) -> int:
    return max(0, (n - 1).bit_length())


def _skip_hevc_scaling_list_data(r: BitReader) -> None:
    for size_id in range(4):
        for _ in range(0, 6, 3 if size_id == 3 else 1):
            if not r.flag():  # scaling_list_pred_mode_flag
                r.ue()
                continue
            if size_id > 1:
                r.se()
            for _ in range(min(64, 1 << (4 + 2 * size_id))):
                r.se()


def _st_rps_explicit(r: BitReader) -> ShortTermRps:
    negative, positive = r.ue(), r.ue()
    if negative > 16 or positive > 16:
        raise NalError("short-term RPS is too large")
    s0: list[tuple[int, bool]] = []
    poc = 0
    for _ in range(negative):
        poc -= r.ue() + 1
        s0.append((poc, r.flag()))
    s1: list[tuple[int, bool]] = []
    poc = 0
    for _ in range(positive):
        poc += r.ue() + 1
        s1.append((poc, r.flag()))
    return ShortTermRps(tuple(s0), tuple(s1))


def _st_rps(r: BitReader, idx: int, sets: Sequence[ShortTermRps], in_slice: bool
            ) -> ShortTermRps:
    """st_ref_pic_set(idx) (H.265 7.3.7), derived as in 7.4.8 (eq. 7-61, 7-62); ``sets``
    are the SPS's sets before ``idx``, and a slice header's set has idx == their count."""
    if idx == 0 or not r.flag():  # inter_ref_pic_set_prediction_flag
        return _st_rps_explicit(r)
    delta_idx = r.ue() + 1 if in_slice else 1
    if delta_idx > idx:
        raise NalError("short-term RPS predicts from a set that does not exist")
    sign = r.flag()
    delta_rps = (r.ue() + 1) * (-1 if sign else 1)
    ref = sets[idx - delta_idx]
    used: list[bool] = []
    use_delta: list[bool] = []
    for _ in range(ref.count + 1):
        u = r.flag()
        used.append(u)
        use_delta.append(True if u else r.flag())
    return _derive_rps(ref, delta_rps, used, use_delta)


def _derive_rps(ref: ShortTermRps, delta_rps: int, used: list[bool],
                use_delta: list[bool]) -> ShortTermRps:
    n0 = len(ref.s0)
    own = ref.count  # index of the entry for delta_rps itself
    s0: list[tuple[int, bool]] = []
    for k in reversed(range(len(ref.s1))):
        d = ref.s1[k][0] + delta_rps
        if d < 0 and use_delta[n0 + k]:
            s0.append((d, used[n0 + k]))
    if delta_rps < 0 and use_delta[own]:
        s0.append((delta_rps, used[own]))
    for k in range(n0):
        d = ref.s0[k][0] + delta_rps
        if d < 0 and use_delta[k]:
            s0.append((d, used[k]))
    s1: list[tuple[int, bool]] = []
    for k in reversed(range(n0)):
        d = ref.s0[k][0] + delta_rps
        if d > 0 and use_delta[k]:
            s1.append((d, used[k]))
    if delta_rps > 0 and use_delta[own]:
        s1.append((delta_rps, used[own]))
    for k in range(len(ref.s1)):
        d = ref.s1[k][0] + delta_rps
        if d > 0 and use_delta[n0 + k]:
            s1.append((d, used[n0 + k]))
    return ShortTermRps(tuple(s0), tuple(s1))


#: HEVC profiles whose slice headers we parse: Main, Main 10, Main Still, Range Extensions.
#: Others (high throughput, multiview, scalable, 3D, screen content) add header syntax.
_HEVC_PROFILES = frozenset({1, 2, 3, 4})


def parse_hevc_sps(nal: bytes) -> HevcSps:
    r = BitReader(_payload("hevc", nal))
    r.pos = 16
    vps_id, max_sub_layers_minus1, nesting = r.u(4), r.u(3), r.flag()
    ptl = r.pos
    _skip_profile_tier_level(r, max_sub_layers_minus1)
    general = BitReader(r.data, ptl)
    space, tier, profile = general.u(2), general.u(1), general.u(5)
    compat, constraints, level = general.u(32), general.u(48), general.u(8)
    sps_id = r.ue()
    chroma = r.ue()
    separate = chroma == 3 and r.flag()
    width, height = r.ue(), r.ue()
    if r.flag():  # conformance_window_flag
        for _ in range(4):
            r.ue()
    depth_luma, depth_chroma = r.ue() + 8, r.ue() + 8
    log2_max_poc_lsb = r.ue() + 4
    ordering = r.flag()
    for _ in range(0 if ordering else max_sub_layers_minus1, max_sub_layers_minus1 + 1):
        r.ue()
        r.ue()
        r.ue()
    log2_min_cb = r.ue() + 3
    log2_ctb = log2_min_cb + r.ue()
    for _ in range(4):  # transform block sizes and hierarchy depths
        r.ue()
    if r.flag() and r.flag():  # scaling_list_enabled_flag, sps_scaling_list_data_present_flag
        _skip_hevc_scaling_list_data(r)
    r.u(1)  # amp_enabled_flag
    sao = r.flag()
    if r.flag():  # pcm_enabled_flag
        r.u(8)
        r.ue()
        r.ue()
        r.u(1)
    rps = _sps_rps(r)
    lt_used: tuple[bool, ...] = ()
    long_term = r.flag()
    if long_term:
        lt_used = tuple(_lt_entry(r, log2_max_poc_lsb) for _ in range(r.ue()))
    temporal_mvp = r.flag()
    ctb = 1 << log2_ctb
    ctbs = -(-width // ctb) * -(-height // ctb)
    return HevcSps(sps_id, vps_id, max_sub_layers_minus1 + 1, nesting, space, tier, profile,
                   compat, constraints, level, chroma, separate, depth_luma, depth_chroma, ctbs,
                   log2_max_poc_lsb, sao, rps, long_term, lt_used, temporal_mvp)


def _sps_rps(r: BitReader) -> tuple[ShortTermRps, ...]:
    count = r.ue()
    if count > 64:
        raise NalError("num_short_term_ref_pic_sets is out of range")
    sets: list[ShortTermRps] = []
    for i in range(count):
        sets.append(_st_rps(r, i, sets, in_slice=False))
    return tuple(sets)


def _lt_entry(r: BitReader, log2_max_poc_lsb: int) -> bool:
    r.u(log2_max_poc_lsb)
    return r.flag()


def parse_hevc_pps(nal: bytes) -> HevcPps:
    r = BitReader(_payload("hevc", nal))
    r.pos = 16
    pps_id, sps_id = r.ue(), r.ue()
    dependent, output_flag, extra_bits = r.flag(), r.flag(), r.u(3)
    r.u(1)  # sign_data_hiding_enabled_flag
    cabac_init = r.flag()
    refs = (r.ue() + 1, r.ue() + 1)
    r.se()  # init_qp_minus26
    r.u(1)  # constrained_intra_pred_flag
    transform_skip = r.flag()
    if r.flag():  # cu_qp_delta_enabled_flag
        r.ue()
    r.se()
    r.se()
    chroma_offsets, weighted, bipred = r.flag(), r.flag(), r.flag()
    r.u(1)  # transquant_bypass_enabled_flag
    tiles, wpp = r.flag(), r.flag()
    if tiles:
        _skip_tiles(r)
    across_slices = r.flag()
    override = disabled = False
    if r.flag():  # deblocking_filter_control_present_flag
        override, disabled = r.flag(), r.flag()
        if not disabled:
            r.se()
            r.se()
    if r.flag():  # pps_scaling_list_data_present_flag
        _skip_hevc_scaling_list_data(r)
    lists_mod = r.flag()
    r.ue()  # log2_parallel_merge_level_minus2
    extension = r.flag()
    qp_offset_list = _pps_extensions(r, transform_skip) if r.flag() else False
    return HevcPps(pps_id, sps_id, dependent, output_flag, extra_bits, cabac_init, refs,
                   chroma_offsets, weighted, bipred, tiles or wpp, across_slices, override,
                   disabled, lists_mod, extension, qp_offset_list)


def _skip_tiles(r: BitReader) -> None:
    cols, rows = r.ue(), r.ue()
    if not r.flag():  # uniform_spacing_flag
        for _ in range(cols + rows):
            r.ue()
    r.u(1)  # loop_filter_across_tiles_enabled_flag


def _pps_extensions(r: BitReader, transform_skip: bool) -> bool:
    """Reads pps_range_extension(); True if it enables chroma QP offset lists."""
    range_ext, multilayer, ext_3d, scc, _ = r.flag(), r.flag(), r.flag(), r.flag(), r.u(4)
    if multilayer or ext_3d or scc:
        raise Unsupported("uses HEVC multilayer, 3D or screen-content PPS extensions")
    if not range_ext:
        return False
    if transform_skip:
        r.ue()
    r.u(1)  # cross_component_prediction_enabled_flag
    enabled = r.flag()
    if enabled:
        r.ue()
        for _ in range(r.ue() + 1):
            r.se()
            r.se()
    return enabled


def hevc_profile_supported(sps: HevcSps) -> bool:
    compatible = any(sps.compatibility >> (31 - p) & 1 for p in _HEVC_PROFILES)
    return sps.profile_idc in _HEVC_PROFILES or compatible


# --------------------------------------------------------------------------- slices

AnySps = AvcSps | HevcSps
AnyPps = AvcPps | HevcPps


def slice_pps_id(codec: str, nal: bytes) -> int:
    """The PPS id a slice (segment) names."""
    r = BitReader(_payload(codec, nal[:24]))
    if codec == "h264":
        r.pos = 8
        r.ue()  # first_mb_in_slice
        r.ue()  # slice_type
        return r.ue()
    r.pos = 16
    r.u(1)  # first_slice_segment_in_pic_flag
    if 16 <= nal_type_hevc(nal) <= 23:
        r.u(1)  # no_output_of_prior_pics_flag
    return r.ue()


def rewrite_slice(codec: str, nal: bytes, new_pps_id: int, sps: AnySps, pps: AnyPps) -> bytes:
    """The slice NAL unit naming ``new_pps_id``; ``sps``/``pps`` are the sets it used."""
    if codec == "h264":
        assert isinstance(sps, AvcSps) and isinstance(pps, AvcPps)
        return _rewrite_avc_slice(nal, new_pps_id, sps, pps)
    assert isinstance(sps, HevcSps) and isinstance(pps, HevcPps)
    return _rewrite_hevc_slice(nal, new_pps_id, sps, pps)


def _rewrite_avc_slice(nal: bytes, new_pps_id: int, sps: AvcSps, pps: AvcPps) -> bytes:
    kind = nal_type_h264(nal)
    if kind not in (1, 5):
        raise Unsupported(f"has H.264 slices of NAL type {kind} (data partitioning or "
                          "multiview), whose headers cutfarm cannot renumber")
    rbsp = _payload("h264", nal)
    r = BitReader(rbsp, 8)
    r.ue()
    slice_type = r.ue()
    start = r.pos
    old = r.ue()
    end = r.pos
    if old == new_pps_id:
        return nal
    code = ue_code(new_pps_id)
    if not pps.entropy_coding_mode:
        # CAVLC: the slice data is a plain bit string; shift it and redo the trailing bits.
        return _nal("h264", _edit(rbsp, [(start, end, *code)]))
    if pps.num_slice_groups > 1:
        raise Unsupported("combines CABAC with slice groups")
    header_end = _avc_header_end(r, slice_type, kind, nal[0] >> 5 & 3, sps, pps)
    data = -(-header_end // 8)
    if r.u(8 * data - header_end) != (1 << (8 * data - header_end)) - 1:
        raise NalError("cabac_alignment_one_bit is not 1: the slice header was misread")
    value, width = _pack([_segment(rbsp, 0, start), code, _segment(rbsp, end, header_end)])
    pad = -width % 8
    head = _to_bytes((value << pad) | ((1 << pad) - 1), width + pad)
    return _nal("h264", head + rbsp[data:])


def _avc_header_end(r: BitReader, slice_type: int, kind: int, ref_idc: int, sps: AvcSps,
                    pps: AvcPps) -> int:
    """Bit position after the slice header (H.264 7.3.3); ``r`` is past the PPS id."""
    st = slice_type % 5  # 0 P, 1 B, 2 I, 3 SP, 4 SI
    _avc_picture_fields(r, kind, sps, pps)
    if pps.redundant_pic_cnt_present:
        r.ue()
    refs = _avc_ref_counts(r, st, pps)
    if st not in (2, 4):
        _avc_list_modification(r)
        if st == 1:
            _avc_list_modification(r)
    if (pps.weighted_pred and st in (0, 3)) or (pps.weighted_bipred_idc == 1 and st == 1):
        skip_avc_pred_weight_table(r, sps.chroma_array_type, refs if st == 1 else refs[:1])
    if ref_idc:
        _avc_ref_pic_marking(r, kind == 5)
    if pps.entropy_coding_mode and st not in (2, 4):
        r.ue()  # cabac_init_idc
    r.se()  # slice_qp_delta
    if st in (3, 4):
        r.u(1 if st == 3 else 0)  # sp_for_switch_flag
        r.se()  # slice_qs_delta
    if pps.deblocking_filter_control_present and r.ue() != 1:
        r.se()
        r.se()
    return r.pos


def _avc_picture_fields(r: BitReader, kind: int, sps: AvcSps, pps: AvcPps) -> bool:
    """colour_plane_id .. delta_pic_order_cnt; returns field_pic_flag."""
    if sps.separate_colour_plane:
        r.u(2)
    r.u(sps.log2_max_frame_num)
    field_pic = False
    if not sps.frame_mbs_only:
        field_pic = r.flag()
        if field_pic:
            r.u(1)  # bottom_field_flag
    if kind == 5:
        r.ue()  # idr_pic_id
    bottom = pps.bottom_field_pic_order_in_frame_present and not field_pic
    if sps.poc_type == 0:
        r.u(sps.log2_max_poc_lsb)
        if bottom:
            r.se()
    if sps.poc_type == 1 and not sps.delta_pic_order_always_zero:
        r.se()
        if bottom:
            r.se()
    return field_pic


def _avc_ref_counts(r: BitReader, st: int, pps: AvcPps) -> tuple[int, int]:
    if st == 1:
        r.u(1)  # direct_spatial_mv_pred_flag
    l0, l1 = pps.num_ref_idx_default
    if st in (0, 1, 3) and r.flag():  # num_ref_idx_active_override_flag
        l0 = r.ue() + 1
        if st == 1:
            l1 = r.ue() + 1
    return l0, l1


def _avc_list_modification(r: BitReader) -> None:
    if not r.flag():
        return
    while (idc := r.ue()) != 3:
        if idc > 2:
            raise NalError(f"modification_of_pic_nums_idc {idc} in a single-view slice")
        r.ue()


def skip_avc_pred_weight_table(r: BitReader, chroma: int, refs: Sequence[int]) -> None:
    r.ue()
    if chroma:
        r.ue()
    for count in refs:
        for _ in range(count):
            if r.flag():
                r.se()
                r.se()
            if chroma and r.flag():
                for _ in range(4):
                    r.se()


#: ue(v) fields after each memory_management_control_operation (H.264 7.3.3.3).
_MMCO_FIELDS = {1: 1, 2: 1, 3: 2, 4: 1, 5: 0, 6: 1}


def _avc_ref_pic_marking(r: BitReader, idr: bool) -> None:
    if idr:
        r.u(2)  # no_output_of_prior_pics_flag, long_term_reference_flag
        return
    if not r.flag():  # adaptive_ref_pic_marking_mode_flag
        return
    while (op := r.ue()) != 0:
        if op > 6:
            raise NalError(f"memory_management_control_operation {op}")
        for _ in range(_MMCO_FIELDS[op]):
            r.ue()


def _rewrite_hevc_slice(nal: bytes, new_pps_id: int, sps: HevcSps, pps: HevcPps) -> bytes:
    kind = nal_type_hevc(nal)
    rbsp = _payload("hevc", nal)
    r = BitReader(rbsp, 16)
    first = r.flag()
    if 16 <= kind <= 23:
        r.u(1)
    start = r.pos
    old = r.ue()
    end = r.pos
    if old == new_pps_id:
        return nal
    if not hevc_profile_supported(sps):
        raise Unsupported(f"uses HEVC profile {sps.profile_idc}, whose slice headers cutfarm "
                          "cannot parse")
    header_end = _hevc_header_end(r, first, kind, sps, pps)
    if not r.flag() or r.u(-r.pos % 8) != 0:
        raise NalError("byte_alignment() is wrong: the slice segment header was misread")
    data = r.pos // 8
    value, width = _pack([_segment(rbsp, 0, start), ue_code(new_pps_id),
                          _segment(rbsp, end, header_end), (1, 1)])
    pad = -width % 8
    return _nal("hevc", _to_bytes(value << pad, width + pad) + rbsp[data:])


def _hevc_header_end(r: BitReader, first: bool, kind: int, sps: HevcSps, pps: HevcPps) -> int:
    """Bit position of byte_alignment() in a slice segment header (H.265 7.3.6.1)."""
    dependent = False
    if not first:
        if pps.dependent_slice_segments:
            dependent = r.flag()
        r.u(_ceil_log2(sps.pic_size_in_ctbs))  # slice_segment_address
    if not dependent:
        _hevc_independent_fields(r, kind, sps, pps)
    if pps.entry_points:
        count = r.ue()
        if count:
            width = r.ue() + 1
            if width > 32:
                raise NalError("offset_len_minus1 is out of range")
            r.u(width * count)
    if pps.slice_header_extension_present:
        r.u(8 * r.ue())
    return r.pos


def _hevc_independent_fields(r: BitReader, kind: int, sps: HevcSps, pps: HevcPps) -> None:
    r.u(pps.num_extra_slice_header_bits)
    st = r.ue()  # 0 B, 1 P, 2 I
    if st > 2:
        raise NalError(f"slice_type {st}")
    if pps.output_flag_present:
        r.u(1)
    if sps.separate_colour_plane:
        r.u(2)
    total_curr, temporal_mvp = 0, False
    if kind not in (19, 20):  # not IDR
        r.u(sps.log2_max_poc_lsb)
        total_curr = _hevc_ref_pic_sets(r, sps)
        temporal_mvp = sps.temporal_mvp and r.flag()
    sao = False
    if sps.sao:
        sao = r.flag()
        if sps.chroma_array_type:
            sao = r.flag() or sao
    if st != 2:
        _hevc_inter_fields(r, st, total_curr, temporal_mvp, sps, pps)
    r.se()  # slice_qp_delta
    if pps.slice_chroma_qp_offsets_present:
        r.se()
        r.se()
    if pps.chroma_qp_offset_list:
        r.u(1)
    _hevc_filter_fields(r, sao, pps)


def _hevc_filter_fields(r: BitReader, sao: bool, pps: HevcPps) -> None:
    disabled = pps.deblocking_disabled
    if pps.deblocking_override_enabled and r.flag():
        disabled = r.flag()
        if not disabled:
            r.se()
            r.se()
    if pps.loop_filter_across_slices and (sao or not disabled):
        r.u(1)


def _hevc_ref_pic_sets(r: BitReader, sps: HevcSps) -> int:
    """The slice's reference picture sets; returns NumPicTotalCurr."""
    sets = sps.short_term_rps
    if not r.flag():  # short_term_ref_pic_set_sps_flag
        rps = _st_rps(r, len(sets), sets, in_slice=True)
    else:
        if not sets:
            raise NalError("slice picks a short-term RPS from an SPS that has none")
        idx = r.u(_ceil_log2(len(sets)))
        if idx >= len(sets):
            raise NalError("short_term_ref_pic_set_idx is out of range")
        rps = sets[idx]
    total = rps.used
    if sps.long_term_refs:
        total += _hevc_long_term(r, sps)
    return total


def _hevc_long_term(r: BitReader, sps: HevcSps) -> int:
    table = sps.lt_used_by_curr
    from_sps = r.ue() if table else 0
    count = from_sps + r.ue()
    used = 0
    for i in range(count):
        if i < from_sps:
            idx = r.u(_ceil_log2(len(table)))
            if idx >= len(table):
                raise NalError("lt_idx_sps is out of range")
            used += table[idx]
        else:
            r.u(sps.log2_max_poc_lsb)
            used += r.flag()
        if r.flag():  # delta_poc_msb_present_flag
            r.ue()
    return used


def _hevc_inter_fields(r: BitReader, st: int, total_curr: int, temporal_mvp: bool,
                       sps: HevcSps, pps: HevcPps) -> None:
    refs = list(pps.num_ref_idx_default)
    if r.flag():  # num_ref_idx_active_override_flag
        refs[0] = r.ue() + 1
        if st == 0:
            refs[1] = r.ue() + 1
    lists = refs if st == 0 else refs[:1]
    if pps.lists_modification_present and total_curr > 1:
        bits = _ceil_log2(total_curr)
        for count in lists:
            if r.flag():  # ref_pic_list_modification_flag_lX
                r.u(bits * count)
    if st == 0:
        r.u(1)  # mvd_l1_zero_flag
    if pps.cabac_init_present:
        r.u(1)
    if temporal_mvp:
        from_l0 = st != 0 or r.flag()
        if refs[0 if from_l0 else 1] > 1:
            r.ue()  # collocated_ref_idx
    if (pps.weighted_pred and st == 1) or (pps.weighted_bipred and st == 0):
        _hevc_pred_weight_table(r, sps.chroma_array_type, lists)
    r.ue()  # five_minus_max_num_merge_cand


def _hevc_pred_weight_table(r: BitReader, chroma: int, lists: Sequence[int]) -> None:
    r.ue()
    if chroma:
        r.se()
    for count in lists:
        luma = [r.flag() for _ in range(count)]
        colour = [r.flag() for _ in range(count)] if chroma else [False] * count
        for has_luma, has_chroma in zip(luma, colour, strict=True):
            if has_luma:
                r.se()
                r.se()
            if has_chroma:
                for _ in range(4):
                    r.se()


# --------------------------------------------------------------------------- SEI


def drop_sei_messages(codec: str, nal: bytes) -> bytes | None:
    """An SEI NAL unit without the messages that name SPS/VPS ids: the same object when it
    has none (or cannot be parsed safely), None when nothing else is left in it."""
    if nal_type(codec, nal) not in _SEI_TYPES[codec]:
        return nal
    h = _HEADER[codec]
    rbsp = unescape(nal[h:])
    messages = _sei_messages(rbsp)
    if messages is None or not any(t in _SEI_WITH_IDS[codec] for t, _, _ in messages):
        return nal
    kept = [rbsp[a:b] for t, a, b in messages if t not in _SEI_WITH_IDS[codec]]
    if not kept:
        return None
    return nal[:h] + escape(b"".join(kept) + b"\x80")


def _sei_messages(rbsp: bytes) -> list[tuple[int, int, int]] | None:
    """(payload type, start, end) of each message, or None if the RBSP does not parse."""
    trailing = len(rbsp.rstrip(b"\x00")) - 1
    if trailing < 0 or rbsp[trailing] != 0x80:
        return None
    out: list[tuple[int, int, int]] = []
    pos = 0
    while pos < trailing:
        start = pos
        values = []
        for _ in range(2):  # payloadType, payloadSize: 0xFF-extended bytes
            value = 0
            while pos < trailing and rbsp[pos] == 0xFF:
                value += 255
                pos += 1
            if pos >= trailing:
                return None
            values.append(value + rbsp[pos])
            pos += 1
        pos += values[1]
        if pos > trailing:
            return None
        out.append((values[0], start, pos))
    return out


# --------------------------------------------------------------------------- allocation


_REF_KIND = {"h264": {"pps": "sps"}, "hevc": {"sps": "vps", "pps": "sps"}}


class Allocator:
    """The track's parameter sets, numbered as they are added.

    ``add`` takes the sets one source uses together (a camera's record, possibly updated
    by in-band sets; one of our encoders' extradata) and returns how that source's ids
    become the track's. An identical set already in the track is shared; otherwise the
    source's own id is kept when free, else the free id closest in code length.
    """

    def __init__(self, codec: str, limits: Mapping[str, int] | None = None) -> None:
        self.codec = codec
        self.limits = dict(limits or LIMITS[codec])
        self.sets: dict[str, dict[int, bytes]] = {k: {} for k in _KINDS[codec]}
        self._shared: dict[str, dict[bytes, list[int]]] = {k: {} for k in _KINDS[codec]}

    def add(self, sets: Iterable[ParamSet]) -> IdMap:
        by_kind: dict[str, list[ParamSet]] = {k: [] for k in _KINDS[self.codec]}
        for ps in sets:
            by_kind[ps.kind].append(ps)
        ids: dict[str, dict[int, int]] = {k: {} for k in _KINDS[self.codec]}
        for kind in _KINDS[self.codec]:
            ref_kind = _REF_KIND[self.codec].get(kind)
            for ps in sorted(by_kind[kind], key=lambda p: p.id):
                new_ref = None
                if ref_kind is not None:
                    assert ps.ref is not None
                    if ps.ref not in ids[ref_kind]:
                        raise Unsupported(f"has a {kind.upper()} that names "
                                          f"{ref_kind.upper()} {ps.ref}, which it lacks")
                    new_ref = ids[ref_kind][ps.ref]
                ids[kind][ps.id] = self._place(self._with_ref(ps, new_ref))
        return IdMap(ids)

    def _with_ref(self, ps: ParamSet, new_ref: int | None) -> ParamSet:
        if new_ref is None or new_ref == ps.ref:
            return ps
        moved = parse_set(self.codec, renumber(self.codec, ps, ps.id, new_ref))
        assert moved is not None
        return moved

    def _place(self, ps: ParamSet) -> int:
        key = canonical(self.codec, ps)
        same = self._shared[ps.kind].get(key)
        if same:
            return ps.id if ps.id in same else same[0]
        new_id = ps.id if ps.id not in self.sets[ps.kind] else self._free(ps.kind, ps.id)
        self.sets[ps.kind][new_id] = renumber(self.codec, ps, new_id)
        self._shared[ps.kind].setdefault(key, []).append(new_id)
        return new_id

    def _free(self, kind: str, old: int) -> int:
        free = [i for i in range(self.limits[kind]) if i not in self.sets[kind]]
        if not free:
            raise TooManySets(f"needs more than {self.limits[kind]} different "
                              f"{kind.upper()}s, the most one stream can number")
        width = ue_width(old)
        return min(free, key=lambda i: (abs(ue_width(i) - width), i))

    def free_id(self, kinds: Sequence[str], limit: int) -> int | None:
        """The lowest id below ``limit`` that no set of any of ``kinds`` uses yet."""
        return next((i for i in range(limit)
                     if all(i not in self.sets[k] for k in kinds)), None)

    def record_sets(self) -> dict[str, list[bytes]]:
        return {k: [v[i] for i in sorted(v)] for k, v in self.sets.items()}


# --------------------------------------------------------------------------- records


def _avc_level_rank(s: AvcSps) -> float:
    # Level 1b is level_idc 9, or 11 with constraint_set3_flag in Baseline/Main/Extended.
    if s.level_idc == 9 or (s.level_idc == 11 and s.constraint_flags & 0x10
                            and s.profile_idc in (66, 77, 88)):
        return 10.5
    return float(s.level_idc)


def avcc(sps: Sequence[bytes], pps: Sequence[bytes], length_size: int = 4) -> bytes:
    """AVCDecoderConfigurationRecord holding every set. Its profile, compatibility and
    level fields hold for all of them (14496-15 5.3.3.1.2): the highest profile and level,
    the compatibility flags that every SPS sets."""
    if not sps or len(sps) > 31 or not pps or len(pps) > 255:
        raise TooManySets("needs more SPS or PPS than an avcC record holds (31 and 255)")
    info = [parse_avc_sps(n) for n in sps]
    compat = 0xFF
    for s in info:
        compat &= s.constraint_flags
    top = max(info, key=_avc_level_rank)
    profile = max(s.profile_idc for s in info)
    out = bytearray([1, profile, compat, top.level_idc, 0xFC | (length_size - 1),
                     0xE0 | len(sps)])
    for n in sps:
        out += len(n).to_bytes(2, "big") + n
    out.append(len(pps))
    for n in pps:
        out += len(n).to_bytes(2, "big") + n
    if profile in (100, 110, 122, 144):
        first = info[0]
        out += bytes([0xFC | first.chroma_format_idc, 0xF8 | (first.bit_depth_luma - 8),
                      0xF8 | (first.bit_depth_chroma - 8), 0])
    return bytes(out)


def hvcc(vps: Sequence[bytes], sps: Sequence[bytes], pps: Sequence[bytes],
         extra: Sequence[tuple[int, bool, Sequence[bytes]]] = (), length_size: int = 4) -> bytes:
    """HEVCDecoderConfigurationRecord holding every set, arrays marked complete (as hvc1
    requires); ``extra`` arrays (e.g. declarative SEI) are copied as given. The general
    profile/tier/level fields hold for every SPS (14496-15 8.3.3.1.2)."""
    if not vps or not sps or not pps:
        raise Unsupported("lacks a VPS, SPS or PPS for the hvcC record")
    info = [parse_hevc_sps(n) for n in sps]
    compat, constraints = 0xFFFFFFFF, (1 << 48) - 1
    for s in info:
        compat &= s.compatibility
        constraints &= s.constraints
    first = info[0]
    out = bytearray([1, first.profile_space << 6 | max(s.tier for s in info) << 5
                     | max(s.profile_idc for s in info)])
    out += compat.to_bytes(4, "big") + constraints.to_bytes(6, "big")
    out.append(max(s.level_idc for s in info))
    # min_spatial_segmentation_idc 0 and parallelismType 0: no promise, true for all.
    out += bytes([0xF0, 0x00, 0xFC, 0xFC | first.chroma_format_idc,
                  0xF8 | (first.bit_depth_luma - 8), 0xF8 | (first.bit_depth_chroma - 8)])
    out += b"\x00\x00"  # avgFrameRate: unspecified
    layers = max(s.max_sub_layers for s in info)
    nested = all(s.temporal_id_nesting for s in info)
    out.append(layers << 3 | nested << 2 | (length_size - 1))  # constantFrameRate 0
    arrays = [(32, True, vps), (33, True, sps), (34, True, pps), *extra]
    out.append(len(arrays))
    for kind, complete, nals in arrays:
        out.append(complete << 7 | kind)
        out += len(nals).to_bytes(2, "big")
        for n in nals:
            out += len(n).to_bytes(2, "big") + n
    return bytes(out)
