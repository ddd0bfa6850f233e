"""Sample formats and in-band parameter sets for the one output video track.

Why in-band: the output joins GOPs from cameras whose SPS/PPS differ and frames from our own
encoders. A track with one sample description per parameter-set record (FFmpeg's
``new_extradata``) decodes perfectly in FFmpeg, but Chrome refuses it: its demuxer keeps the
first record and fails on the first copied packet that needs another ("PIPELINE_ERROR_DECODE:
Failed to send video packet", seen with Debian's Chromium 156). So the track has a single
``avc1``/``hvc1`` description, and every random-access sample carries its own parameter sets
in-band, ahead of its slices. Decoders switch at each keyframe, and any keyframe of an output
is a clean start for a later re-cut. (ISO 14496-15 prefers ``avc3``/``hev1`` for in-band
parameter sets, but Apple players reject ``hev1``; in-band sets in ``avc1``/``hvc1`` are what
real encoders with repeat-headers produce and players accept.)

All packets of the track are written in one format: length-prefixed NAL units with the
track record's length size, or Annex-B when the track's record is Annex-B (our encoders').
"""

from __future__ import annotations

from dataclasses import dataclass

from . import nal

_PARAM_TYPES = {"h264": frozenset({7, 8}), "hevc": frozenset({32, 33, 34})}
_AUD = {"h264": 9, "hevc": 35}
_START = b"\x00\x00\x00\x01"


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
    return [u for u in nal.split_annexb(record) if _type(codec, u) in _PARAM_TYPES[codec]]


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
