"""The media generator produces what it promises, and the readers catch faults."""

from __future__ import annotations

import random
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import av.logging
import numpy as np
import numpy.typing as npt
import pytest

from tests import mediagen as mg

U8 = npt.NDArray[np.uint8]


# --------------------------------------------------------------------------
# fixtures: every file is generated once per module
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mediagen")


def _make(media_dir: Path, name: str, spec: mg.CameraSpec) -> mg.GeneratedMedia:
    return mg.make_camera(media_dir / f"{name}.{spec.container}", spec)


@pytest.fixture(scope="module")
def h264(media_dir: Path) -> mg.GeneratedMedia:
    return _make(media_dir, "h264", mg.CameraSpec(camera=3, seconds=4.0))


@pytest.fixture(scope="module")
def h264_open(media_dir: Path) -> mg.GeneratedMedia:
    spec = mg.CameraSpec(camera=4, seconds=3.0, open_gop=True, audio=False)
    return _make(media_dir, "h264_open", spec)


@pytest.fixture(scope="module")
def hevc_open(media_dir: Path) -> mg.GeneratedMedia:
    spec = mg.CameraSpec(
        camera=5, codec="hevc", fps=Fraction(30000, 1001), seconds=4.0, open_gop=True
    )
    return _make(media_dir, "hevc_open", spec)


@pytest.fixture(scope="module")
def hevc_closed(media_dir: Path) -> mg.GeneratedMedia:
    spec = mg.CameraSpec(camera=6, codec="hevc", seconds=3.0, audio=False)
    return _make(media_dir, "hevc_closed", spec)


@pytest.fixture(scope="module")
def vfr(media_dir: Path) -> mg.GeneratedMedia:
    return _make(media_dir, "vfr", mg.CameraSpec(camera=9, vfr=True, seconds=3.0))


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def _expected(media: mg.GeneratedMedia) -> list[tuple[int, int] | None]:
    return [(media.spec.camera, n) for n in range(media.frame_count)]


def _leading_pictures(table: list[mg.PacketInfo]) -> dict[int, list[int]]:
    """keyframe index -> indices of later packets (before the next key) displayed earlier."""
    result: dict[int, list[int]] = {}
    for i, key in enumerate(table):
        if not key.is_keyframe or key.pts is None:
            continue
        lead: list[int] = []
        for j in range(i + 1, len(table)):
            p = table[j]
            if p.is_keyframe:
                break
            if p.pts is not None and p.pts < key.pts:
                lead.append(j)
        result[i] = lead
    return result


def _yuv_planes(frame: av.VideoFrame) -> tuple[U8, U8, U8]:
    f = frame.reformat(format="yuv420p")
    h, w = f.height, f.width
    arr = np.asarray(f.to_ndarray(), dtype=np.uint8).ravel()
    y = arr[: h * w].reshape(h, w)
    u = arr[h * w : h * w + (h // 2) * (w // 2)].reshape(h // 2, w // 2)
    v = arr[h * w + (h // 2) * (w // 2) :].reshape(h // 2, w // 2)
    return y, u, v


def _from_planes(y: U8, u: U8, v: U8) -> av.VideoFrame:
    h, w = y.shape
    flat = np.concatenate([y.ravel(), u.ravel(), v.ravel()])
    return av.VideoFrame.from_ndarray(flat.reshape(h * 3 // 2, w), format="yuv420p")


def _pad(frame: av.VideoFrame, width: int, height: int, x: int, y: int) -> av.VideoFrame:
    """Place frame at (x, y) on a black canvas (x, y, sizes even)."""
    py, pu, pv = _yuv_planes(frame)
    h, w = py.shape
    oy = np.full((height, width), 16, np.uint8)
    ou = np.full((height // 2, width // 2), 128, np.uint8)
    ov = ou.copy()
    oy[y : y + h, x : x + w] = py
    ou[y // 2 : (y + h) // 2, x // 2 : (x + w) // 2] = pu
    ov[y // 2 : (y + h) // 2, x // 2 : (x + w) // 2] = pv
    return _from_planes(oy, ou, ov)


def _encode(path: Path, frames: list[av.VideoFrame], crf: int) -> Path:
    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264", rate=30, options={"crf": str(crf), "preset": "ultrafast"})
        st.width, st.height, st.pix_fmt = frames[0].width, frames[0].height, "yuv420p"
        for i, f in enumerate(frames):
            f.pts = i
            out.mux(st.encode(f))
        out.mux(st.encode(None))
    return path


def _reencode_audio(src: Path, dst: Path, rate: int) -> Path:
    """Decode src's audio, resample to ``rate`` and AAC-encode it into dst (m4a)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4") as out:
        st = out.add_stream("aac", rate=rate)
        st.layout = "stereo"
        resampler = av.AudioResampler(format="fltp", layout="stereo", rate=rate)
        for frame in inp.decode(audio=0):
            for g in resampler.resample(frame):
                out.mux(st.encode(g))
        for g in resampler.resample(None):
            out.mux(st.encode(g))
        out.mux(st.encode(None))
    return dst


def _assert_clicks(found: list[float], expected: tuple[Fraction, ...], tol: float) -> None:
    assert len(found) == len(expected), (found, expected)
    for got, want in zip(found, expected, strict=True):
        assert abs(got - float(want)) <= tol, (got, want)


# --------------------------------------------------------------------------
# stamp encoding / reading
# --------------------------------------------------------------------------


def test_stamp_bits_roundtrip_and_crc_catches_bit_errors() -> None:
    rng = random.Random(7)
    pairs = [(0, 0), (15, mg.MAX_FRAME_NUMBER), (9, 12345)]
    pairs += [(rng.randrange(16), rng.randrange(1 << 16)) for _ in range(200)]
    for cam, n in pairs:
        bits = mg.stamp_bits(cam, n)
        assert len(bits) == mg.STAMP_ROWS * mg.STAMP_COLS
        assert mg.decode_stamp_bits(bits) == (cam, n)
    assert mg.stamp_bits(0, 0) != [0] * 28  # never an all-black grid
    for cam, n in pairs[:5]:
        bits = mg.stamp_bits(cam, n)
        for i in range(len(bits)):
            one = bits.copy()
            one[i] ^= 1
            assert mg.decode_stamp_bits(one) is None
            for j in range(i + 1, len(bits)):
                two = one.copy()
                two[j] ^= 1
                assert mg.decode_stamp_bits(two) is None


@pytest.mark.parametrize("pix_fmt", ["yuv420p", "yuv420p10le"])
def test_render_frame_reads_back(pix_fmt: str) -> None:
    for cam in range(16):
        spec = mg.CameraSpec(camera=cam, pix_fmt=pix_fmt)
        for n in (0, 1, 2 + cam * 997, mg.MAX_FRAME_NUMBER):
            frame = mg.render_frame(spec, n)
            assert frame.format.name == pix_fmt
            assert mg.read_stamp(frame) == (cam, n)


def test_background_moves_and_is_deterministic() -> None:
    spec = mg.CameraSpec(camera=2)
    a = np.asarray(mg.render_frame(spec, 10).to_ndarray())
    b = np.asarray(mg.render_frame(spec, 10).to_ndarray())
    c = np.asarray(mg.render_frame(spec, 11).to_ndarray())
    assert np.array_equal(a, b)
    # the background (top strip, outside the grid) really changes between frames
    diff = np.abs(a[:30].astype(int) - c[:30].astype(int))
    assert diff.mean() > 5
    other = np.asarray(mg.render_frame(mg.CameraSpec(camera=3), 10).to_ndarray())
    assert not np.array_equal(a[:30], other[:30])
    assert np.array_equal(mg.render_audio(spec, 5000), mg.render_audio(spec, 5000))


def test_ten_bit_frames_use_the_extra_precision() -> None:
    frame = mg.render_frame(mg.CameraSpec(camera=1, pix_fmt="yuv420p10le"), 5)
    arr = np.asarray(frame.to_ndarray())
    assert arr.dtype == np.uint16 and int(arr.max()) <= 1023
    assert float(np.mean(arr % 4 != 0)) > 0.3  # not just 8-bit values shifted left


_TRANSFORMS: dict[str, Callable[[av.VideoFrame], av.VideoFrame]] = {
    "upscale_640x360": lambda f: f.reformat(width=640, height=360),
    "downscale_160x90": lambda f: f.reformat(width=160, height=90),
    "downscale_lanczos_128x72": lambda f: f.reformat(width=128, height=72, interpolation="LANCZOS"),
    "bicubic_400x226": lambda f: f.reformat(width=400, height=226, interpolation="BICUBIC"),
    "letterbox_320x240": lambda f: _pad(f, 320, 240, 0, 30),
    "pillarbox_320x136": lambda f: _pad(f.reformat(width=240, height=136), 320, 136, 40, 0),
    "upscale_boxed_854x480": lambda f: _pad(f.reformat(width=640, height=360), 854, 480, 106, 60),
    "stretch_320x240": lambda f: f.reformat(width=320, height=240),
}


@pytest.mark.parametrize("name", sorted(_TRANSFORMS))
def test_read_stamp_survives_scaling_padding_and_compression(name: str, tmp_path: Path) -> None:
    spec = mg.CameraSpec(camera=11)
    frames = [_TRANSFORMS[name](mg.render_frame(spec, n)) for n in range(20)]
    assert [mg.read_stamp(f) for f in frames] == [(11, n) for n in range(20)]
    decoded = mg.decode_video(_encode(tmp_path / f"{name}.mp4", frames, crf=40))
    assert decoded.stamps == [(11, n) for n in range(20)]
    assert decoded.errors == 0


def test_content_rect_detection() -> None:
    frame = _pad(mg.render_frame(mg.CameraSpec(camera=0), 0), 480, 300, 80, 60)
    assert mg.find_content_rect(mg.frame_luma(frame)) == mg.Rect(80, 60, 400, 240)
    # explicit rect: right answer with the right rect, garbage with a wrong one
    assert mg.read_stamp(frame, mg.Rect(80, 60, 400, 240)) == (0, 0)
    assert mg.read_stamp(frame, mg.Rect(0, 0, 480, 300)) is None


def test_read_stamp_rejects_unreadable_frames() -> None:
    spec = mg.CameraSpec(camera=7)
    y0, u0, v0 = _yuv_planes(mg.render_frame(spec, 100))
    y1, _, _ = _yuv_planes(mg.render_frame(spec, 101))
    blend = ((y0.astype(np.uint16) + y1) // 2).astype(np.uint8)
    assert mg.read_stamp(_from_planes(blend, u0, v0)) is None  # cross-fade
    mirrored = np.ascontiguousarray(y0[:, ::-1])
    assert mg.read_stamp(_from_planes(mirrored, u0, v0)) is None
    black = np.full_like(y0, 16)
    assert mg.read_stamp(_from_planes(black, u0, v0)) is None
    noise = np.random.default_rng(3).integers(16, 236, y0.shape, dtype=np.uint8)
    assert mg.read_stamp(_from_planes(noise, u0, v0)) is None
    # flip exactly one cell: the CRC must reject it
    w, h = spec.width, spec.height
    x0, y0f, x1, y1f = mg.STAMP_RECT
    cw, ch = (x1 - x0) * w / mg.STAMP_COLS, (y1f - y0f) * h / mg.STAMP_ROWS
    cx, cy = int(x0 * w + 2.5 * cw), int(y0f * h + 1.5 * ch)
    flipped = y0.copy()
    cell = flipped[cy - 3 : cy + 3, cx - 3 : cx + 3]
    flipped[cy - 6 : cy + 6, cx - 8 : cx + 8] = 16 if cell.mean() > 128 else 235
    assert mg.read_stamp(_from_planes(flipped, u0, v0)) is None


# --------------------------------------------------------------------------
# generated files: timing, GOP structure, codecs
# --------------------------------------------------------------------------


def test_h264_camera_timing_and_content(h264: mg.GeneratedMedia) -> None:
    assert h264.frame_count == 120
    assert list(h264.frame_pts) == [Fraction(n, 30) for n in range(120)]
    assert h264.frame_pts[0] == 0
    assert h264.keyframes == (0, 30, 60, 90)

    info = mg.stream_info(h264.path)
    assert (info.codec_name, info.codec_tag, info.profile) == ("h264", "avc1", "High")
    assert (info.width, info.height, info.pix_fmt, info.frame_count) == (320, 180, "yuv420p", 120)
    assert info.duration == 4
    assert (info.audio_codec, info.audio_sample_rate, info.audio_channels) == ("aac", 48000, 2)

    table = mg.packet_table(h264.path)
    pts = [p.pts for p in table if p.pts is not None]
    assert len(pts) == len(table)
    assert pts != sorted(pts)  # B-frames: decode order != display order
    assert table[0].pts == 0
    assert table[0].dts is not None and table[0].dts < 0  # edit list hides the B-frame delay
    assert {p.duration for p in table} == {Fraction(1, 30)}
    for p in table:
        assert (5 in p.nal_types) == p.is_keyframe  # IDR exactly on keyframes

    decoded = mg.decode_video(h264.path)
    assert decoded.stamps == _expected(h264)
    assert decoded.pts == list(h264.frame_pts)
    assert decoded.errors == 0 and decoded.messages == []
    assert (decoded.width, decoded.height, decoded.pix_fmt) == (320, 180, "yuv420p")


def test_h264_camera_audio(h264: mg.GeneratedMedia) -> None:
    assert h264.audio_start == 0
    audio = mg.decode_audio(h264.path)
    assert audio.sample_rate == 48000 and audio.start_time == 0
    assert audio.samples.dtype == np.float32
    assert abs(len(audio.samples) - 4 * 48000) <= 1024  # AAC pads the last frame
    assert h264.click_times == tuple(Fraction(k) for k in range(4))
    found = mg.find_clicks(audio.samples, audio.sample_rate, audio.start_time)
    _assert_clicks(found, h264.click_times, tol=0.0005)
    with av.open(str(h264.path)) as c:
        assert c.streams.audio[0].start_time == 0


def test_hevc_open_gop_has_cra_with_rasl_leading_pictures(hevc_open: mg.GeneratedMedia) -> None:
    step = Fraction(1001, 30000)
    assert list(hevc_open.frame_pts) == [n * step for n in range(hevc_open.frame_count)]
    assert hevc_open.keyframes == (0, 30, 60, 90)
    info = mg.stream_info(hevc_open.path)
    assert (info.codec_name, info.codec_tag, info.profile) == ("hevc", "hvc1", "Main")
    assert info.average_rate == Fraction(30000, 1001)

    table = mg.packet_table(hevc_open.path)
    leading = _leading_pictures(table)
    keys = sorted(leading)
    assert set(table[keys[0]].nal_types) & {19, 20}  # stream starts with an IDR
    assert leading[keys[0]] == []
    for k in keys[1:]:
        assert 21 in table[k].nal_types  # CRA
        assert len(leading[k]) >= 1
        for j in leading[k]:  # the pictures displayed before the CRA are RASL
            assert set(table[j].nal_types) <= {8, 9}

    decoded = mg.decode_video(hevc_open.path)
    assert decoded.stamps == _expected(hevc_open)
    assert decoded.pts == list(hevc_open.frame_pts)
    assert decoded.errors == 0
    audio = mg.decode_audio(hevc_open.path)
    assert audio.start_time == 0
    found = mg.find_clicks(audio.samples, audio.sample_rate, audio.start_time)
    _assert_clicks(found, hevc_open.click_times, tol=0.0005)


def test_hevc_closed_gop_has_idr_and_no_leading_pictures(
    hevc_closed: mg.GeneratedMedia,
) -> None:
    table = mg.packet_table(hevc_closed.path)
    leading = _leading_pictures(table)
    assert len(leading) == 3 and all(v == [] for v in leading.values())
    for k in leading:
        assert set(table[k].nal_types) & {19, 20}
    assert not any({8, 9, 21} & set(p.nal_types) for p in table)
    assert mg.decode_video(hevc_closed.path).stamps == _expected(hevc_closed)


def test_h264_open_gop_vs_closed(h264: mg.GeneratedMedia, h264_open: mg.GeneratedMedia) -> None:
    closed = _leading_pictures(mg.packet_table(h264.path))
    assert all(v == [] for v in closed.values())
    table = mg.packet_table(h264_open.path)
    leading = _leading_pictures(table)
    assert h264_open.keyframes == (0, 30, 60)
    later = sorted(leading)[1:]
    assert later and all(leading[k] for k in later)
    for k in later:  # open-GOP keyframes are recovery-point I-slices, not IDR
        assert 5 not in table[k].nal_types and 1 in table[k].nal_types
    assert mg.decode_video(h264_open.path).stamps == _expected(h264_open)


@pytest.mark.parametrize(("codec", "profile"), [("h264", "High 10"), ("hevc", "Main 10")])
def test_ten_bit_cameras(media_dir: Path, codec: str, profile: str) -> None:
    spec = mg.CameraSpec(camera=12, codec=codec, pix_fmt="yuv420p10le", seconds=1.0, audio=False)
    media = _make(media_dir, f"tenbit_{codec}", spec)
    info = mg.stream_info(media.path)
    assert (info.pix_fmt, info.profile) == ("yuv420p10le", profile)
    decoded = mg.decode_video(media.path)
    assert decoded.pix_fmt == "yuv420p10le"
    assert decoded.stamps == _expected(media)


def test_vfr_camera(vfr: mg.GeneratedMedia) -> None:
    assert vfr.frame_pts == vfr.nominal_frame_pts
    steps = {b - a for a, b in zip(vfr.frame_pts, vfr.frame_pts[1:], strict=False)}
    assert steps == set(mg.VFR_DURATIONS)
    info = mg.stream_info(vfr.path)
    assert info.time_base == Fraction(1, 90000)
    durations = {p.duration for p in mg.packet_table(vfr.path)}
    assert len(durations) >= 3  # the container really stores varying durations
    decoded = mg.decode_video(vfr.path)
    assert decoded.stamps == _expected(vfr)
    assert decoded.pts == list(vfr.frame_pts)
    audio = mg.decode_audio(vfr.path)
    found = mg.find_clicks(audio.samples, audio.sample_rate, audio.start_time)
    _assert_clicks(found, vfr.click_times, tol=0.0005)


def test_mkv_with_opus(media_dir: Path) -> None:
    spec = mg.CameraSpec(camera=10, container="mkv", audio_codec="opus", seconds=3.0)
    media = _make(media_dir, "opus", spec)
    assert media.path.suffix == ".mkv"
    for got, want in zip(media.frame_pts, media.nominal_frame_pts, strict=True):
        assert abs(got - want) <= Fraction(1, 1000)  # matroska stores milliseconds
    info = mg.stream_info(media.path)
    assert info.container_format.startswith("matroska") and info.codec_tag == ""
    assert info.audio_codec == "opus"
    decoded = mg.decode_video(media.path)
    assert decoded.stamps == _expected(media) and decoded.errors == 0
    assert decoded.pts[0] == 0
    audio = mg.decode_audio(media.path)
    assert audio.start_time == 0
    found = mg.find_clicks(audio.samples, audio.sample_rate, audio.start_time)
    _assert_clicks(found, media.click_times, tol=0.0005)


def test_mov_and_fragmented_mp4(media_dir: Path) -> None:
    mov = _make(media_dir, "mov", mg.CameraSpec(camera=13, container="mov", seconds=1.0))
    assert mg.stream_info(mov.path).container_format.startswith("mov")
    assert mg.decode_video(mov.path).stamps == _expected(mov)
    frag = _make(media_dir, "frag", mg.CameraSpec(camera=14, fragmented=True, seconds=2.0))
    assert frag.frame_pts[0] == 0 and frag.keyframes == (0, 30)
    with frag.path.open("rb") as fh:
        head = fh.read(4096)
    assert b"moof" in head or b"mvex" in head  # fragmented layout
    assert mg.decode_video(frag.path).stamps == _expected(frag)


def test_encoder_settings_change_sps_pps(media_dir: Path) -> None:
    base = mg.CameraSpec(camera=1, seconds=1.0, audio=False)
    a = _make(media_dir, "settings_a", base)
    b = _make(
        media_dir,
        "settings_b",
        mg.CameraSpec(camera=2, seconds=1.0, audio=False, x264_params="ref=1:cabac=0:8x8dct=0"),
    )
    ia, ib = mg.stream_info(a.path), mg.stream_info(b.path)
    assert ia.extradata and ib.extradata and ia.extradata != ib.extradata
    assert ia.profile == "High" and ib.profile != "High"
    assert mg.decode_video(b.path).stamps == _expected(b)


def test_spec_validation() -> None:
    for bad in (
        {"camera": 16},
        {"camera": 0, "codec": "av1"},
        {"camera": 0, "codec": "vp9", "bframes": 2},
        {"camera": 0, "audio_codec": "pcm"},  # MP4 cannot carry it: MOV or MKV
        {"camera": 0, "width": 321},
        {"camera": 0, "pix_fmt": "yuv444p"},
        {"camera": 0, "container": "mkv", "fragmented": True},
        {"camera": 0, "audio_codec": "opus", "sample_rate": 44100},
    ):
        with pytest.raises(ValueError):
            mg.CameraSpec(**bad)


# --------------------------------------------------------------------------
# readers must notice broken input
# --------------------------------------------------------------------------


def test_clean_stream_copy_decodes_without_errors(h264: mg.GeneratedMedia, tmp_path: Path) -> None:
    copy = mg.damage_video(h264.path, tmp_path / "copy.mp4")
    decoded = mg.decode_video(copy)
    assert decoded.errors == 0 and decoded.stamps == _expected(h264)


def test_corrupted_h264_keyframe_is_reported(h264: mg.GeneratedMedia, tmp_path: Path) -> None:
    broken = mg.damage_video(h264.path, tmp_path / "corrupt.mp4", corrupt=[30])
    decoded = mg.decode_video(broken)
    assert decoded.errors > 0
    assert any("error while decoding MB" in m.message for m in decoded.messages)


def test_dropped_hevc_reference_is_reported(hevc_open: mg.GeneratedMedia, tmp_path: Path) -> None:
    table = mg.packet_table(hevc_open.path)
    # first non-key packet after the second keyframe whose NAL is a referenced trailing picture
    victim = next(i for i in range(31, len(table)) if table[i].nal_types == (1,))
    broken = mg.damage_video(hevc_open.path, tmp_path / "drop.mp4", drop=[victim])
    decoded = mg.decode_video(broken)
    assert decoded.errors > 0
    assert any("Could not find ref" in m.message for m in decoded.messages)
    assert len(decoded.stamps) < hevc_open.frame_count  # undecodable frames are skipped


def test_start_at_non_keyframe_is_reported(h264: mg.GeneratedMedia, tmp_path: Path) -> None:
    broken = mg.damage_video(h264.path, tmp_path / "nokey.mp4", drop=range(5))
    decoded = mg.decode_video(broken)
    assert decoded.errors > 0  # mov demuxer: "Missing key frame while searching for timestamp"
    # H.264 silently skips to the next keyframe: the stamps reveal the missing frames
    assert decoded.frame_numbers[0] == 30


def test_dropped_h264_reference_shows_in_stamps(h264: mg.GeneratedMedia, tmp_path: Path) -> None:
    # H.264 often conceals a missing P-frame silently: the stamps must catch it anyway
    broken = mg.damage_video(h264.path, tmp_path / "dropp.mp4", drop=[1])
    decoded = mg.decode_video(broken)
    assert decoded.stamps != _expected(h264)
    assert decoded.unreadable > 0 or len(decoded.stamps) < h264.frame_count


def test_truncated_files(h264: mg.GeneratedMedia, media_dir: Path, tmp_path: Path) -> None:
    # moov at the end: a truncated mp4 does not open at all
    cut = mg.truncate_copy(h264.path, tmp_path / "cut.mp4", 0.5)
    assert cut.stat().st_size == h264.path.stat().st_size // 2
    with pytest.raises(av.error.InvalidDataError):
        mg.decode_video(cut)
    # fragmented: a prefix decodes, with errors for the torn fragment
    frag = mg.make_camera(
        tmp_path / "frag.mp4", mg.CameraSpec(camera=8, fragmented=True, seconds=3.0)
    )
    decoded = mg.decode_video(mg.truncate_copy(frag.path, tmp_path / "fragcut.mp4", 0.5))
    assert 0 < len(decoded.stamps) < frag.frame_count
    assert decoded.errors > 0
    numbers = [n for n in decoded.frame_numbers if n is not None]
    assert numbers == sorted(numbers) and numbers[0] == 0


def test_not_a_video(tmp_path: Path) -> None:
    text = mg.make_not_a_video(tmp_path / "fake.mp4")
    with pytest.raises(av.error.InvalidDataError):
        mg.decode_video(text)
    wav = mg.make_not_a_video(tmp_path / "audio.wav", kind="wav")
    with pytest.raises(ValueError, match="no video stream"):
        mg.decode_video(wav)
    with pytest.raises(ValueError, match="no video stream"):
        mg.stream_info(wav)
    assert mg.decode_audio(wav).sample_rate == 48000


def test_log_capture_restores_state_and_counts_repeats() -> None:
    prev = (av.logging.get_level(), av.logging.get_skip_repeated())
    with mg.capture_ffmpeg_log() as records:
        av.logging.log(av.logging.ERROR, "test", "boom")
        av.logging.log(av.logging.INFO, "test", "chatter")
    assert (av.logging.get_level(), av.logging.get_skip_repeated()) == prev
    assert [r.message for r in records] == ["boom"]
    recs = [
        mg.LogRecord(av.logging.ERROR, "h264", "x (repeated 4 more times)"),
        mg.LogRecord(av.logging.WARNING, "h264", "y"),
        mg.LogRecord(av.logging.INFO, "h264", "z"),
    ]
    assert mg.count_log_problems(recs) == 6


# --------------------------------------------------------------------------
# clicks
# --------------------------------------------------------------------------


def test_clicks_survive_aac_reencode_at_44100(h264: mg.GeneratedMedia, tmp_path: Path) -> None:
    out = _reencode_audio(h264.path, tmp_path / "44k.m4a", 44100)
    audio = mg.decode_audio(out)
    assert audio.sample_rate == 44100 and audio.start_time == 0
    found = mg.find_clicks(audio.samples, audio.sample_rate, audio.start_time)
    _assert_clicks(found, h264.click_times, tol=0.001)


def test_find_clicks_precision_and_shift_detection() -> None:
    spec = mg.CameraSpec(camera=0)
    data = mg.render_audio(spec, 3 * 48000)
    assert mg.find_clicks(data, 48000) == [0.0, 1.0, 2.0]
    # audio that starts 2.5 ms late (a cut): every click moves by exactly that much
    shifted = data[:, 120:]
    found = mg.find_clicks(shifted.mean(axis=0), 48000, start_time=Fraction(7, 2))
    assert found == pytest.approx([3.5 + 1 - 0.0025, 3.5 + 2 - 0.0025], abs=1 / 48000)
    # no clicks in noise or silence
    assert mg.find_clicks(data[:, 200:47000], 48000) == []
    assert mg.find_clicks(np.zeros(48000, dtype=np.float32), 48000) == []
