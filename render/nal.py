"""H.264/HEVC NAL-unit helpers: pure functions on bytes.

Why the container's key frame flag is not enough
------------------------------------------------
cutfarm copies compressed samples from a key frame up to the next cut.  The
copy must decode on its own, without any picture from before it.  The
container's sync flag (``stss``) is what the muxer believed, and muxers
believe the encoder; PyAV's ``packet.is_keyframe`` is no better (for H.264 in
MP4, FFmpeg 8 sets it from its parser, which also counts recovery points):

* H.264: x264 with ``open-gop`` (and many cameras) flags *non-IDR I-frames*
  carrying a recovery point SEI as key frames.  The B-frames that follow such
  an I-frame in decode order reference the previous GOP; a copy starting there
  shows garbage (after a splice: pictures of the other source) in those
  frames.  Only an IDR (NAL type 5) resets the decoder.
* HEVC: an open GOP starts at a CRA picture.  Its RASL leading pictures
  reference the previous GOP; when decoding starts at the CRA (as after a
  splice) the decoder drops them, so those frames silently vanish from the
  output.  A CRA is still a random access point if the caller re-encodes,
  rather than copies, the CRA's leading pictures -- the contract of
  :attr:`SampleKind.is_random_access_point`.  BLA_W_LP behaves like a CRA in that
  respect; IDR_N_LP has no leading pictures and IDR_W_RADL/BLA_W_RADL only
  decodable (RADL) ones.

So the sync flag is only a hint for which samples to inspect; the NAL unit
types decide.  Reading them costs a few bytes per key frame sample.

Also here: the avcC/hvcC configuration records (NAL length size, parameter
sets, profile/level), and splitting length-prefixed samples and Annex-B
streams (encoder output) into NAL units.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "AvcConfig",
    "HevcConfig",
    "HevcNalArray",
    "NalError",
    "SampleKind",
    "classify_sample",
    "nal_spans",
    "nal_type_h264",
    "nal_type_hevc",
    "normalize_codec",
    "parse_avcc",
    "parse_hvcc",
    "split_annexb",
    "split_nals",
]

# H.264 nal_unit_type values (ITU-T H.264 table 7-1)
H264_SLICE = 1
H264_IDR = 5
H264_SEI = 6
H264_SPS = 7
H264_PPS = 8
H264_AUD = 9
H264_SPS_EXT = 13
H264_SUBSET_SPS = 15

# HEVC nal_unit_type values (ITU-T H.265 table 7-1)
HEVC_RADL_N = 6
HEVC_RADL_R = 7
HEVC_RASL_N = 8
HEVC_RASL_R = 9
HEVC_BLA_W_LP = 16
HEVC_BLA_W_RADL = 17
HEVC_BLA_N_LP = 18
HEVC_IDR_W_RADL = 19
HEVC_IDR_N_LP = 20
HEVC_CRA = 21
HEVC_VPS = 32
HEVC_SPS = 33
HEVC_PPS = 34
HEVC_AUD = 35
HEVC_PREFIX_SEI = 39

_HEVC_IRAP_NAMES = {
    HEVC_BLA_W_LP: "BLA_W_LP",
    HEVC_BLA_W_RADL: "BLA_W_RADL",
    HEVC_BLA_N_LP: "BLA_N_LP",
    HEVC_IDR_W_RADL: "IDR_W_RADL",
    HEVC_IDR_N_LP: "IDR_N_LP",
    HEVC_CRA: "CRA",
}
_SEI_RECOVERY_POINT = 6
# The record extension with chroma/bit depth exists only for these profiles.
_AVC_HIGH_PROFILES = frozenset({100, 110, 122, 144})


class NalError(ValueError):
    """Malformed NAL data or configuration record."""


def normalize_codec(codec: str) -> str:
    """'h264' or 'hevc' for FFmpeg codec names and MP4 sample entry 4CCs."""
    c = codec.strip().lower()
    if c in ("h264", "avc", "avc1", "avc3"):
        return "h264"
    if c in ("hevc", "h265", "hvc1", "hev1"):
        return "hevc"
    raise NalError(f"not an H.264/HEVC codec: {codec!r}")


# --------------------------------------------------------------------------
# configuration records


@dataclass(frozen=True)
class AvcConfig:
    """AVCDecoderConfigurationRecord (ISO/IEC 14496-15 5.3.3), i.e. avcC / MP4 extradata.

    ``chroma_format`` and the bit depths come from the optional record
    extension of High profiles and are None when the writer left it out.
    """

    length_size: int
    profile_idc: int
    profile_compatibility: int
    level_idc: int
    sps: tuple[bytes, ...]
    pps: tuple[bytes, ...]
    chroma_format: int | None = None
    bit_depth_luma: int | None = None
    bit_depth_chroma: int | None = None
    sps_ext: tuple[bytes, ...] = ()

    @property
    def parameter_sets(self) -> tuple[bytes, ...]:
        return self.sps + self.pps + self.sps_ext


@dataclass(frozen=True)
class HevcNalArray:
    nal_type: int
    complete: bool
    nals: tuple[bytes, ...]


@dataclass(frozen=True)
class HevcConfig:
    """HEVCDecoderConfigurationRecord (ISO/IEC 14496-15 8.3.3), i.e. hvcC / MP4 extradata."""

    length_size: int
    profile_space: int
    tier_flag: int
    profile_idc: int
    profile_compatibility_flags: int
    constraint_indicator_flags: int
    level_idc: int
    min_spatial_segmentation_idc: int
    parallelism_type: int
    chroma_format: int
    bit_depth_luma: int
    bit_depth_chroma: int
    avg_frame_rate: int
    constant_frame_rate: int
    num_temporal_layers: int
    temporal_id_nested: bool
    arrays: tuple[HevcNalArray, ...]

    def nals_of_type(self, nal_type: int) -> tuple[bytes, ...]:
        return tuple(n for a in self.arrays if a.nal_type == nal_type for n in a.nals)

    @property
    def vps(self) -> tuple[bytes, ...]:
        return self.nals_of_type(HEVC_VPS)

    @property
    def sps(self) -> tuple[bytes, ...]:
        return self.nals_of_type(HEVC_SPS)

    @property
    def pps(self) -> tuple[bytes, ...]:
        return self.nals_of_type(HEVC_PPS)

    @property
    def parameter_sets(self) -> tuple[bytes, ...]:
        return self.vps + self.sps + self.pps


class _Reader:
    """Bounds-checked big-endian reader; every overrun is a NalError."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise NalError(f"{self.what} is truncated at byte {self.pos} (need {n} more)")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def nal(self) -> bytes:
        size = self.uint(2)
        if size == 0:
            raise NalError(f"{self.what} contains an empty NAL unit")
        return self.take(size)

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


def parse_avcc(record: bytes) -> AvcConfig:
    """Parse an avcC payload (FFmpeg's H.264 extradata in MP4)."""
    r = _Reader(bytes(record), "avcC record")
    if r.uint(1) != 1:
        raise NalError("avcC record has configurationVersion != 1 (Annex-B extradata?)")
    profile, compat, level = r.uint(1), r.uint(1), r.uint(1)
    length_size = (r.uint(1) & 3) + 1
    if length_size == 3:
        raise NalError("avcC record has NAL length size 3, which is not allowed")
    sps = tuple(r.nal() for _ in range(r.uint(1) & 0x1F))
    pps = tuple(r.nal() for _ in range(r.uint(1)))
    for n in sps:
        if nal_type_h264(n) != H264_SPS:
            raise NalError(f"avcC SPS entry has NAL type {nal_type_h264(n)}")
    for n in pps:
        if nal_type_h264(n) != H264_PPS:
            raise NalError(f"avcC PPS entry has NAL type {nal_type_h264(n)}")
    config = AvcConfig(length_size, profile, compat, level, sps, pps)
    # The extension is optional even for High profiles (older writers omit it).
    if profile in _AVC_HIGH_PROFILES and r.left >= 4:
        chroma = r.uint(1) & 3
        depth_luma = (r.uint(1) & 7) + 8
        depth_chroma = (r.uint(1) & 7) + 8
        ext = tuple(r.nal() for _ in range(r.uint(1)))
        config = AvcConfig(
            length_size, profile, compat, level, sps, pps, chroma, depth_luma, depth_chroma, ext
        )
    return config


def parse_hvcc(record: bytes) -> HevcConfig:
    """Parse an hvcC payload (FFmpeg's HEVC extradata in MP4)."""
    r = _Reader(bytes(record), "hvcC record")
    if r.uint(1) != 1:
        raise NalError("hvcC record has configurationVersion != 1 (Annex-B extradata?)")
    b = r.uint(1)
    compat = r.uint(4)
    constraints = r.uint(6)
    level = r.uint(1)
    min_seg = r.uint(2) & 0x0FFF
    parallelism = r.uint(1) & 3
    chroma = r.uint(1) & 3
    depth_luma = (r.uint(1) & 7) + 8
    depth_chroma = (r.uint(1) & 7) + 8
    avg_rate = r.uint(2)
    flags = r.uint(1)
    arrays = []
    for _ in range(r.uint(1)):
        head = r.uint(1)
        nals = tuple(r.nal() for _ in range(r.uint(2)))
        nal_type = head & 0x3F
        for n in nals:
            if nal_type_hevc(n) != nal_type:
                raise NalError(
                    f"hvcC array of type {nal_type} holds a NAL of type {nal_type_hevc(n)}"
                )
        arrays.append(HevcNalArray(nal_type, bool(head & 0x80), nals))
    return HevcConfig(
        length_size=(flags & 3) + 1,
        profile_space=b >> 6,
        tier_flag=(b >> 5) & 1,
        profile_idc=b & 0x1F,
        profile_compatibility_flags=compat,
        constraint_indicator_flags=constraints,
        level_idc=level,
        min_spatial_segmentation_idc=min_seg,
        parallelism_type=parallelism,
        chroma_format=chroma,
        bit_depth_luma=depth_luma,
        bit_depth_chroma=depth_chroma,
        avg_frame_rate=avg_rate,
        constant_frame_rate=flags >> 6,
        num_temporal_layers=(flags >> 3) & 7,
        temporal_id_nested=bool(flags & 4),
        arrays=tuple(arrays),
    )


# --------------------------------------------------------------------------
# NAL units


def nal_type_h264(nal: bytes) -> int:
    """nal_unit_type from the first byte of an H.264 NAL unit (header only is enough)."""
    if not nal:
        raise NalError("empty H.264 NAL unit")
    return nal[0] & 0x1F


def nal_type_hevc(nal: bytes) -> int:
    """nal_unit_type from the first byte of an HEVC NAL unit (header only is enough)."""
    if not nal:
        raise NalError("empty HEVC NAL unit")
    return (nal[0] >> 1) & 0x3F


def split_nals(sample: bytes, length_size: int) -> list[bytes]:
    """NAL units of a length-prefixed (MP4) sample; a length overrunning the sample raises."""
    data = bytes(sample)
    return [data[pos : pos + size] for pos, size in nal_spans(data, length_size)]


def nal_spans(data: bytes, length_size: int) -> list[tuple[int, int]]:
    """(offset, size) of each NAL unit of a length-prefixed sample, validated as
    :func:`split_nals` does, without copying any unit out."""
    if length_size not in (1, 2, 4):
        raise NalError(f"NAL length size {length_size} is not 1, 2 or 4")
    spans: list[tuple[int, int]] = []
    pos = 0
    end = len(data)
    while pos < end:
        if pos + length_size > end:
            raise NalError(f"sample ends inside a NAL length field at byte {pos}")
        size = int.from_bytes(data[pos : pos + length_size], "big")
        pos += length_size
        if size == 0 or pos + size > end:
            raise NalError(
                f"NAL unit of {size} bytes at byte {pos} does not fit the {end}-byte "
                "sample (wrong length size, or not a length-prefixed sample?)"
            )
        spans.append((pos, size))
        pos += size
    return spans


def split_annexb(data: bytes) -> list[bytes]:
    """NAL units of an Annex-B byte stream (start-code separated), start codes removed."""
    data = bytes(data)
    starts: list[int] = []
    pos = data.find(b"\x00\x00\x01")
    while pos >= 0:
        starts.append(pos + 3)
        pos = data.find(b"\x00\x00\x01", pos + 3)
    nals = []
    for i, s in enumerate(starts):
        end = starts[i + 1] - 3 if i + 1 < len(starts) else len(data)
        # Zero bytes before a start code are trailing_zero_8bits (or the first
        # byte of a 4-byte start code); a NAL unit never ends in 0x00.
        nal = data[s:end].rstrip(b"\x00")
        if nal:
            nals.append(nal)
    return nals


def _unescape(payload: bytes) -> bytes:
    """RBSP from a NAL payload: drop the emulation prevention 0x03 of each 00 00 03."""
    if b"\x00\x00\x03" not in payload:
        return payload
    out = bytearray()
    zeros = 0
    for byte in payload:
        if zeros >= 2 and byte == 3:
            zeros = 0
            continue
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


class _Bits:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def bit(self) -> int:
        if self.pos >= 8 * len(self.data):
            raise NalError("slice header is truncated")
        b = (self.data[self.pos >> 3] >> (7 - (self.pos & 7))) & 1
        self.pos += 1
        return b

    def ue(self) -> int:
        zeros = 0
        while self.bit() == 0:
            zeros += 1
            if zeros > 31:
                raise NalError("invalid Exp-Golomb code")
        value = 1
        for _ in range(zeros):
            value = (value << 1) | self.bit()
        return value - 1


def _recovery_frame_cnt(rbsp: bytes) -> int | None:
    """recovery_frame_cnt of the recovery point SEI message in an SEI RBSP, if any."""
    pos = 0
    # The last byte is rbsp_trailing_bits, not a message.
    while pos < len(rbsp) - 1:
        ptype = 0
        while pos < len(rbsp) and rbsp[pos] == 0xFF:
            ptype += 255
            pos += 1
        if pos >= len(rbsp):
            break
        ptype += rbsp[pos]
        pos += 1
        psize = 0
        while pos < len(rbsp) and rbsp[pos] == 0xFF:
            psize += 255
            pos += 1
        if pos >= len(rbsp):
            break
        psize += rbsp[pos]
        pos += 1
        if ptype == _SEI_RECOVERY_POINT:
            try:
                return _Bits(rbsp[pos : pos + psize]).ue()
            except NalError:
                return None  # damaged message: no usable recovery point
        pos += psize
    return None


@dataclass(frozen=True)
class SampleKind:
    """What the NAL units of one sample (access unit) say about random access.

    ``irap_type`` is "IDR" for an H.264 IDR and the HEVC NAL type name
    (IDR_W_RADL, IDR_N_LP, CRA, BLA_W_LP, BLA_W_RADL, BLA_N_LP) for HEVC.
    ``intra`` is the H.264 primary slice type check (I/SI); for HEVC it is True
    for IRAP pictures and None (unknown without parsing the PPS) otherwise.
    ``leading`` is "RASL"/"RADL" for HEVC leading pictures.
    ``recovery_frame_cnt`` is set when a recovery point SEI is present.
    """

    codec: str
    nal_types: tuple[int, ...]
    vcl_type: int | None
    is_idr: bool
    is_irap: bool
    irap_type: str | None
    intra: bool | None
    has_inband_parameter_sets: bool
    recovery_frame_cnt: int | None
    leading: str | None = None

    @property
    def has_recovery_point(self) -> bool:
        return self.recovery_frame_cnt is not None

    @property
    def is_random_access_point(self) -> bool:
        return self.is_idr if self.codec == "h264" else self.is_irap


def _h264_intra(slice_nal: bytes) -> bool | None:
    """Whether the slice is I or SI; None if its header is cut short (damaged sample)."""
    bits = _Bits(_unescape(slice_nal[1:16]))
    try:
        bits.ue()  # first_mb_in_slice
        return bits.ue() % 5 in (2, 4)  # slice_type
    except NalError:
        return None


def _classify_h264(nals: list[bytes]) -> SampleKind:
    types = tuple(nal_type_h264(n) for n in nals)
    vcl = next((i for i, t in enumerate(types) if 1 <= t <= 5), None)
    vcl_type = types[vcl] if vcl is not None else None
    intra = _h264_intra(nals[vcl]) if vcl is not None else None
    recovery = None
    for n, t in zip(nals, types, strict=True):
        if t == H264_SEI and recovery is None:
            recovery = _recovery_frame_cnt(_unescape(n[1:]))
    is_idr = vcl_type == H264_IDR
    return SampleKind(
        codec="h264",
        nal_types=types,
        vcl_type=vcl_type,
        is_idr=is_idr,
        is_irap=is_idr,
        irap_type="IDR" if is_idr else None,
        intra=intra,
        has_inband_parameter_sets=any(t in (H264_SPS, H264_PPS, H264_SUBSET_SPS) for t in types),
        recovery_frame_cnt=recovery,
    )


def _classify_hevc(nals: list[bytes]) -> SampleKind:
    types = tuple(nal_type_hevc(n) for n in nals)
    vcl_type = next((t for t in types if t < 32), None)
    irap = _HEVC_IRAP_NAMES.get(vcl_type) if vcl_type is not None else None
    recovery = None
    for n, t in zip(nals, types, strict=True):
        if t == HEVC_PREFIX_SEI and recovery is None and len(n) > 2:
            recovery = _recovery_frame_cnt(_unescape(n[2:]))
    leading = None
    if vcl_type in (HEVC_RASL_N, HEVC_RASL_R):
        leading = "RASL"
    elif vcl_type in (HEVC_RADL_N, HEVC_RADL_R):
        leading = "RADL"
    return SampleKind(
        codec="hevc",
        nal_types=types,
        vcl_type=vcl_type,
        is_idr=vcl_type in (HEVC_IDR_W_RADL, HEVC_IDR_N_LP),
        is_irap=irap is not None,
        irap_type=irap,
        intra=True if irap is not None else None,
        has_inband_parameter_sets=any(t in (HEVC_VPS, HEVC_SPS, HEVC_PPS) for t in types),
        recovery_frame_cnt=recovery,
        leading=leading,
    )


def classify_sample(codec: str, sample: bytes, length_size: int) -> SampleKind:
    """Classify one length-prefixed sample by its NAL units (first VCL NAL decides)."""
    nals = split_nals(sample, length_size)
    if normalize_codec(codec) == "h264":
        return _classify_h264(nals)
    return _classify_hevc(nals)


#: H.264 NAL types a decoder keeps state from beyond the picture. A sample carrying one is
#: never dropped.
_H264_PARAMETER_SETS = frozenset({H264_SPS, H264_PPS, H264_SPS_EXT, H264_SUBSET_SPS})


def disposable(codec: str, sample: bytes, length_size: int) -> bool:
    """Whether a decoder may skip this sample and still decode every other one exactly.

    H.264 only: a picture whose slices all have ``nal_ref_idc`` 0 is a reference for no
    other picture (and advances no ``frame_num``), so leaving it out changes nothing else.
    A sample that also carries a parameter set is kept. HEVC's non-reference pictures may
    still be referenced from higher temporal layers: never skipped here.
    """
    if codec != "h264":
        return False
    try:
        spans = nal_spans(sample, length_size)
    except NalError:
        return False
    slices = 0
    for pos, _ in spans:
        header = sample[pos]
        kind = nal_type_h264(sample[pos:pos + 1])
        if kind in _H264_PARAMETER_SETS:
            return False
        if H264_SLICE <= kind <= H264_IDR:
            if header & 0x60:  # nal_ref_idc
                return False
            slices += 1
    return slices > 0
