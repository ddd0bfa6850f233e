"""render.nal on libx264/libx265 output: key frames the container flags vs real RAPs."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from av.video.stream import VideoStream

from render import nal
from render.mp4index import TrackTable, read_sample_tables

FPS = Fraction(30000, 1001)
W, H = 160, 90


def _length_prefixed(annexb: bytes) -> bytes:
    """Encoder output (Annex-B) in MP4 sample form, 4-byte lengths."""
    return b"".join(len(n).to_bytes(4, "big") + n for n in nal.split_annexb(annexb))


@dataclass
class Encoded:
    path: Path
    encoder_extradata: bytes  # Annex-B parameter sets, as the encoder handed them out
    packets: list[bytes]  # encoder output (Annex-B), decode order
    table: TrackTable

    def sample(self, i: int) -> bytes:
        with self.path.open("rb") as fh:
            fh.seek(int(self.table.offset[i]))
            return fh.read(int(self.table.size[i]))

    def kinds(self) -> list[nal.SampleKind]:
        entry = self.table.sample_entries[0]
        assert entry.config is not None
        parse = nal.parse_avcc if entry.config_type == "avcC" else nal.parse_hvcc
        length_size = parse(entry.config).length_size
        return [
            nal.classify_sample(entry.fourcc, self.sample(i), length_size)
            for i in range(self.table.sample_count)
        ]


def encode(path: Path, codec: str, options: dict[str, str], frames: int = 90) -> Encoded:
    rng = np.random.default_rng(7)
    out = av.open(str(path), "w")
    vs = out.add_stream(codec, rate=FPS, options=options)
    assert isinstance(vs, VideoStream)
    vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
    packets: list[bytes] = []
    for i in range(frames):
        img = rng.integers(0, 40, (H, W, 3), dtype=np.uint8)
        img[:, :, 1] += np.uint8((i * 5) % 200)
        img[(i * 2) % H :, : (i * 3) % W, 2] = 220
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts, frame.time_base = i, 1 / FPS
        for p in vs.encode(frame):
            packets.append(bytes(p))
            out.mux(p)
    for p in vs.encode(None):
        packets.append(bytes(p))
        out.mux(p)
    extradata = bytes(vs.codec_context.extradata or b"")
    out.close()
    return Encoded(path, extradata, packets, read_sample_tables(path)[0])


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Encoded]:
    d = tmp_path_factory.mktemp("nal")
    x264 = "b-pyramid=normal:b-adapt=0:scenecut=0"
    x265 = "keyint=30:min-keyint=30:no-scenecut=1:log-level=error"
    return {
        "h264_closed": encode(
            d / "closed.mp4", "libx264", {"bf": "2", "g": "30", "x264-params": x264}
        ),
        "h264_open": encode(
            d / "open.mp4",
            "libx264",
            {"bf": "2", "g": "30", "x264-params": x264 + ":open-gop=1"},
        ),
        "hevc_open": encode(
            d / "hevc_open.mp4",
            "libx265",
            {"preset": "ultrafast", "bf": "3", "x265-params": x265 + ":open-gop=1"},
        ),
        "hevc_closed": encode(
            d / "hevc_closed.mp4",
            "libx265",
            {"preset": "ultrafast", "bf": "3", "x265-params": x265 + ":open-gop=0"},
        ),
    }


def demuxed_extradata(path: Path) -> bytes:
    with av.open(str(path)) as c:
        return bytes(c.streams.video[0].codec_context.extradata or b"")


def packet_key_flags(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.array([p.is_keyframe for p in c.demux(c.streams.video[0]) if p.size])


# --------------------------------------------------------------------------
# configuration records


def test_avcc_parameter_sets_match_the_encoder(files: dict[str, Encoded]) -> None:
    enc = files["h264_closed"]
    entry = enc.table.sample_entries[0]
    assert entry.config_type == "avcC" and entry.config is not None
    # PyAV's decoder extradata for MP4 input is the avcC record itself
    assert demuxed_extradata(enc.path) == entry.config
    cfg = nal.parse_avcc(entry.config)
    annexb = nal.split_annexb(enc.encoder_extradata)
    assert cfg.sps == tuple(n for n in annexb if nal.nal_type_h264(n) == nal.H264_SPS)
    assert cfg.pps == tuple(n for n in annexb if nal.nal_type_h264(n) == nal.H264_PPS)
    assert len(cfg.sps) == len(cfg.pps) == 1
    assert cfg.length_size == 4
    sps = cfg.sps[0]
    assert (cfg.profile_idc, cfg.profile_compatibility, cfg.level_idc) == (sps[1], sps[2], sps[3])
    assert cfg.profile_idc == 100  # High
    assert (cfg.chroma_format, cfg.bit_depth_luma, cfg.bit_depth_chroma) == (1, 8, 8)


def test_hvcc_parameter_sets_match_the_encoder(files: dict[str, Encoded]) -> None:
    enc = files["hevc_open"]
    entry = enc.table.sample_entries[0]
    assert entry.config_type == "hvcC" and entry.config is not None
    assert demuxed_extradata(enc.path) == entry.config
    cfg = nal.parse_hvcc(entry.config)
    annexb = nal.split_annexb(enc.encoder_extradata)
    for typ, got in ((nal.HEVC_VPS, cfg.vps), (nal.HEVC_SPS, cfg.sps), (nal.HEVC_PPS, cfg.pps)):
        assert got == tuple(n for n in annexb if nal.nal_type_hevc(n) == typ)
        assert len(got) == 1
    assert cfg.length_size == 4
    assert (cfg.profile_space, cfg.tier_flag, cfg.profile_idc) == (0, 0, 1)  # Main
    assert (cfg.chroma_format, cfg.bit_depth_luma, cfg.bit_depth_chroma) == (1, 8, 8)
    # general_level_idc is also in the SPS, after the 2-byte NAL header, 1 byte
    # of layer info and 11 bytes of profile_tier_level (in the RBSP: the
    # all-zero constraint flags carry an emulation prevention byte)
    sps_rbsp = cfg.sps[0].replace(b"\x00\x00\x03", b"\x00\x00")
    assert cfg.level_idc == sps_rbsp[2 + 1 + 11]


def test_malformed_records(files: dict[str, Encoded]) -> None:
    with pytest.raises(nal.NalError, match="truncated"):
        nal.parse_avcc(b"")
    with pytest.raises(ValueError, match="configurationVersion"):
        nal.parse_avcc(files["h264_closed"].encoder_extradata)  # Annex-B, not avcC
    config = files["hevc_open"].table.sample_entries[0].config
    assert config is not None
    with pytest.raises(nal.NalError, match="truncated"):
        nal.parse_hvcc(config[:-10])


# --------------------------------------------------------------------------
# samples


def test_samples_are_the_encoder_packets_length_prefixed(files: dict[str, Encoded]) -> None:
    for enc in files.values():
        assert len(enc.packets) == enc.table.sample_count
        for i in (0, 1, 2, 30, len(enc.packets) - 1):
            assert _length_prefixed(enc.packets[i]) == enc.sample(i)
            assert nal.split_nals(enc.sample(i), 4) == nal.split_annexb(enc.packets[i])


def test_h264_closed_gop_key_frames_are_idr(files: dict[str, Encoded]) -> None:
    enc = files["h264_closed"]
    kinds = enc.kinds()
    sync = enc.table.sync
    assert sync.sum() == 3
    for k, s in zip(kinds, sync, strict=True):
        assert k.codec == "h264"
        assert k.is_random_access_point == bool(s)
        assert k.is_idr == k.is_irap == bool(s)
        assert k.irap_type == ("IDR" if s else None)
        if s:
            assert k.intra
    assert any(k.intra is False for k in kinds)  # P/B slices are recognised too


def test_h264_open_gop_key_frames_are_not_random_access_points(
    files: dict[str, Encoded],
) -> None:
    """x264 open-gop: the container and PyAV call non-IDR I-frames key frames."""
    enc = files["h264_open"]
    kinds = enc.kinds()
    sync = np.flatnonzero(enc.table.sync)
    assert np.array_equal(np.flatnonzero(packet_key_flags(enc.path)), sync)
    assert kinds[0].is_idr and kinds[0].is_random_access_point
    fake = [kinds[i] for i in sync[1:]]
    assert fake
    for k in fake:
        assert not k.is_idr and not k.is_random_access_point
        assert k.intra is True and k.vcl_type == nal.H264_SLICE
        assert k.has_recovery_point and k.recovery_frame_cnt == 0
    assert not any(k.is_random_access_point for k in kinds[1:])


def test_hevc_open_gop_cra(files: dict[str, Encoded]) -> None:
    enc = files["hevc_open"]
    kinds = enc.kinds()
    sync = np.flatnonzero(enc.table.sync)
    assert kinds[0].irap_type in ("IDR_N_LP", "IDR_W_RADL") and kinds[0].is_idr
    later = [kinds[i] for i in sync[1:]]
    assert later and all(k.irap_type == "CRA" for k in later)
    for i in sync[1:]:
        k = kinds[i]
        assert k.is_irap and k.is_random_access_point and not k.is_idr and k.intra
        # the CRA's leading pictures follow it in decode order, and are RASL
        assert kinds[i + 1].leading == "RASL"
        assert enc.table.pts[i + 1] < enc.table.pts[i]
    for i in np.flatnonzero(~enc.table.sync):
        assert not kinds[i].is_random_access_point


def test_hevc_closed_gop_is_all_idr(files: dict[str, Encoded]) -> None:
    enc = files["hevc_closed"]
    kinds = enc.kinds()
    for i in np.flatnonzero(enc.table.sync):
        assert kinds[i].is_idr and kinds[i].irap_type in ("IDR_N_LP", "IDR_W_RADL")
    assert not any(k.leading == "RASL" for k in kinds)


def test_inband_parameter_sets(files: dict[str, Encoded]) -> None:
    for name in ("h264_closed", "hevc_open"):
        enc = files[name]
        codec = enc.table.sample_entries[0].fourcc
        plain = nal.classify_sample(codec, enc.sample(0), 4)
        assert not plain.has_inband_parameter_sets
        # as an avc3/hev1 stream or a camera repeating headers carries them
        inband = _length_prefixed(enc.encoder_extradata) + enc.sample(0)
        kind = nal.classify_sample(codec, inband, 4)
        assert kind.has_inband_parameter_sets and kind.is_idr
        assert kind.vcl_type == plain.vcl_type


# --------------------------------------------------------------------------
# small pure functions


def test_nal_types() -> None:
    assert nal.nal_type_h264(b"\x65") == nal.H264_IDR
    assert nal.nal_type_h264(b"\x06\x05") == nal.H264_SEI
    assert nal.nal_type_hevc(b"\x2a\x01") == nal.HEVC_CRA
    assert nal.nal_type_hevc(b"\x40\x01") == nal.HEVC_VPS
    with pytest.raises(nal.NalError):
        nal.nal_type_hevc(b"")


def test_split_nals_is_strict() -> None:
    two = struct.pack(">I", 2) + b"\x65\x88" + struct.pack(">I", 3) + b"\x41\x9a\x00"
    assert nal.split_nals(two, 4) == [b"\x65\x88", b"\x41\x9a\x00"]
    assert nal.split_nals(b"\x00\x02\x65\x88", 2) == [b"\x65\x88"]
    with pytest.raises(nal.NalError, match="does not fit"):
        nal.split_nals(two[:-1], 4)
    with pytest.raises(nal.NalError, match="length size"):
        nal.split_nals(two, 3)


def test_annexb_split() -> None:
    stream = b"\x00\x00\x00\x01\x67\x64\x00" + b"\x00\x00\x01\x68\xee\x00\x00" + b"\x00\x00\x01\x65"
    assert nal.split_annexb(stream) == [b"\x67\x64", b"\x68\xee", b"\x65"]


def test_recovery_point_sei_with_emulation_prevention() -> None:
    # user-data-unregistered SEI (type 5) whose payload needs emulation
    # prevention, then a recovery point SEI (type 6) with recovery_frame_cnt 3
    user = bytes(16) + b"\x00\x00\x01"
    escaped = bytearray()
    zeros = 0
    for byte in user:
        if zeros >= 2 and byte <= 3:
            escaped.append(3)
            zeros = 0
        escaped.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    assert len(escaped) > len(user)
    recovery = b"\x06\x01\x24"  # type 6, size 1: ue(3) = 00100, exact_match 1, 00
    sei = b"\x06" + b"\x05" + bytes([len(user)]) + bytes(escaped) + recovery + b"\x80"
    idr_less = b"\x41\x9a"  # non-IDR slice: first_mb_in_slice 0, slice_type 5 (P)
    sample = b"".join(struct.pack(">I", len(n)) + n for n in (sei, idr_less))
    kind = nal.classify_sample("avc1", sample, 4)
    assert kind.nal_types == (nal.H264_SEI, nal.H264_SLICE)
    assert kind.recovery_frame_cnt == 3 and kind.has_recovery_point
    assert not kind.is_random_access_point


def test_normalize_codec() -> None:
    assert {nal.normalize_codec(c) for c in ("h264", "avc1", "AVC3")} == {"h264"}
    assert {nal.normalize_codec(c) for c in ("hevc", "hvc1", "hev1", "h265")} == {"hevc"}
    with pytest.raises(nal.NalError):
        nal.normalize_codec("prores")



def _encoded(codec: str, params: str) -> list[tuple[str, bytes]]:
    """(picture type, length-prefixed sample) of 12 small frames, in decode order."""
    ctx = av.CodecContext.create(codec, "w")
    assert isinstance(ctx, av.VideoCodecContext)
    ctx.width, ctx.height, ctx.pix_fmt = 64, 64, "yuv420p"
    ctx.time_base = Fraction(1, 30)
    ctx.options = {"x264-params" if codec == "libx264" else "x265-params": params,
                   "preset": "ultrafast"}
    rng = np.random.default_rng(1)
    packets: list[av.Packet] = []
    for i in range(12):
        frame = av.VideoFrame.from_ndarray(
            rng.integers(0, 255, (96, 64), dtype=np.uint8), format="yuv420p")
        frame.pts = i
        packets += ctx.encode(frame)
    packets += ctx.encode(None)
    out = []
    latest = -1  # a picture shown before one already decoded is a B-frame
    for p in packets:
        assert p.pts is not None
        data = _length_prefixed(bytes(p))
        idr = 5 in [n[0] & 0x1F for n in nal.split_nals(data, 4)]
        out.append(("IDR" if idr else "B" if p.pts < latest else "P", data))
        latest = max(latest, p.pts)
    return out


def test_only_h264_pictures_nothing_refers_to_are_disposable() -> None:
    samples = _encoded("libx264", "keyint=12:bframes=2:b-pyramid=none:b-adapt=0:scenecut=0")
    verdicts = [(kind, nal.disposable("h264", data, 4)) for kind, data in samples]
    # P pictures are references, and the IDR also carries SPS and PPS in-band.
    assert all(not d for kind, d in verdicts if kind in ("IDR", "P")), verdicts
    # Without a B-pyramid every B-frame is disposable: here, all 7 of them.
    assert [d for kind, d in verdicts if kind == "B"] == [True] * 7, verdicts
    # With a pyramid the middle B is a reference.
    pyramid = _encoded("libx264", "keyint=12:bframes=3:b-pyramid=normal:b-adapt=0:scenecut=0")
    assert 0 < sum(nal.disposable("h264", d, 4) for _, d in pyramid) < sum(
        kind == "B" for kind, _ in pyramid)
    # Never HEVC, never what cannot be parsed.
    assert not nal.disposable("hevc", samples[2][1], 4)
    assert not nal.disposable("h264", b"\x00\x00\x00\x09\x01", 4)
