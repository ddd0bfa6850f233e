"""Packet side data the engine attaches."""

from __future__ import annotations

from av.packet import PacketSideData, packet_sidedata_type_from_literal


def new_extradata(record: bytes) -> PacketSideData:
    """``new_extradata`` side data: tells a decoder or the mov muxer that parameter sets change.

    The muxer writes a new sample description for it (or reuses an identical one); a decoder
    switches to the new SPS/PPS before decoding the packet.
    """
    # PyAV's stub omits this constructor (type, size); it exists and allocates the buffer.
    sd = PacketSideData(packet_sidedata_type_from_literal("new_extradata"),  # type: ignore[call-arg]
                        len(record))
    memoryview(sd)[:] = record
    return sd
