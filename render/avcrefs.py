"""Which H.264 pictures a stretch of wanted frames depends on, and stand-ins for the rest.

Why
---
To re-encode the frames after a cut in mid-GOP, the decoder must first rebuild the
pictures they predict from, starting at the GOP's key frame. Non-reference pictures are
simply left out (:func:`render.nal.disposable`). Reference pictures are the costly rest:
with B-pyramids (x264's default, OBS's too) every other picture is a reference B-frame,
yet the P-frames that carry the chain to the cut seldom predict from them. At 4K a
picture costs ~75 ms of CPU to decode, so decoding only the ones the wanted frames need
is the largest saving left around a cut.

A reference picture cannot just be dropped, though: it advances ``frame_num``, occupies
the decoded picture buffer (DPB) and may carry memory-management commands. Without it
the decoder sees a gap, invents a picture whose order count differs from the real one,
and the default reference lists of later pictures may then name the wrong pictures.
So an unneeded reference picture is replaced by a **stand-in**: its own first slice
header, bit for bit (same ``frame_num``, order count, marking commands, list sizes),
followed by slice data in which every macroblock is skipped. The decoder's DPB then
evolves exactly as with the real picture, and decoding the stand-in costs a motion
compensated copy instead of a full decode. Its pixels are wrong, which is harmless
precisely because nothing that is decoded for real refers to it.

What "needed" means
-------------------
:func:`needed` replays the DPB the way H.264 (8.2.4, 8.2.5) defines it for frame
pictures: picture order counts (types 0 and 2), the default reference lists (P: by
``PicNum``; B: by order count around the current picture), the modifications in each
slice header, the active list sizes, sliding-window marking and MMCO 1. A picture is
needed when it is wanted, sits at or after the first wanted one in decode order, or is
in an active reference list of a needed picture. Anything outside that model (field or
MBAFF coding, long-term references, MMCO 2-6, order count type 1, gaps in
``frame_num``, slice groups, redundant pictures) raises :class:`Unmodelled`, and the
caller then decodes every reference picture as before. The model is checked against
FFmpeg on x264 streams of every kind of reference structure (tests/test_avcrefs.py):
each wanted frame must decode to the same pixels with and without stand-ins.

Stand-in slice data (7.3.4): CAVLC writes one ``mb_skip_run`` covering the picture;
CABAC encodes ``mb_skip_flag`` = 1 and ``end_of_slice_flag`` for every macroblock with
the arithmetic coder of 9.3.4 (a skipped neighbour never raises the skip context, so a
single context is used throughout).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .nal import H264_IDR, H264_PPS, H264_SLICE, H264_SPS, NalError
from .paramsets import (
    AvcPps,
    AvcSps,
    BitReader,
    escape,
    parse_avc_pps,
    parse_avc_sps,
    skip_avc_pred_weight_table,
    ue_code,
    unescape,
)

__all__ = ["NalHead", "Picture", "SliceHeader", "Unmodelled", "nal_heads", "needed",
           "parse_picture", "parse_slice", "picture_maps", "stand_in"]


class Unmodelled(ValueError):
    """The stream uses something :func:`needed` does not model: keep every picture."""


# --------------------------------------------------------------------------- slice headers

@dataclass(frozen=True)
class SliceHeader:
    """The fields of one H.264 slice header (7.3.3) that reference handling depends on."""

    ref_idc: int
    idr: bool
    slice_type: int  # 0 P, 1 B, 2 I
    first_mb: int
    frame_num: int
    poc_lsb: int
    delta_poc_bottom: int
    active: tuple[int, int]
    #: ref_pic_list_modification of list 0 and list 1: (modification_of_pic_nums_idc, value).
    modifications: tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]
    #: difference_of_pic_nums_minus1 of each MMCO 1; None: sliding window.
    unmark: tuple[int, ...] | None
    #: Bit position in the RBSP where the slice header ends (before any CABAC alignment).
    end: int
    cabac_init_idc: int
    slice_qp: int


@dataclass(frozen=True)
class Picture:
    """A sample's picture as far as references go: its first slice's header, and the
    headers of every slice when all of them could be read (None: any may have other
    lists, so the picture may use anything in the DPB)."""

    header: SliceHeader
    slices: tuple[SliceHeader, ...] | None
    sps: AvcSps
    pps: AvcPps


def _modifications(r: BitReader) -> tuple[tuple[int, int], ...]:
    if not r.flag():
        return ()
    ops = []
    while (idc := r.ue()) != 3:
        if idc > 1:
            raise Unmodelled(f"list modification {idc} (long-term or multiview reference)")
        ops.append((idc, r.ue()))
    return tuple(ops)


def _sets(pps_id: int, sps_by_id: Mapping[int, AvcSps], pps_by_id: Mapping[int, AvcPps]
          ) -> tuple[AvcSps, AvcPps]:
    pps = pps_by_id.get(pps_id)
    sps = None if pps is None else sps_by_id.get(pps.sps_id)
    if sps is None or pps is None:
        raise Unmodelled("a slice names a parameter set that was not seen")
    if not sps.frame_mbs_only or sps.separate_colour_plane or sps.poc_type == 1:
        raise Unmodelled("field/MBAFF coding, separate colour planes or order count type 1")
    if pps.num_slice_groups > 1 or pps.redundant_pic_cnt_present:
        raise Unmodelled("slice groups or redundant pictures")
    return sps, pps


def _marking(r: BitReader, idr: bool) -> tuple[int, ...] | None:
    """dec_ref_pic_marking: the MMCO 1 operands, or None for the sliding window."""
    if idr:
        r.u(1)  # no_output_of_prior_pics_flag
        if r.flag():
            raise Unmodelled("long-term reference IDR")
        return None
    if not r.flag():  # adaptive_ref_pic_marking_mode_flag
        return None
    ops = []
    while (op := r.ue()) != 0:
        if op != 1:
            raise Unmodelled(f"memory management operation {op}")
        ops.append(r.ue())
    return tuple(ops)


def _active(r: BitReader, slice_type: int, pps: AvcPps) -> tuple[int, int]:
    l0, l1 = pps.num_ref_idx_default
    if slice_type != 2 and r.flag():  # num_ref_idx_active_override_flag
        l0 = r.ue() + 1
        if slice_type == 1:
            l1 = r.ue() + 1
    return (0, 0) if slice_type == 2 else (l0, 0) if slice_type == 0 else (l0, l1)


def parse_slice(nal: bytes, sps_by_id: Mapping[int, AvcSps], pps_by_id: Mapping[int, AvcPps]
                ) -> tuple[SliceHeader, AvcSps, AvcPps]:
    """Parse an H.264 slice NAL unit's header (frame pictures only)."""
    kind = nal[0] & 0x1F
    if kind not in (H264_SLICE, H264_IDR):
        raise Unmodelled(f"slice NAL type {kind}")
    ref_idc = nal[0] >> 5 & 3
    r = BitReader(unescape(nal[1:]))
    first_mb = r.ue()
    slice_type = r.ue() % 5
    if slice_type > 2:
        raise Unmodelled("SP/SI slices")
    sps, pps = _sets(r.ue(), sps_by_id, pps_by_id)
    frame_num = r.u(sps.log2_max_frame_num)
    idr = kind == H264_IDR
    if idr:
        r.ue()  # idr_pic_id
    poc_lsb = bottom = 0
    if sps.poc_type == 0:
        poc_lsb = r.u(sps.log2_max_poc_lsb)
        if pps.bottom_field_pic_order_in_frame_present:
            bottom = r.se()
    if slice_type == 1:
        r.u(1)  # direct_spatial_mv_pred_flag
    l0, l1 = _active(r, slice_type, pps)
    mods: tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]] = ((), ())
    if slice_type != 2:
        m0 = _modifications(r)
        mods = (m0, _modifications(r) if slice_type == 1 else ())
    if (pps.weighted_pred and slice_type == 0) or (pps.weighted_bipred_idc == 1
                                                    and slice_type == 1):
        skip_avc_pred_weight_table(r, sps.chroma_array_type, (l0, l1) if slice_type == 1 else (l0,))
    unmark = _marking(r, idr) if ref_idc else None
    cabac_init_idc = r.ue() if pps.entropy_coding_mode and slice_type != 2 else 0
    if cabac_init_idc > 2:
        raise NalError(f"cabac_init_idc {cabac_init_idc}")
    slice_qp = pps.pic_init_qp + r.se()
    if pps.deblocking_filter_control_present and r.ue() != 1:
        r.se()
        r.se()
    header = SliceHeader(ref_idc, idr, slice_type, first_mb, frame_num, poc_lsb, bottom,
                         (l0, l1), mods, unmark, r.pos, cabac_init_idc, slice_qp)
    return header, sps, pps


#: A NAL unit's first bytes, and whether they are all of it.
NalHead = tuple[bytes, bool]


def nal_heads(chunk: bytes, length_size: int, start: int, size: int
              ) -> tuple[list[NalHead], int | None]:
    """The NAL units whose length field lies in ``chunk``, the bytes of a ``size``-byte
    length-prefixed sample from position ``start`` on (a NAL unit boundary); and where
    to read on for the next unit (None: every unit of the sample was reached).

    A unit running past the chunk is given cut short: its header is what matters, and
    reading on resumes after it, so a sample's units are found with a few small reads.
    """
    units: list[NalHead] = []
    pos = 0
    while start + pos < size:
        if pos + length_size > len(chunk):
            return units, start + pos
        n = int.from_bytes(chunk[pos:pos + length_size], "big")
        if n == 0 or start + pos + length_size + n > size:
            raise NalError("NAL unit lengths do not add up to the sample")
        if pos + length_size == len(chunk):
            return units, start + pos  # nothing of the unit read: read on from its length
        pos += length_size
        unit = chunk[pos:pos + n]
        units.append((unit, len(unit) == n))
        pos += n
        if len(unit) < n:
            return units, (start + pos if start + pos < size else None)
    return units, None


def parse_picture(units: Sequence[NalHead], reached_all: bool, sps_by_id: dict[int, AvcSps],
                  pps_by_id: dict[int, AvcPps]) -> Picture | None:
    """The picture of a sample from its NAL units' heads (None: no slice in it), updating
    the parameter-set maps from sets it carries. ``reached_all``: every unit of the
    sample is in ``units``. A slice cut short counts when its header is all there."""
    headers: list[SliceHeader] = []
    first: tuple[SliceHeader, AvcSps, AvcPps] | None = None
    for unit, whole in units:  # never empty: nal_heads reads on before giving one
        kind = unit[0] & 0x1F
        if kind in (H264_SPS, H264_PPS):
            if not whole:
                raise Unmodelled("parameter set cut short")
            _learn(unit, sps_by_id, pps_by_id)
        elif kind in (H264_SLICE, H264_IDR):
            try:
                parsed = parse_slice(unit, sps_by_id, pps_by_id)
            except NalError:
                if whole or first is None:
                    raise
                reached_all = False  # a later slice's header runs past what was read
                break
            if first is None:
                first = parsed
            headers.append(parsed[0])
        elif 2 <= kind <= 4 or kind in (20, 21):
            raise Unmodelled(f"NAL type {kind} (data partitioning or multiview)")
    if first is None:
        if not reached_all:
            raise Unmodelled("no slice header in the bytes read")
        return None
    header, sps, pps = first
    if header.first_mb != 0:
        raise Unmodelled("a picture whose first slice does not start at macroblock 0")
    return Picture(header, tuple(headers) if reached_all else None, sps, pps)


# --------------------------------------------------------------------------- the DPB

@dataclass
class _Ref:
    index: int
    frame_num: int
    poc: int


@dataclass
class _State:
    refs: list[_Ref] = field(default_factory=list)
    prev_ref_frame_num: int | None = None
    prev_poc_msb: int = 0
    prev_poc_lsb: int = 0
    prev_frame_num: int = 0
    prev_frame_num_offset: int = 0


def _poc(state: _State, h: SliceHeader, sps: AvcSps) -> int:
    if sps.poc_type == 0:
        if h.idr:
            state.prev_poc_msb = state.prev_poc_lsb = 0
        max_lsb = 1 << sps.log2_max_poc_lsb
        prev_msb, prev_lsb = state.prev_poc_msb, state.prev_poc_lsb
        if h.poc_lsb < prev_lsb and prev_lsb - h.poc_lsb >= max_lsb // 2:
            msb = prev_msb + max_lsb
        elif h.poc_lsb > prev_lsb and h.poc_lsb - prev_lsb > max_lsb // 2:
            msb = prev_msb - max_lsb
        else:
            msb = prev_msb
        top = msb + h.poc_lsb
        if h.ref_idc:
            state.prev_poc_msb, state.prev_poc_lsb = msb, h.poc_lsb
        return min(top, top + h.delta_poc_bottom)
    # type 2: output order is decoding order
    max_frame_num = 1 << sps.log2_max_frame_num
    if h.idr:
        offset = 0
    elif state.prev_frame_num > h.frame_num:
        offset = state.prev_frame_num_offset + max_frame_num
    else:
        offset = state.prev_frame_num_offset
    state.prev_frame_num, state.prev_frame_num_offset = h.frame_num, offset
    if h.idr:
        return 0
    return 2 * (offset + h.frame_num) - (0 if h.ref_idc else 1)


def _pic_num(ref: _Ref, frame_num: int, max_frame_num: int) -> int:
    return ref.frame_num - max_frame_num if ref.frame_num > frame_num else ref.frame_num


def _lists(state: _State, h: SliceHeader, sps: AvcSps, poc: int) -> set[int]:
    """Decode indices of the pictures in the slice's active reference lists."""
    if h.slice_type == 2:
        return set()
    max_frame_num = 1 << sps.log2_max_frame_num
    refs = state.refs
    if h.slice_type == 0:
        init = [sorted(refs, key=lambda r: -_pic_num(r, h.frame_num, max_frame_num))]
    else:
        before = sorted((r for r in refs if r.poc < poc), key=lambda r: -r.poc)
        after = sorted((r for r in refs if r.poc > poc), key=lambda r: r.poc)
        l0, l1 = before + after, after + before
        if len(l1) > 1 and l1 == l0:
            l1[0], l1[1] = l1[1], l1[0]
        init = [l0, l1]
    used: set[int] = set()
    for lx, (ref_list, active) in enumerate(zip(init, h.active, strict=False)):
        entries: list[_Ref | None] = list(ref_list[:active])
        entries += [None] * (active - len(entries))
        pred = h.frame_num
        for i, (idc, value) in enumerate(h.modifications[lx]):
            diff = value + 1
            no_wrap = pred - diff if idc == 0 else pred + diff
            if no_wrap < 0:
                no_wrap += max_frame_num
            elif no_wrap >= max_frame_num:
                no_wrap -= max_frame_num
            pred = no_wrap
            pic_num = no_wrap - max_frame_num if no_wrap > h.frame_num else no_wrap
            match = next((r for r in refs
                          if _pic_num(r, h.frame_num, max_frame_num) == pic_num), None)
            rest = [e for e in entries[i:] if e is None or e is not match]
            entries = [*entries[:i], match, *rest][:active]
        used.update(e.index for e in entries if e is not None)
    return used


def _mark(state: _State, h: SliceHeader, sps: AvcSps, index: int, poc: int) -> None:
    if not h.ref_idc:
        return
    max_frame_num = 1 << sps.log2_max_frame_num
    if h.idr:
        state.refs.clear()
    elif h.unmark is not None:
        for diff in h.unmark:
            pic_num = h.frame_num - (diff + 1)
            state.refs = [r for r in state.refs
                          if _pic_num(r, h.frame_num, max_frame_num) != pic_num]
    elif len(state.refs) >= max(sps.max_num_ref_frames, 1):
        oldest = min(state.refs, key=lambda r: _pic_num(r, h.frame_num, max_frame_num))
        state.refs.remove(oldest)
    state.refs.append(_Ref(index, h.frame_num, poc))
    state.prev_ref_frame_num = h.frame_num


def _check_frame_num(state: _State, h: SliceHeader, sps: AvcSps) -> None:
    prev = state.prev_ref_frame_num
    if h.idr or prev is None:
        return
    # Frames only: equal to the previous reference's is not allowed either (7.4.3).
    if h.frame_num != (prev + 1) % (1 << sps.log2_max_frame_num):
        raise Unmodelled("a gap in frame_num")


def needed(pictures: Sequence[Picture | None], frontier: int, complete: bool) -> set[int]:
    """Positions in ``pictures`` (decode order) that must be decoded for real.

    Every picture from ``frontier`` on is needed. ``complete``: ``pictures`` runs to the
    end of what will be decoded; otherwise a picture before the frontier that is still in
    the DPB after the last one may be referenced later, and counts as needed.
    """
    state = _State()
    uses: list[set[int]] = []
    for i, pic in enumerate(pictures):
        if pic is None:
            uses.append(set())
            continue
        h = pic.header
        _check_frame_num(state, h, pic.sps)
        poc = _poc(state, h, pic.sps)
        if pic.slices is None:  # not every slice was read: any picture in the DPB may be used
            used = {r.index for r in state.refs}
        else:
            used = set()
            for s in pic.slices:
                used |= _lists(state, s, pic.sps, poc)
        uses.append(used)
        _mark(state, h, pic.sps, i, poc)
    need = set(range(frontier, len(pictures)))
    if not complete:
        need.update(r.index for r in state.refs)
    for i in range(len(pictures) - 1, -1, -1):
        if i in need:
            need |= uses[i]
    return need


# --------------------------------------------------------------------------- stand-ins

#: rangeTabLPS (H.264 Table 9-44), by pStateIdx then qCodIRangeIdx.
_RANGE_LPS = (
    (128, 176, 208, 240), (128, 167, 197, 227), (128, 158, 187, 216), (123, 150, 178, 205),
    (116, 142, 169, 195), (111, 135, 160, 185), (105, 128, 152, 175), (100, 122, 144, 166),
    (95, 116, 137, 158), (90, 110, 130, 150), (85, 104, 123, 142), (81, 99, 117, 135),
    (77, 94, 111, 128), (73, 89, 105, 122), (69, 85, 100, 116), (66, 80, 95, 110),
    (62, 76, 90, 104), (59, 72, 86, 99), (56, 69, 81, 94), (53, 65, 77, 89),
    (51, 62, 73, 85), (48, 59, 69, 80), (46, 56, 66, 76), (43, 53, 63, 72),
    (41, 50, 59, 69), (39, 48, 56, 65), (37, 45, 54, 62), (35, 43, 51, 59),
    (33, 41, 48, 56), (32, 39, 46, 53), (30, 37, 43, 50), (29, 35, 41, 48),
    (27, 33, 39, 45), (26, 31, 37, 43), (24, 30, 35, 41), (23, 28, 33, 39),
    (22, 27, 32, 37), (21, 26, 30, 35), (20, 24, 29, 33), (19, 23, 27, 31),
    (18, 22, 26, 30), (17, 21, 25, 28), (16, 20, 23, 27), (15, 19, 22, 25),
    (14, 18, 21, 24), (14, 17, 20, 23), (13, 16, 19, 22), (12, 15, 18, 21),
    (12, 14, 17, 20), (11, 14, 16, 19), (11, 13, 15, 18), (10, 12, 15, 17),
    (10, 12, 14, 16), (9, 11, 13, 15), (9, 11, 12, 14), (8, 10, 12, 14),
    (8, 9, 11, 13), (7, 9, 11, 12), (7, 9, 10, 12), (7, 8, 10, 11),
    (6, 8, 9, 11), (6, 7, 9, 10), (6, 7, 8, 9), (2, 2, 2, 2),
)
#: transIdxLPS (Table 9-45); transIdxMPS is min(pStateIdx + 1, 62).
_NEXT_LPS = (
    0, 0, 1, 2, 2, 4, 4, 5, 6, 7, 8, 9, 9, 11, 11, 12,
    13, 13, 15, 15, 16, 16, 18, 18, 19, 19, 21, 21, 22, 22, 23, 24,
    24, 25, 26, 26, 27, 27, 28, 29, 29, 30, 30, 30, 31, 32, 32, 33,
    33, 33, 34, 34, 35, 35, 35, 36, 36, 36, 37, 37, 37, 38, 38, 63,
)
#: (m, n) of mb_skip_flag's first context by cabac_init_idc: ctxIdx 11 (P, Table 9-13)
#: and 24 (B, Table 9-14).
_SKIP_INIT = {0: ((23, 33), (22, 25), (29, 16)), 1: ((18, 64), (26, 34), (20, 40))}


class _BitWriter:
    def __init__(self) -> None:
        self.value = 0
        self.width = 0

    def put(self, bits: int, n: int) -> None:
        self.value = (self.value << n) | bits
        self.width += n


class _Cabac:
    """The arithmetic encoder of H.264 9.3.4, for decisions in one context."""

    def __init__(self, out: _BitWriter, m: int, n: int, slice_qp: int) -> None:
        self.out = out
        self.low, self.range, self.outstanding, self.first = 0, 510, 0, True
        pre = min(126, max(1, ((m * min(51, max(0, slice_qp))) >> 4) + n))
        self.state, self.mps = (63 - pre, 0) if pre <= 63 else (pre - 64, 1)

    def _put(self, bit: int) -> None:
        if self.first:
            self.first = False
        else:
            self.out.put(bit, 1)
        if self.outstanding:
            self.out.put((1 << self.outstanding) - 1 if not bit else 0, self.outstanding)
            self.outstanding = 0

    def _renorm(self) -> None:
        while self.range < 256:
            if self.low < 256:
                self._put(0)
            elif self.low >= 512:
                self.low -= 512
                self._put(1)
            else:
                self.low -= 256
                self.outstanding += 1
            self.range <<= 1
            self.low <<= 1

    def decision(self, bit: int) -> None:
        lps = _RANGE_LPS[self.state][(self.range >> 6) & 3]
        self.range -= lps
        if bit == self.mps:
            self.state = min(self.state + 1, 62)
        else:
            self.low += self.range
            self.range = lps
            if self.state == 0:
                self.mps = 1 - self.mps
            self.state = _NEXT_LPS[self.state]
        self._renorm()

    def terminate(self, bit: int) -> None:
        self.range -= 2
        if not bit:
            self._renorm()
            return
        self.low += self.range
        self.range = 2
        self._renorm()
        self._put((self.low >> 9) & 1)
        self.out.put(((self.low >> 7) & 3) | 1, 2)  # its last bit is rbsp_stop_one_bit


def stand_in(sample: bytes, length_size: int, picture: Picture) -> bytes:
    """``sample`` with its slices replaced by one slice (the first one's header) in which
    every macroblock is skipped; every other NAL unit (parameter sets, SEI) is kept."""
    h, pps, sps = picture.header, picture.pps, picture.sps
    if h.slice_type == 2:
        raise Unmodelled("an intra picture has no skipped macroblocks")
    units = [unit for unit, _ in nal_heads(sample, length_size, 0, len(sample))[0]]
    out: list[bytes] = []
    done = False
    for unit in units:
        kind = unit[0] & 0x1F
        if kind not in (H264_SLICE, H264_IDR):
            out.append(unit)
        elif not done:
            out.append(_skipped_slice(unit, h, sps, pps))
            done = True
    return b"".join(len(u).to_bytes(length_size, "big") + u for u in out)


def _skipped_slice(unit: bytes, h: SliceHeader, sps: AvcSps, pps: AvcPps) -> bytes:
    head = unescape(unit[1:])[:(h.end + 7) // 8]
    w = _BitWriter()
    w.put(int.from_bytes(head, "big") >> (8 * len(head) - h.end), h.end)
    mbs = sps.width_in_mbs * sps.height_in_map_units
    if not pps.entropy_coding_mode:
        w.put(*ue_code(mbs))  # mb_skip_run
        w.put(1, 1)  # rbsp_stop_one_bit
        w.put(0, -w.width % 8)
        return unit[:1] + escape(w.value.to_bytes(w.width // 8, "big"))
    w.put((1 << (-w.width % 8)) - 1, -w.width % 8)  # cabac_alignment_one_bit
    data = _cabac_skips(h.slice_type, h.cabac_init_idc, h.slice_qp, mbs)
    return unit[:1] + escape(w.value.to_bytes(w.width // 8, "big") + data)


@functools.lru_cache(maxsize=64)
def _cabac_skips(slice_type: int, cabac_init_idc: int, slice_qp: int, mbs: int) -> bytes:
    """CABAC slice data skipping ``mbs`` macroblocks, through its stop bit and alignment
    (byte-aligned at both ends, so one encoding serves every picture alike)."""
    w = _BitWriter()
    m, n = _SKIP_INIT[slice_type][cabac_init_idc]
    cabac = _Cabac(w, m, n, slice_qp)
    for i in range(mbs):
        cabac.decision(1)  # mb_skip_flag
        cabac.terminate(1 if i == mbs - 1 else 0)  # end_of_slice_flag
    w.put(0, -w.width % 8)
    return w.value.to_bytes(w.width // 8, "big")


def picture_maps(parameter_sets: Iterable[bytes]) -> tuple[dict[int, AvcSps], dict[int, AvcPps]]:
    """SPS and PPS by id from a record's sets."""
    sps_by_id: dict[int, AvcSps] = {}
    pps_by_id: dict[int, AvcPps] = {}
    for unit in parameter_sets:
        _learn(unit, sps_by_id, pps_by_id)
    return sps_by_id, pps_by_id


def _learn(unit: bytes, sps_by_id: dict[int, AvcSps], pps_by_id: dict[int, AvcPps]) -> None:
    kind = unit[0] & 0x1F
    if kind == H264_SPS:
        sps = parse_avc_sps(unit)
        sps_by_id[sps.sps_id] = sps
    elif kind == H264_PPS:
        pps = parse_avc_pps(unit)
        pps_by_id[pps.pps_id] = pps
