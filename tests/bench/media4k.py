"""Media for the 4K benchmark (tests/bench/test_bench_4k.py): three stamped 4K cameras.

Each camera is a 3840x2160 30 fps H.264 High/CABAC file (2 s closed GOPs, 2 B-frames,
stereo AAC, mediagen's stamp: camera id and frame number in every picture, an audio click
at every whole second), ``CUTFARM_BENCH_4K_SECONDS`` long (default 180, rounded up to whole
GOPs). Encoding 3 x 180 s of 4K on 2 cores would take about an hour, so only a short clip
per camera is encoded (``CLIP_SECONDS``: two GOPs; mediagen's picture plus fresh luma grain
every frame, so that, like a camera's sensor noise, it costs bits in every frame and the
bitrate lands near 150-190 Mbit/s), and the camera file repeats that clip's packets with
shifted timestamps. The audio is encoded at full length (cheap), so its clicks stay on every
whole second. Frame stamps repeat every ``CLIP_FRAMES`` frames: a stamp says which camera
and which frame modulo ``CLIP_FRAMES`` a picture is.

Made once under ``$CUTFARM_BENCH_MEDIA/4k/`` (a session tmp dir when unset): ``clips/``
holds the encoded clips, ``sources/`` the cameras; each file has a ``.spec`` stamp, and a
changed spec (or a changed mediagen.py / media4k.py) makes it again. Changing only the
length loops the kept clips again (about 30 s a camera); a first run takes about 3-4
minutes on 2 cores and about 12 GB of disk for 180 s.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from tests import mediagen as mg
from tests.bench.benchmedia import FILES, BenchMedia, warm_page_cache

FPS = 30
GOP = 60  # 2 s closed GOPs
BFRAMES = 2
WIDTH, HEIGHT = 3840, 2160
#: The encoded clip: two GOPs. Its frames repeat every CLIP_FRAMES in the camera files.
CLIP_SECONDS = 4
CLIP_FRAMES = CLIP_SECONDS * FPS
#: Luma grain: uniform integers in [-GRAIN, GRAIN] added to every pixel, new every frame.
GRAIN = 3
#: With GRAIN 3 at 4K this gives about 160-190 Mbit/s (superfast, like the 720p set).
CRF = 19
DEFAULT_SECONDS = 180
SECONDS_ENV = "CUTFARM_BENCH_4K_SECONDS"

CLIPS: dict[str, mg.CameraSpec] = {
    name: mg.CameraSpec(
        camera=c,
        codec="h264",
        width=WIDTH,
        height=HEIGHT,
        fps=Fraction(FPS),
        seconds=CLIP_SECONDS,
        gop=GOP,
        bframes=BFRAMES,
        crf=CRF,
        preset="superfast",
        audio=False,
    )
    for c, name in zip((1, 2, 3), FILES, strict=True)
}


def bench_seconds() -> int:
    """The cameras' length: ``CUTFARM_BENCH_4K_SECONDS`` (default 180), whole GOPs, >= 4."""
    raw = float(os.environ.get(SECONDS_ENV, DEFAULT_SECONDS))
    gop_s = GOP // FPS
    return max(CLIP_SECONDS, math.ceil(raw / gop_s) * gop_s)


def camera_spec(name: str, seconds: int) -> mg.CameraSpec:
    """What the looped camera file is, as mediagen's verifier checks it."""
    return replace(CLIPS[name], seconds=seconds, audio=True)


def _made_by() -> str:
    return f"mediagen={Path(mg.__file__).stat().st_size} media4k={Path(__file__).stat().st_size}"


def clip_stamp(name: str) -> str:
    return f"{CLIPS[name]!r} grain={GRAIN} {_made_by()}"


def camera_stamp(name: str, seconds: int) -> str:
    return f"{clip_stamp(name)} seconds={seconds}"


# --------------------------------------------------------------------------- generation


def grainy_frame(spec: mg.CameraSpec, n: int) -> av.VideoFrame:
    """mediagen's frame n plus fresh luma grain (deterministic per camera and frame)."""
    arr = mg.render_frame(spec, n).to_ndarray()  # yuv420p, Y plane in the first rows
    rng = np.random.default_rng((7000 + spec.camera) * 100_000 + n)
    y = arr[: spec.height].astype(np.int16)
    y += rng.integers(-GRAIN, GRAIN + 1, size=y.shape, dtype=np.int16)
    np.clip(y, 16, 235, out=y)
    arr[: spec.height] = y
    return av.VideoFrame.from_ndarray(arr, format="yuv420p")


def make_clip(path: Path, spec: mg.CameraSpec) -> None:
    """The clip, video only, encoded the way mediagen encodes a camera."""
    tb = 1 / Fraction(spec.fps)
    with av.open(str(path), "w", format="mp4") as out:
        vs = mg._add_video_stream(out, spec, tb)
        out.start_encoding()
        for n in range(round(spec.seconds * spec.fps)):
            frame = grainy_frame(spec, n)
            frame.pts = n
            frame.time_base = tb
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))


def loop_clip(clip: Path, dst: Path, spec: mg.CameraSpec) -> None:
    """``spec.seconds`` of camera: the clip's packets again and again, timestamps shifted by
    the clip's length each time (a last partial loop stops at a GOP boundary), and audio
    encoded at full length, interleaved as mediagen writes it."""
    frames, end = mg.nominal_frame_times(spec)
    with av.open(str(clip)) as inp:
        vin = inp.streams.video[0]
        tb = vin.time_base
        assert tb is not None
        pkts = [(bytes(p), int(p.pts or 0), int(p.dts or 0), p.duration, p.is_keyframe)
                for p in inp.demux(vin) if p.size]
        assert len(pkts) == CLIP_FRAMES, (clip, len(pkts))
        shift = Fraction(CLIP_FRAMES, FPS) / tb
        assert shift.denominator == 1, tb
        per_frame = int(shift) // CLIP_FRAMES
        with av.open(str(dst), "w", format="mp4") as out:
            vs = out.add_stream_from_template(vin)
            audio = mg._AudioFeeder(out, spec, round(end * spec.sample_rate))
            out.start_encoding()
            for k in range(math.ceil(len(frames) / CLIP_FRAMES)):
                for data, pts, dts, dur, key in pkts:
                    if pts // per_frame + k * CLIP_FRAMES >= len(frames):
                        continue  # past the end: a later GOP of the last, partial loop
                    pkt = av.Packet(data)
                    pkt.pts = pts + k * int(shift)
                    pkt.dts = dts + k * int(shift)
                    pkt.duration = dur
                    pkt.time_base = tb
                    pkt.is_keyframe = key
                    pkt.stream = vs
                    out.mux(pkt)
                    audio.push(math.ceil(max(0, pkt.dts) * tb * spec.sample_rate))
            audio.finish()
    mg._verify_generated(dst, spec, frames, end)


def make_camera(root: Path, name: str, seconds: int) -> tuple[str, float, float]:
    """Clip (unless a matching one is kept) and camera file; returns
    (name, clip video Mbit/s, camera file Mbit/s)."""
    clips, sources = root / "clips", root / "sources"
    clip = clips / name
    stamp = clips / f"{name}.spec"
    if not (clip.exists() and stamp.exists() and stamp.read_text() == clip_stamp(name)):
        stamp.unlink(missing_ok=True)
        make_clip(clip, CLIPS[name])
        stamp.write_text(clip_stamp(name))
    dst = sources / name
    loop_clip(clip, dst, camera_spec(name, seconds))
    (sources / f"{name}.spec").write_text(camera_stamp(name, seconds))
    return (name, clip.stat().st_size * 8 / CLIP_SECONDS / 1e6,
            dst.stat().st_size * 8 / seconds / 1e6)


def bitrates(media: BenchMedia, seconds: int) -> dict[str, float]:
    """Mbit/s of every camera file (all streams)."""
    return {n: media.path(n).stat().st_size * 8 / seconds / 1e6 for n in FILES}


def ensure_4k_media(root: Path) -> BenchMedia:
    """Make the 4K cameras under ``root`` unless matching ones are there; warm the cache."""
    seconds = bench_seconds()
    for sub in ("clips", "sources"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    missing = []
    for name in FILES:
        stamp = root / "sources" / f"{name}.spec"
        if not ((root / "sources" / name).exists() and stamp.exists()
                and stamp.read_text() == camera_stamp(name, seconds)):
            stamp.unlink(missing_ok=True)
            missing.append(name)
    media = BenchMedia(root)
    if missing:
        t0 = time.perf_counter()
        # spawn: never fork a process that may already run FFmpeg threads.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=len(missing), mp_context=ctx) as pool:
            made = [f.result() for f in
                    [pool.submit(make_camera, root, n, seconds) for n in missing]]
        print(f"\n[bench-4k] made {len(made)} 4K cameras ({seconds} s each) in "
              f"{time.perf_counter() - t0:.1f}s under {root / 'sources'}")
        for name, clip_mbit, file_mbit in made:
            print(f"[bench-4k]   {name}: clip video {clip_mbit:.1f} Mbit/s, "
                  f"camera file {file_mbit:.1f} Mbit/s")
    rates = bitrates(media, seconds)
    print("[bench-4k] cameras: " + ", ".join(f"{n} {r:.1f} Mbit/s" for n, r in rates.items())
          + f"; {media.total_bytes / 1e9:.2f} GB in all")
    warm_page_cache(media.path(n) for n in FILES)
    return media
