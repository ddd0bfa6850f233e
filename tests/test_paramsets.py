"""Parameter-set renumbering (render/paramsets.py) on real x264/x265 streams made here.

Every rewritten stream is decoded by FFmpeg and must give the same pictures, bit for bit,
as the original; FFmpeg's own header parser (trace_headers) must read every field of every
renumbered set and slice as the original's but for the ids, and the slice data after each
header must be the original's bits.
"""

from __future__ import annotations

import shutil
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from render import bitstream, nal
from render import paramsets as ps
from render.bitstream import Conformer, SampleFormat, plan_sets, record_key, split
from render.config import parse_config
from render.engine import execute, prepare
from render.mp4index import read_sample_tables
from tests import mediagen as mg
from tests.conftest import MediaRoot
from tests.test_engine import MULTICAM, cams, gens, make_config, run
from tests.verify import (
    TracedUnit,
    _tail,
    check_audio_sync,
    check_copied_bytes,
    check_frames,
    check_parameter_sets,
    expected_stamps,
    ffmpeg_trace,
    traced_sets,
)

W, H, N = 256, 144, 24

#: name -> (encoder, options, pixel format): the header features the rewriter must parse.
CASES: dict[str, tuple[str, dict[str, str], str]] = {
    # CABAC, B-pyramid (reference marking), weighted P, several refs, 3 slices a picture.
    "x264-cabac": ("libx264", {"x264-params": "bframes=3:b-pyramid=normal:weightp=2:ref=3:"
                                              "slices=3"}, "yuv420p"),
    # CAVLC: the whole slice moves when the PPS id's code length changes.
    "x264-cavlc": ("libx264", {"x264-params": "cabac=0:bframes=2:weightp=1:slices=2"},
                   "yuv420p"),
    # MBAFF: frame_mbs_only_flag 0, field fields in every slice header.
    "x264-mbaff": ("libx264", {"x264-params": "interlaced=1:bframes=2:slices=2"}, "yuv420p"),
    # No B-frames: pic_order_cnt_type 2.
    "x264-no-b": ("libx264", {"x264-params": "bframes=0:weightp=2"}, "yuv420p"),
    # 4:4:4 and 4:2:2 10-bit: High 4:4:4 / High 4:2:2 SPS syntax, chroma weights.
    "x264-444": ("libx264", {"x264-params": "bframes=2:weightp=2"}, "yuv444p"),
    "x264-422-10": ("libx264", {"x264-params": "bframes=2:weightp=2"}, "yuv422p10le"),
    # WPP entry points, two slices, weighted P and B.
    "x265-wpp": ("libx265", {"x265-params": "bframes=3:weightp=1:weightb=1:slices=2"},
                 "yuv420p"),
    # No WPP, temporal sub-layers (sub-layer profile/level syntax; with 2 layers the SPS
    # predicts reference picture sets from each other), B-pyramid, AMP.
    "x265-layers": ("libx265", {"x265-params": "no-wpp=1:temporal-layers=2:b-pyramid=1:"
                                               "amp=1:bframes=3"}, "yuv420p"),
    "x265-layers-3": ("libx265", {"x265-params": "temporal-layers=3:b-pyramid=1:bframes=3"},
                      "yuv420p"),
    # Main 10, open GOP (CRA, RASL), no SAO.
    "x265-10-open": ("libx265", {"x265-params": "open-gop=1:no-sao=1:bframes=2:weightp=1"},
                     "yuv420p10le"),
    # Range extensions profile (4:4:4).
    "x265-444": ("libx265", {"x265-params": "bframes=2:weightp=1:weightb=1"}, "yuv444p"),
}
#: New ids: a longer code (7 bits for 0 -> 7), a 3-bit one, and only the SPS moving.
ID_MAPS = [{"vps": 3, "sps": 5, "pps": 7}, {"vps": 15, "sps": 1, "pps": 1},
           {"sps": 2, "pps": 0}]


def _frames(fmt: str) -> list[av.VideoFrame]:
    rng = np.random.default_rng(7)
    base = rng.integers(0, 255, (H + 64, W + 64, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:H, 0:W]
    out = []
    for i in range(N):
        img = base[i % 7:i % 7 + H, (3 * i) % 13:(3 * i) % 13 + W].copy()
        img[..., 0] = (xx + 5 * i) % 256
        img[(yy // 16 + i) % 5 == 0] //= 2
        frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format=fmt)
        frame.pts = i
        out.append(frame)
    return out


def encode(encoder: str, options: dict[str, str], fmt: str) -> list[bytes]:
    """Annex-B access units, parameter sets in-band in the first."""
    ctx = av.CodecContext.create(encoder, "w")
    assert isinstance(ctx, av.VideoCodecContext)
    ctx.width, ctx.height, ctx.pix_fmt = W, H, fmt
    ctx.time_base = Fraction(1, 25)
    key = "x264-params" if encoder == "libx264" else "x265-params"
    quiet = ":log-level=error" if encoder == "libx265" else ""
    ctx.options = {"preset": "veryfast", **options,
                   key: f"keyint=12:min-keyint=12:scenecut=0{quiet}:{options[key]}"}
    ctx.open()
    packets: list[bytes] = []
    for frame in _frames(fmt):
        packets += [bytes(p) for p in ctx.encode(frame)]
    packets += [bytes(p) for p in ctx.encode(None)]
    return packets


def decode(codec: str, packets: list[bytes], extradata: bytes = b"") -> list[list[bytes]]:
    ctx = av.CodecContext.create(codec, "r")
    if extradata:
        ctx.extradata = extradata
    pictures = []
    for data in [*packets, None]:
        for frame in ctx.decode(av.Packet(data) if data is not None else None):
            pictures.append([bytes(p) for p in frame.planes])
    return pictures


@pytest.fixture(scope="module")
def streams() -> dict[str, tuple[str, list[bytes], list[list[bytes]]]]:
    """name -> (codec, access units, decoded pictures); encoded once per module."""
    out = {}
    for name, (encoder, options, fmt) in CASES.items():
        codec = "h264" if encoder == "libx264" else "hevc"
        packets = encode(encoder, options, fmt)
        out[name] = (codec, packets, decode(codec, packets))
        assert len(out[name][2]) == N
    return out


def renumber_stream(codec: str, packets: list[bytes], ids: dict[str, int]) -> list[bytes]:
    """Every set and slice of a single-set stream renumbered with ``ids`` (kind -> new)."""
    sps: dict[int, Any] = {}
    pps: dict[int, Any] = {}
    out = []
    for data in packets:
        units = []
        for unit in nal.split_annexb(data):
            found = ps.parse_set(codec, unit)
            if found is not None:
                if found.kind == "sps":
                    sps[found.id] = (ps.parse_avc_sps(unit) if codec == "h264"
                                     else ps.parse_hevc_sps(unit))
                elif found.kind == "pps":
                    pps[found.id] = (ps.parse_avc_pps(unit) if codec == "h264"
                                     else ps.parse_hevc_pps(unit))
                ref = {"pps": "sps", "sps": "vps" if codec == "hevc" else ""}.get(found.kind, "")
                units.append(ps.renumber(codec, found, ids.get(found.kind, found.id),
                                         ids.get(ref, found.ref) if ref else None))
            elif _is_slice(codec, unit):
                old = ps.slice_pps_id(codec, unit)
                units.append(ps.rewrite_slice(codec, unit, ids.get("pps", old),
                                              sps[pps[old].sps_id], pps[old]))
            else:
                units.append(unit)
        out.append(b"".join(b"\x00\x00\x00\x01" + u for u in units))
    return out


def _is_slice(codec: str, unit: bytes) -> bool:
    kind = ps.nal_type(codec, unit)
    return 1 <= kind <= 5 if codec == "h264" else kind < 32


def _write(path: Path, packets: list[bytes]) -> Path:
    path.write_bytes(b"".join(packets))
    return path


_ID_NAMES = {"seq_parameter_set_id", "pic_parameter_set_id", "vps_video_parameter_set_id",
             "sps_video_parameter_set_id", "sps_seq_parameter_set_id",
             "pps_pic_parameter_set_id", "pps_seq_parameter_set_id",
             "slice_pic_parameter_set_id", "cabac_alignment_one_bit",
             "alignment_bit_equal_to_one", "alignment_bit_equal_to_zero",
             "rbsp_alignment_zero_bit"}


def _units(trace_packets: list[list[TracedUnit]]) -> list[TracedUnit]:
    return [u for units in trace_packets for u in units]


@pytest.mark.parametrize("ids", ID_MAPS, ids=lambda m: "-".join(f"{k}{v}" for k, v in m.items()))
@pytest.mark.parametrize("name", list(CASES))
def test_renumbered_stream_decodes_to_the_same_pictures(
        streams: dict[str, tuple[str, list[bytes], list[list[bytes]]]], name: str,
        ids: dict[str, int], tmp_path: Path) -> None:
    codec, packets, pictures = streams[name]
    moved = renumber_stream(codec, packets, ids)
    assert moved != packets
    assert decode(codec, moved) == pictures
    # FFmpeg's parser reads the same headers but for the ids ...
    ext = "h264" if codec == "h264" else "hevc"
    before = _units(ffmpeg_trace(_write(tmp_path / f"a.{ext}", packets)).packets)
    after = _units(ffmpeg_trace(_write(tmp_path / f"b.{ext}", moved)).packets)
    assert [u.title for u in after] == [u.title for u in before]
    for a, b in zip(after, before, strict=True):
        assert a.values(_ID_NAMES) == b.values(_ID_NAMES), a.title
    sets = traced_sets(codec, after)
    for kind, new in ids.items():
        if sets.get(kind):
            assert set(sets[kind]) == {new}
    # ... and each slice's data after the header is the original's, bit for bit.
    old_slices = [u for p in packets for u in nal.split_annexb(p) if _is_slice(codec, u)]
    new_slices = [u for p in moved for u in nal.split_annexb(p) if _is_slice(codec, u)]
    traced_old = [u for u in before if u.is_slice]
    traced_new = [u for u in after if u.is_slice]
    assert len(old_slices) == len(new_slices) == len(traced_old) >= N
    for old, new, t_old, t_new in zip(old_slices, new_slices, traced_old, traced_new,
                                      strict=True):
        assert t_new.value("pic_parameter_set_id" if codec == "h264"
                           else "slice_pic_parameter_set_id") == ids["pps"]
        assert _tail(codec, new, t_new.end) == _tail(codec, old, t_old.end)


def test_the_streams_use_the_features_they_are_meant_to(
        streams: dict[str, tuple[str, list[bytes], list[list[bytes]]]]) -> None:
    """Guards the cases above against encoder defaults changing under them."""
    def first(name: str, kind: str) -> bytes:
        codec, packets, _ = streams[name]
        return next(u for u in nal.split_annexb(packets[0])
                    if (p := ps.parse_set(codec, u)) is not None and p.kind == kind)

    assert ps.parse_avc_pps(first("x264-cabac", "pps")).entropy_coding_mode
    assert ps.parse_avc_pps(first("x264-cabac", "pps")).weighted_pred
    assert not ps.parse_avc_pps(first("x264-cavlc", "pps")).entropy_coding_mode
    assert not ps.parse_avc_sps(first("x264-mbaff", "sps")).frame_mbs_only
    assert ps.parse_avc_sps(first("x264-no-b", "sps")).poc_type == 2
    assert ps.parse_avc_sps(first("x264-444", "sps")).chroma_format_idc == 3
    assert ps.parse_avc_sps(first("x264-422-10", "sps")).bit_depth_luma == 10
    wpp = ps.parse_hevc_pps(first("x265-wpp", "pps"))
    assert wpp.entry_points and wpp.weighted_pred and wpp.weighted_bipred
    assert not ps.parse_hevc_pps(first("x265-layers", "pps")).entry_points
    layered = ps.parse_hevc_sps(first("x265-layers", "sps"))
    assert layered.max_sub_layers > 1
    assert ps.parse_hevc_sps(first("x265-layers-3", "sps")).max_sub_layers == 3
    assert not ps.parse_hevc_sps(first("x265-10-open", "sps")).sao
    assert ps.parse_hevc_sps(first("x265-444", "sps")).profile_idc == 4
    _, packets, _ = streams["x264-cabac"]
    assert sum(_is_slice("h264", u) for u in nal.split_annexb(packets[0])) > 1


@pytest.mark.parametrize("name", ["x264-cabac", "x264-cavlc", "x265-wpp", "x265-10-open"])
def test_conformer_puts_a_second_stream_beside_a_first(
        streams: dict[str, tuple[str, list[bytes], list[list[bytes]]]], name: str) -> None:
    """Two streams whose sets clash in id: the first keeps its ids, the second is
    renumbered, and both decode with the one record and no in-band set."""
    codec, packets, pictures = streams[name]
    other = "x264-no-b" if codec == "h264" else "x265-layers"
    _, first_packets, first_pictures = streams[other]
    first_key = record_key(codec, first_packets[0])
    second_key = record_key(codec, packets[0])
    params = plan_sets(codec, [("first", first_key), ("second", second_key)])
    assert params.conformant
    assert params.maps[first_key].identity and params.maps[second_key].moves("pps")
    conformer = Conformer(params)
    annexb = SampleFormat(codec, None)
    for stream, (pkts, want) in enumerate([(first_packets, first_pictures),
                                           (packets, pictures)]):
        out = [conformer.packet(p, annexb, p if i == 0 else pkts[0], stream)
               for i, p in enumerate(pkts)]
        for p in out:
            assert not any(ps.is_parameter_set(codec, u) for u in split(p, conformer.fmt))
        assert decode(codec, out, params.record) == want


# --------------------------------------------------------------------------- pure parts


@given(st.binary(max_size=64))
def test_escape_round_trips_and_leaves_no_start_code(rbsp: bytes) -> None:
    escaped = ps.escape(rbsp)
    assert ps.unescape(escaped) == rbsp
    for bad in (b"\x00\x00\x00", b"\x00\x00\x01", b"\x00\x00\x02"):
        assert bad not in escaped


def _sps(codec: str, streams: dict[str, Any], name: str) -> list[bytes]:
    return [u for u in nal.split_annexb(streams[name][1][0]) if ps.is_parameter_set(codec, u)]


def test_allocator_shares_identical_sets_and_separates_different_ones(
        streams: dict[str, tuple[str, list[bytes], list[list[bytes]]]]) -> None:
    alloc = ps.Allocator("h264")
    a = [ps.parse_set("h264", u) for u in _sps("h264", streams, "x264-cabac")]
    b = [ps.parse_set("h264", u) for u in _sps("h264", streams, "x264-cavlc")]
    assert all(a) and all(b)
    first = alloc.add(x for x in a if x is not None)
    again = alloc.add(x for x in a if x is not None)
    second = alloc.add(x for x in b if x is not None)
    assert first.identity and again.identity
    # CABAC lives in the PPS: the SPS is the same and shared; PPS id 0 is taken by a
    # different set, and the nearest code length is 3 bits (id 1 or 2).
    assert second.get("sps", 0) == 0 and second.get("pps", 0) == 1
    assert sorted(alloc.sets["sps"]) == [0] and sorted(alloc.sets["pps"]) == [0, 1]
    assert alloc.free_id(("sps", "pps"), 32) == 2
    with pytest.raises(ps.TooManySets):
        tight = ps.Allocator("h264", {"sps": 32, "pps": 1})
        tight.add(x for x in a if x is not None)
        tight.add(x for x in b if x is not None)


def test_allocator_prefers_ids_of_the_same_code_length() -> None:
    alloc = ps.Allocator("h264")
    alloc.sets["pps"] = {i: b"taken" for i in (0, 3, 4)}
    assert alloc._free("pps", 3) == 5  # 3..6 are 5 bits long
    assert alloc._free("pps", 0) == 1  # no other 1-bit id: the next length up


def test_sei_messages_naming_set_ids_are_dropped() -> None:
    user_data = bytes([5, 17]) + bytes(range(16)) + b"x"
    buffering = bytes([0, 2, 0x88, 0x80])
    sei = b"\x06" + ps.escape(buffering + user_data + b"\x80")
    kept = ps.drop_sei_messages("h264", sei)
    assert kept == b"\x06" + ps.escape(user_data + b"\x80")
    assert ps.drop_sei_messages("h264", b"\x06" + buffering + b"\x80") is None
    assert ps.drop_sei_messages("h264", kept) is kept


def test_records_hold_every_set_with_fields_valid_for_all(
        streams: dict[str, tuple[str, list[bytes], list[list[bytes]]]]) -> None:
    h264 = [u for n in ("x264-cabac", "x264-no-b") for u in _sps("h264", streams, n)]
    alloc = ps.Allocator("h264")
    for i in range(2):
        alloc.add(p for u in h264[2 * i:2 * i + 2] if (p := ps.parse_set("h264", u)))
    sets = alloc.record_sets()
    cfg = nal.parse_avcc(ps.avcc(sets["sps"], sets["pps"]))
    assert (len(cfg.sps), len(cfg.pps), cfg.length_size) == (2, 2, 4)
    levels = [ps.parse_avc_sps(u).level_idc for u in cfg.sps]
    assert cfg.level_idc == max(levels)
    hevc = _sps("hevc", streams, "x265-wpp")
    units = {ps.parse_set("hevc", u).kind: u for u in hevc}  # type: ignore[union-attr]
    record = ps.hvcc([units["vps"]], [units["sps"]], [units["pps"]])
    parsed = nal.parse_hvcc(record)
    assert [a.complete for a in parsed.arrays] == [True, True, True]
    assert parsed.level_idc == ps.parse_hevc_sps(units["sps"]).level_idc


# --------------------------------------------------------------------------- exports


def _inband_sets(path: Path) -> int:
    """How many parameter sets FFmpeg finds inside the samples of ``path``."""
    return sum(u.set_kind is not None for units in ffmpeg_trace(path).packets for u in units)


def test_h264_cameras_keep_their_slices_where_they_can(media_root: MediaRoot,
                                                       tmp_path: Path) -> None:
    files = ["h264_a.mp4", "h264_b.mp4"]
    prep, out = run(media_root, make_config(files, MULTICAM), tmp_path)
    params = prep.params
    assert params is not None and params.conformant and not prep.warnings
    # Only the second camera is renumbered; x264 was told free ids for our pieces.
    moved = [m for m in params.maps.values() if not m.identity]
    assert len(moved) == 1 and moved[0].get("pps", 0) == 1
    ours = {s.sps_id for s in prep.settings.values()}
    assert None not in ours and not ours & {0, 1}
    record = check_parameter_sets(out, "h264")
    assert set(record["sps"]) == {0, 1} | ours
    assert _inband_sets(out) == 0
    check_frames(out, expected_stamps(prep, cams(media_root, files)))
    assert check_copied_bytes(out, prep) > 0


def _retag(src: Path, dst: Path, tag: str) -> None:
    """Remux ``src`` with its video sample entry named ``tag`` (e.g. hev1)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4") as out:
        v_in, a_in = inp.streams.video[0], inp.streams.audio[0]
        v_out = out.add_stream_from_template(v_in)
        v_out.codec_tag = tag
        a_out = out.add_stream_from_template(a_in)
        for packet in inp.demux(v_in, a_in):
            if packet.dts is None:
                continue
            packet.stream = v_out if packet.stream is v_in else a_out
            out.mux(packet)


def test_hev1_source_comes_out_as_hvc1_with_every_set_in_the_record(
        media_root: MediaRoot, tmp_path: Path) -> None:
    root = tmp_path / "media"
    (root / "sources").mkdir(parents=True)
    shutil.copy(media_root.sources / "hevc_open.mp4", root / "sources" / "open.mp4")
    _retag(media_root.sources / "hevc_b.mp4", root / "sources" / "b_hev1.mp4", "hev1")
    assert mg.stream_info(root / "sources" / "b_hev1.mp4").codec_tag == "hev1"
    files = ["open.mp4", "b_hev1.mp4"]
    prep = prepare(parse_config(make_config(files, MULTICAM)), [root])
    out = tmp_path / "out.mp4"
    execute(prep, out)
    assert mg.stream_info(out).codec_tag == "hvc1"
    record = check_parameter_sets(out, "hevc")
    assert len(record["sps"]) >= 3  # two cameras and our encoder, each its own id
    assert _inband_sets(out) == 0
    stamps = {0: media_root.camera("hevc_open.mp4"), 1: media_root.camera("hevc_b.mp4")}
    check_frames(out, expected_stamps(prep, stamps))
    assert check_copied_bytes(out, prep) > 0


def test_too_many_sets_fall_back_to_inband_and_say_so(
        media_root: MediaRoot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(ps.LIMITS["h264"], "sps", 1)
    files = ["h264_a.mp4", "h264_b.mp4"]
    prep, out = run(media_root, make_config(files, MULTICAM), tmp_path)
    assert prep.params is not None and not prep.params.conformant
    [warning] = prep.warnings
    assert "in-band" in warning and "more than 1 different SPSs" in warning
    assert "Apple" in warning
    video = next(t for t in read_sample_tables(out) if t.handler == "vide")
    assert len(video.sample_entries) == 1
    assert _inband_sets(out) > 0
    check_frames(out, expected_stamps(prep, cams(media_root, files)))
    assert check_copied_bytes(out, prep) > 0


def test_recutting_an_export_whose_sets_change_inband(
        media_root: MediaRoot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An export of the in-band design as a source: its keyframes redefine SPS/PPS 0 from
    piece to piece. Each definition becomes its own id in the new export's record."""
    files = ["h264_a.mp4", "h264_b.mp4"]
    with monkeypatch.context() as m:
        m.setitem(ps.LIMITS["h264"], "sps", 1)
        first, old = run(media_root, make_config(files, MULTICAM), tmp_path)
    stamps = expected_stamps(first, cams(media_root, files))
    root = tmp_path / "again"
    (root / "sources").mkdir(parents=True)
    old.rename(root / "sources" / "episode.mp4")
    cfg = make_config(["episode.mp4"], [(0, 0.3, 2.9), (0, 3.5, 4.8)])
    prep = prepare(parse_config(cfg), [root])
    assert prep.params is not None and prep.params.conformant, prep.warnings
    assert len(prep.params.maps) >= 3
    final = tmp_path / "final.mp4"
    execute(prep, final)
    record = check_parameter_sets(final, "h264")
    assert len(record["sps"]) >= 3
    assert _inband_sets(final) == 0
    check_frames(final, [stamps[f] for cut in prep.plan.cuts for f in range(cut.first, cut.stop)])
    assert check_copied_bytes(final, prep) > 0


def test_a_surprise_while_muxing_writes_the_file_again_inband(
        media_root: MediaRoot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    original = bitstream.Conformer.packet
    calls = {"n": 0}

    def packet(self: bitstream.Conformer, *args: Any) -> bytes:
        calls["n"] += 1
        if calls["n"] == 40:
            raise bitstream.ParameterSetSurprise("a set changed in-band inside a GOP")
        return original(self, *args)

    monkeypatch.setattr(bitstream.Conformer, "packet", packet)
    files = ["hevc_open.mp4", "hevc_b.mp4"]
    prep, out = run(media_root, make_config(files, MULTICAM), tmp_path)
    assert "writing the parameter sets in-band instead" in caplog.text
    assert _inband_sets(out) > 0
    check_frames(out, expected_stamps(prep, cams(media_root, files)))
    # The second writing takes the audio from the file its first reading left behind.
    worst, clicks = check_audio_sync(out, prep, gens(media_root, files))
    assert clicks >= 4 and worst < 0.002


def test_a_set_the_record_cannot_hold_falls_back_with_a_sentence(
        streams: dict[str, tuple[str, list[bytes], list[list[bytes]]]]) -> None:
    sets = _sps("h264", streams, "x264-cabac")
    extension = b"\x6d\x88\x80"  # NAL type 13: SPS extension (alpha planes)
    params = plan_sets("h264", [("sources[1] (alpha.mp4)", (*sets, extension))])
    assert not params.conformant
    [sentence] = bitstream.fallback_warning(params)
    assert "because sources[1] (alpha.mp4) carries an SPS extension" in sentence
    assert bitstream.fallback_warning(plan_sets("h264", [("a", tuple(sets))])) == []
