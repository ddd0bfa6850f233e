"""Real camera files: the file's own clock, display rotation, odd containers and tracks.

Expectations here never come from the engine's plan: which source frames a segment keeps,
where each lands in the output and where each audio click must be heard are computed from
the generator's ground truth (frame pts and click times as FFmpeg's demuxer and decoder
report them, the clock ffprobe prints and the editor's playhead follows).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from render import timecode
from render.audio import choose_target, open_audio_encoder
from render.config import parse_config
from render.encode import EncoderSettings, open_encoder
from render.engine import Prepared, execute, prepare
from render.errors import ConfigError, UnsupportedMediaError
from render.media import AudioTrackInfo, FrameIndex, SourceInfo, VideoFormat, VideoTrackInfo
from render.plan import EncodePiece
from render.sourcefile import LocalFile
from tests import mediagen as mg
from tests.test_mp4index import IRREGULAR_TRACKS
from tests.verify import check_parameter_sets

EPS = Fraction(1, 1_000_000)
#: Clicks this close to a cut are not looked for: the cut may fall inside one.
MARGIN = Fraction(1, 50)

CAMERAS: dict[str, mg.CameraSpec] = {
    "plain.mp4": mg.CameraSpec(camera=1, seconds=4),
    # No edit list, audio track first: the first frame shows at its B-frame delay (66.7 ms),
    # as in many cameras' files and in OBS remuxes.
    "late.mp4": mg.CameraSpec(camera=12, seconds=4, edit_list=False, audio_first=True),
    # The picture starts after the sound: an empty edit.
    "gap.mp4": mg.CameraSpec(camera=13, seconds=4, video_start=Fraction(1, 2)),
    "gap_fifth.mp4": mg.CameraSpec(camera=14, seconds=4, video_start=Fraction(1, 5)),
    # OBS's default containers: Matroska, and fragmented MP4, from the same encoder settings.
    "obs.mkv": mg.CameraSpec(camera=9, seconds=4, container="mkv"),
    "obs_opus.mkv": mg.CameraSpec(camera=10, seconds=4, container="mkv", audio_codec="opus",
                                  codec="hevc"),
    "obs_frag.mp4": mg.CameraSpec(camera=11, seconds=4, fragmented=True),
    # OBS's hybrid MP4 once the recording stopped (FFmpeg's finalisation writes no edit
    # list: the first frame shows at its B-frame delay).
    "obs_hybrid.mp4": mg.CameraSpec(camera=8, seconds=4, hybrid=True, edit_list=False),
    # A phone held upright: landscape pixels and a display matrix (iPhones write -90).
    "phone.mp4": mg.CameraSpec(camera=2, seconds=4, rotation=270),
    "phone_flipped.mp4": mg.CameraSpec(camera=3, seconds=4, rotation=90),
    # H.264 open GOP: one IDR, then I-frames with recovery points (no copy may start there).
    "open_gop.mp4": mg.CameraSpec(camera=4, seconds=4, open_gop=True, gop=30),
    # Sound as uncompressed PCM (QuickTime, as recorders write it), and a picture in a
    # codec cutfarm never copies (VP9, as screen recorders and browsers write it).
    "pcm.mov": mg.CameraSpec(camera=5, seconds=4, container="mov", audio_codec="pcm"),
    "vp9.mkv": mg.CameraSpec(camera=6, seconds=4, codec="vp9", container="mkv", bframes=0,
                             audio_codec="opus"),
}


@dataclass(frozen=True)
class Expected:
    stamps: list[tuple[int, int]]
    times: list[Fraction]  # output presentation time of every frame
    clicks: list[Fraction]  # output times of the source clicks inside the segments
    duration: Fraction


def expect(media: Mapping[str, mg.GeneratedMedia],
           segments: Sequence[tuple[str, float, float]]) -> Expected:
    """What a frame-exact export of ``segments`` must contain, from ground truth alone.

    A segment keeps the frames whose pts lies in [start, end); the file's first frame,
    when kept, shows from the segment start (a player shows it from 0 too).
    """
    stamps: list[tuple[int, int]] = []
    times: list[Fraction] = []
    clicks: list[Fraction] = []
    out = Fraction(0)
    for name, s, e in segments:
        gen = media[name]
        start, end = Fraction(str(s)), Fraction(str(e))
        kept = [n for n, p in enumerate(gen.frame_pts) if start - EPS <= p < end - EPS]
        assert kept, f"test bug: {name} [{s}, {e}) holds no frame"
        shown_from = gen.frame_pts[kept[0]]
        if kept[0] == 0:
            shown_from = min(shown_from, max(start, Fraction(0)))
        for n in kept:
            stamps.append((gen.spec.camera, n))
            times.append(out + (gen.frame_pts[n] - shown_from if n != kept[0] else 0))
        # A frame shows until the next one (Matroska's are on a millisecond grid).
        nxt = kept[-1] + 1
        shown_to = (gen.frame_pts[nxt] if nxt < gen.frame_count
                    else gen.frame_pts[kept[-1]] + 1 / Fraction(gen.spec.fps))
        clicks.extend(out + c - shown_from for c in gen.click_times
                      if shown_from + MARGIN <= c <= shown_to - MARGIN)
        out += shown_to - shown_from
    return Expected(stamps, times, clicks, out)


def export(root: Path, segments: Sequence[tuple[str, float, float]], tmp_path: Path,
           **output: Any) -> tuple[Prepared, Path]:
    files = sorted({name for name, _, _ in segments})
    cfg = {
        "version": 1,
        "id": "camera-files",
        "sources": [{"id": f"s{i}", "filePath": f} for i, f in enumerate(files)],
        "segments": [{"sourceIndex": files.index(n), "startTime": s, "endTime": e}
                     for n, s, e in segments],
        "output": {"format": "mp4", "codec": "copy", **output},
    }
    prep = prepare(parse_config(cfg), [root])
    out = tmp_path / "out.mp4"
    execute(prep, out)
    if not prep.plan.transcode or prep.plan.out_format.codec in ("h264", "hevc"):
        # Every parameter set in the one sample description, checked with FFmpeg's
        # trace_headers and pymp4 (tests/verify.py).
        check_parameter_sets(out, prep.plan.out_format.codec)
    return prep, out


def check_export(out: Path, want: Expected) -> None:
    video = mg.decode_video(out)
    assert video.errors == 0, video.messages[:5]
    assert video.stamps == want.stamps
    first = video.pts[0]
    assert first is not None
    got_times = [t - first for t in video.pts if t is not None]
    assert got_times == want.times
    assert mg.stream_info(out).duration == want.duration
    audio = mg.decode_audio(out)
    found = mg.find_clicks(audio.samples, audio.sample_rate, audio.start_time)
    assert want.clicks
    for t in want.clicks:
        near = min(found, key=lambda f: abs(f - float(t)))
        assert abs(near - float(t)) < 0.002, (float(t), near)


@pytest.fixture(scope="module")
def cameras(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, mg.GeneratedMedia]]:
    root = tmp_path_factory.mktemp("cameras")
    (root / "sources").mkdir()
    media = {name: mg.make_camera(root / "sources" / name, spec)
             for name, spec in CAMERAS.items()}
    return root, media


def test_the_generated_clocks_are_what_the_cases_need(
    cameras: tuple[Path, dict[str, mg.GeneratedMedia]],
) -> None:
    _, media = cameras
    assert media["plain.mp4"].frame_pts[0] == 0
    assert media["late.mp4"].frame_pts[0] == Fraction(2, 30)
    # The muxer stretched the first audio sample so that sound and picture keep their sync.
    assert media["late.mp4"].click_times[1] == 1 + Fraction(2, 30)
    assert media["gap.mp4"].frame_pts[0] == Fraction(1, 2)
    assert media["gap.mp4"].click_times[:2] == (Fraction(0), Fraction(1))


@pytest.mark.parametrize("accuracy", ["frame", "keyframe"])
def test_cuts_are_timed_on_the_files_clock(
    cameras: tuple[Path, dict[str, mg.GeneratedMedia]], tmp_path: Path, accuracy: str,
) -> None:
    root, media = cameras
    if accuracy == "frame":
        segments = [("late.mp4", 1.0, 2.1), ("gap.mp4", 1.0, 2.2), ("gap_fifth.mp4", 2.2, 3.1),
                    ("plain.mp4", 0.5, 1.5), ("gap.mp4", 3.1, 4.2)]
    else:  # cuts on keyframes of each file's clock: whole GOPs, nothing re-encoded
        segments = [("late.mp4", 1 + 2 / 30, 2 + 2 / 30), ("gap.mp4", 1.5, 3.5),
                    ("gap_fifth.mp4", 1.2, 2.2)]
    prep, out = export(root, segments, tmp_path, accuracy=accuracy) if accuracy == "keyframe" \
        else export(root, segments, tmp_path)
    check_export(out, expect(media, segments))
    if accuracy == "keyframe":
        assert prep.plan.encode_frames == 0


def test_a_segment_from_zero_holds_the_first_frame_and_keeps_the_sound(
    cameras: tuple[Path, dict[str, mg.GeneratedMedia]], tmp_path: Path,
) -> None:
    root, media = cameras
    segments = [("gap.mp4", 0.0, 1.6), ("late.mp4", 0.0, 1.3), ("plain.mp4", 0.0, 1.2)]
    _, out = export(root, segments, tmp_path)
    want = expect(media, segments)
    # gap.mp4 shows its first frame for the half second before its picture starts.
    assert want.times[1] == Fraction(1, 2) + Fraction(1, 30)
    check_export(out, want)


def test_re_encoded_outputs_follow_the_files_clock(
    cameras: tuple[Path, dict[str, mg.GeneratedMedia]], tmp_path: Path,
) -> None:
    root, media = cameras
    segments = [("gap.mp4", 1.0, 2.0), ("late.mp4", 1.0, 2.0)]
    _, out = export(root, segments, tmp_path, codec="h264")
    video = mg.decode_video(out)
    assert video.errors == 0
    # Same rate in and out: each output frame is the source frame on screen at its time.
    assert video.stamps == expect(media, segments).stamps


@pytest.mark.parametrize("name", ["obs.mkv", "obs_opus.mkv", "obs_frag.mp4", "obs_hybrid.mp4"])
def test_obs_recordings_are_cut_frame_exactly(
    cameras: tuple[Path, dict[str, mg.GeneratedMedia]], tmp_path: Path, name: str,
) -> None:
    root, media = cameras
    segments = [(name, 0.4, 1.7), ("plain.mp4", 1.7, 2.3), (name, 2.3, 3.9)]
    prep, out = export(root, segments, tmp_path)
    check_export(out, expect(media, segments))
    if media[name].spec.codec == "h264":  # same format as plain.mp4: whole GOPs are copied
        assert prep.plan.copy_bytes > 0


def _rotation(path: Path) -> int:
    with av.open(str(path)) as c:
        frame = next(c.decode(video=0))
        return int(frame.rotation) % 360


@pytest.mark.parametrize(("order", "out_rotation"), [
    (["plain.mp4", "phone.mp4", "plain.mp4"], 0),
    (["phone.mp4", "plain.mp4", "phone_flipped.mp4"], 270),
    (["phone_flipped.mp4", "phone.mp4"], 90),
])
def test_rotated_sources_mixed_with_others_play_upright(
    cameras: tuple[Path, dict[str, mg.GeneratedMedia]], tmp_path: Path,
    order: list[str], out_rotation: int,
) -> None:
    """The stamp reader turns frames by the output's display matrix, as players do: a
    frame encoded the wrong way round is unreadable."""
    root, media = cameras
    times = [(0.5, 1.5), (1.5, 2.2), (2.2, 3.1)]
    segments = [(name, a, b) for name, (a, b) in zip(order, times, strict=False)]
    prep, out = export(root, segments, tmp_path)
    assert _rotation(out) == out_rotation
    check_export(out, expect(media, segments))
    turned = {n for n in order if media[n].spec.rotation % 360 != out_rotation}
    assert len(prep.warnings) == len(turned)
    assert all("re-encoded upright" in w for w in prep.warnings)


def test_a_rotated_source_alone_is_copied_with_its_rotation(
    cameras: tuple[Path, dict[str, mg.GeneratedMedia]], tmp_path: Path,
) -> None:
    root, media = cameras
    segments = [("phone.mp4", 0.5, 2.5), ("phone.mp4", 3.0, 3.8)]
    prep, out = export(root, segments, tmp_path)
    assert _rotation(out) == 270 and prep.warnings == ()
    assert prep.plan.copy_bytes > 0
    check_export(out, expect(media, segments))


def test_a_re_encoded_output_is_upright_at_the_shown_size(
    cameras: tuple[Path, dict[str, mg.GeneratedMedia]], tmp_path: Path,
) -> None:
    root, media = cameras
    segments = [("phone.mp4", 0.5, 1.5), ("plain.mp4", 1.5, 2.0)]
    _, out = export(root, segments, tmp_path, codec="h264")
    assert _rotation(out) == 0
    video = mg.decode_video(out)
    assert (video.width, video.height) == (180, 320)
    assert video.stamps == expect(media, segments).stamps


@pytest.mark.parametrize(("order", "canvas", "out_rotation"), [
    (["phone.mp4", "plain.mp4"], (320, 180), 0),
    (["plain.mp4", "phone.mp4"], (180, 320), 270),
])
def test_the_canvas_chooses_which_way_round_the_export_is(
    cameras: tuple[Path, dict[str, mg.GeneratedMedia]], tmp_path: Path,
    order: list[str], canvas: tuple[int, int], out_rotation: int,
) -> None:
    """A copy export keeps the format of the first source shown the canvas's way round
    (the config's output.width/height); the others are re-encoded upright to it."""
    root, media = cameras
    segments = [(order[0], 0.5, 1.5), (order[1], 1.5, 2.9), (order[0], 2.9, 3.6)]
    prep, out = export(root, segments, tmp_path, width=canvas[0], height=canvas[1])
    assert _rotation(out) == out_rotation
    assert prep.plan.copy_bytes > 0
    check_export(out, expect(media, segments))
    assert [w.split(" ")[1] for w in prep.warnings] == [
        f"({n})" for n in sorted(set(order)) if media[n].spec.rotation % 360 != out_rotation]


def test_pcm_sound_and_a_picture_never_copied(
    cameras: tuple[Path, dict[str, mg.GeneratedMedia]], tmp_path: Path,
) -> None:
    """PCM is heard click for click; a VP9 source first sets nothing: the export keeps the
    first H.264 source's format and converts the VP9 frames to it."""
    root, media = cameras
    segments = [("vp9.mkv", 0.4, 1.3), ("pcm.mov", 1.3, 2.6), ("plain.mp4", 2.6, 3.4),
                ("vp9.mkv", 3.4, 3.9)]
    prep, out = export(root, segments, tmp_path)
    assert prep.plan.out_format == prep.sources[1].video.format  # pcm.mov's H.264
    assert prep.plan.copy_bytes > 0
    check_export(out, expect(media, segments))


def test_an_export_with_nothing_to_copy_says_how_to_re_encode(
    cameras: tuple[Path, dict[str, mg.GeneratedMedia]], tmp_path: Path,
) -> None:
    root, media = cameras
    with pytest.raises(ConfigError, match=r"vp9\.mkv\) is vp9.*output\.codec") as err:
        export(root, [("vp9.mkv", 0.5, 2.0)], tmp_path)
    assert err.value.field == "output.codec"
    _, out = export(root, [("vp9.mkv", 0.5, 2.0)], tmp_path, codec="h264")
    assert mg.decode_video(out).stamps == expect(media, [("vp9.mkv", 0.5, 2.0)]).stamps


def test_an_hevc_re_encode_conforms(
    cameras: tuple[Path, dict[str, mg.GeneratedMedia]], tmp_path: Path,
) -> None:
    """Every output codec of an MP4 gets the sample-entry check (``export`` runs it)."""
    root, media = cameras
    segments = [("plain.mp4", 0.5, 1.9), ("obs_opus.mkv", 1.9, 3.0)]
    prep, out = export(root, segments, tmp_path, codec="h265")
    assert prep.plan.out_format.codec == "hevc"
    assert mg.decode_video(out).stamps == expect(media, segments).stamps


def test_a_segment_wholly_before_the_picture_says_where_it_starts(
    cameras: tuple[Path, dict[str, mg.GeneratedMedia]], tmp_path: Path,
) -> None:
    root, _ = cameras
    with pytest.raises(ConfigError, match=r"video starts at 0\.500s"):
        export(root, [("gap.mp4", 0.0, 0.4)], tmp_path)


# --------------------------------------------------------------------------- small things


@pytest.fixture(scope="module")
def surround(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, mg.GeneratedMedia]]:
    root = tmp_path_factory.mktemp("surround")
    (root / "sources").mkdir()
    specs = {"room51.mp4": mg.CameraSpec(camera=5, seconds=3, audio_channels=6),
             "desk.mp4": mg.CameraSpec(camera=6, seconds=3)}
    return root, {n: mg.make_camera(root / "sources" / n, s) for n, s in specs.items()}


def test_a_surround_first_source_keeps_its_layout(
    surround: tuple[Path, dict[str, mg.GeneratedMedia]], tmp_path: Path,
) -> None:
    root, media = surround
    segments = [("room51.mp4", 0.5, 1.6), ("desk.mp4", 1.0, 2.5)]
    prep, out = export(root, segments, tmp_path)
    assert prep.warnings == ()
    assert mg.stream_info(out).audio_channels == 6
    check_export(out, expect(media, segments))


def test_a_downmixed_source_is_reported(
    surround: tuple[Path, dict[str, mg.GeneratedMedia]], tmp_path: Path,
) -> None:
    root, media = surround
    segments = [("desk.mp4", 0.5, 1.6), ("room51.mp4", 1.0, 2.5)]
    prep, out = export(root, segments, tmp_path)
    assert mg.stream_info(out).audio_channels == 2
    assert len(prep.warnings) == 1
    assert "room51.mp4" in prep.warnings[0] and "6-channel" in prep.warnings[0]
    assert "downmixed" in prep.warnings[0]
    check_export(out, expect(media, segments))


def test_x265_says_nothing_on_stderr(
    surround: tuple[Path, dict[str, mg.GeneratedMedia]], tmp_path: Path,
) -> None:
    """An all re-encoded HEVC export used to end with x265's banner and 'encoded 0 frames'."""
    root, _ = surround
    config = tmp_path / "export.json"
    config.write_text(json.dumps({
        "version": 1, "id": "quiet",
        "sources": [{"id": "a", "filePath": "desk.mp4"}],
        "segments": [{"sourceIndex": 0, "startTime": 0.5, "endTime": 0.7}],
        "output": {"format": "mp4", "codec": "h265"}}))
    proc = subprocess.run(
        [sys.executable, "-m", "serve_app.cli", "render", str(config), "--media-root",
         str(root), "-o", str(tmp_path / "out.mp4")],
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out.mp4").stat().st_size > 0
    noise = [line for line in proc.stderr.splitlines()
             if "x265" in line or "encoded" in line]
    assert noise == []


@pytest.mark.parametrize(("start", "frames", "rate", "label"), [
    ("01:00:00:00", 61, Fraction(30), "01:00:02:01"),
    ("23:59:59:29", 1, Fraction(30), "00:00:00:00"),
    # Drop frame: labels 00 and 01 of every minute but each tenth are skipped.
    ("00:00:59;29", 1, Fraction(30000, 1001), "00:01:00;02"),
    ("00:09:59;29", 1, Fraction(30000, 1001), "00:10:00;00"),
    ("00:00:00;00", 17982, Fraction(30000, 1001), "00:10:00;00"),
    ("00:00:00;00", 107892, Fraction(30000, 1001), "01:00:00;00"),
    ("00:00:59;59", 1, Fraction(60000, 1001), "00:01:00;04"),
    ("10:00:00:00", 48, Fraction(24000, 1001), "10:00:02:00"),
])
def test_timecode_arithmetic(start: str, frames: int, rate: Fraction, label: str) -> None:
    assert timecode.advance(start, frames / rate, rate) == label


def test_timecode_labels_round_trip_in_drop_frame() -> None:
    for n in range(0, 40000, 7):
        tc = timecode.from_frames(n, 30, True)
        assert tc.frames >= 2 or tc.seconds or tc.minutes % 10 == 0
        assert timecode.to_frames(tc, 30) == n


def test_the_first_segments_timecode_is_carried(tmp_path: Path) -> None:
    (tmp_path / "sources").mkdir()
    specs = {"a.mp4": mg.CameraSpec(camera=1, seconds=3, timecode="01:00:00:00"),
             "b.mp4": mg.CameraSpec(camera=2, seconds=3, timecode="02:00:00:00"),
             "c.mp4": mg.CameraSpec(camera=3, seconds=3)}
    for name, spec in specs.items():
        mg.make_camera(tmp_path / "sources" / name, spec)
    for segments, want in (([("a.mp4", 1.5, 2.0), ("b.mp4", 0.0, 1.0)], "01:00:01:15"),
                           ([("b.mp4", 2.0, 2.5), ("a.mp4", 0.0, 1.0)], "02:00:02:00"),
                           ([("c.mp4", 1.0, 1.5), ("a.mp4", 0.0, 1.0)], None)):
        _, out = export(tmp_path, segments, tmp_path)
        with av.open(str(out)) as c:
            assert c.streams.video[0].metadata.get("timecode") == want
            assert len(c.streams.data) == (1 if want else 0)  # the tmcd track
        assert mg.decode_video(out).errors == 0


@pytest.mark.parametrize("kind", sorted(IRREGULAR_TRACKS))
def test_a_track_the_export_does_not_use_cannot_refuse_the_file(
    cameras: tuple[Path, dict[str, mg.GeneratedMedia]], tmp_path: Path, kind: str,
) -> None:
    """A broken timecode track, a trak without media, slow-motion or multi-edit audio."""
    root, media = cameras
    make, _ = IRREGULAR_TRACKS[kind]
    make(root / "sources" / "plain.mp4", root / "sources" / f"odd_{kind}.mp4")
    odd = f"odd_{kind}.mp4"
    media = {**media, odd: media["plain.mp4"]}  # same frames: only the moov differs
    segments = [(odd, 0.5, 1.7), ("gap.mp4", 1.7, 2.4), (odd, 2.4, 3.3)]
    _, out = export(root, segments, tmp_path)
    want = expect(media, segments)
    if kind.startswith("audio"):  # the edited audio plays elsewhere: check the picture
        video = mg.decode_video(out)
        assert video.errors == 0 and video.stamps == want.stamps
    else:
        check_export(out, want)


def test_h264_open_gop_decodes_from_the_nearest_recovery_point(
    cameras: tuple[Path, dict[str, mg.GeneratedMedia]], tmp_path: Path,
) -> None:
    """Everything is re-encoded (no IDR after frame 0), each run decoding from a recovery
    point near it, never from the file's start; cuts right after an I-frame need its
    leading B-frames, which only decode from the recovery point before."""
    root, media = cameras
    segments = [("open_gop.mp4", 0.5, 1.3), ("plain.mp4", 1.3, 1.9),
                ("open_gop.mp4", 1.95, 2.1), ("open_gop.mp4", 2.93, 3.9)]
    prep, out = export(root, segments, tmp_path)
    check_export(out, expect(media, segments))
    og = next(i for i, s in prep.sources.items() if s.path.name == "open_gop.mp4")
    index = prep.sources[og].video.index
    assert index.rap_dec.tolist() == [0]
    runs = [run for p in prep.plan.pieces if isinstance(p, EncodePiece) for run in p.runs
            if run.source == og]
    assert len(runs) == 3 and min(r.decode_from for r in runs[1:]) > 0
    for run in runs:
        wanted = int(index.dec_of_disp[run.src_disp].min())
        assert wanted - run.decode_from <= 2 * 30  # within two GOPs, not the whole file


def test_a_re_encoded_export_carries_the_timecode_too(tmp_path: Path) -> None:
    (tmp_path / "sources").mkdir()
    mg.make_camera(tmp_path / "sources" / "a.mp4",
                   mg.CameraSpec(camera=1, seconds=3, timecode="01:00:00:00"))
    for output in ({"codec": "h264"}, {}):
        segments = [("a.mp4", 1.0, 2.0)] if output else [("a.mp4", 1.0, 1.2)]  # no copy
        _, out = export(tmp_path, segments, tmp_path, **output)
        with av.open(str(out)) as c:
            assert c.streams.video[0].metadata.get("timecode") == "01:00:01:00"


def test_a_mirrored_source_is_refused_in_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "sources").mkdir()
    path = tmp_path / "sources" / "selfie.mp4"
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=30)
        vs.width, vs.height, vs.pix_fmt = 160, 96, "yuv420p"
        vs.set_display_rotation(0, hflip=True)
        for n in range(10):
            frame = mg.render_frame(mg.CameraSpec(camera=1, width=160, height=96), n)
            frame.pts = n
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
    with pytest.raises(UnsupportedMediaError, match="mirrored"):
        export(tmp_path, [("selfie.mp4", 0.0, 0.2)], tmp_path)


def test_a_long_variable_rate_source_gets_an_encoder_rate_that_fits() -> None:
    """A 22-minute 90 kHz phone clip's exact mean rate has 10-digit terms (int32 overflow)."""
    mean = Fraction(3601170000, 120044717)
    settings = EncoderSettings("h264", 320, 180, "yuv420p", 2, 23, "ultrafast", rate=mean)
    ctx = open_encoder(settings, Fraction(1, 90000), 30)
    assert ctx.framerate == mean.limit_denominator(1001)


def test_surround_from_ac3_is_opus_surround_in_webm() -> None:
    audio = AudioTrackInfo("ac3", 48000, 6, "5.1(side)", Fraction(0), 0, 448000)
    target = choose_target("webm", [replace_audio(audio)])
    assert target.layout == "5.1"
    open_audio_encoder(target)  # libopus accepts it
    assert choose_target("mp4", [replace_audio(audio)]).layout == "5.1(side)"


def replace_audio(audio: AudioTrackInfo) -> SourceInfo:
    """A SourceInfo that only its audio matters for."""
    index = FrameIndex(Fraction(1, 30), np.zeros(1, np.int64), np.ones(1, np.int64),
                       np.ones(1, bool))
    video = VideoTrackInfo(index, VideoFormat("h264", 16, 16, "yuv420p"),
                           np.zeros(1, np.int64), b"", 4, None, 0, None, 2, 2, 2, 0, 0)
    return SourceInfo(LocalFile(Path("x.mp4"), 1), "mp4", video, audio)
