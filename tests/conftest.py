"""Shared fixtures: one media root of generated, stamped camera files per test session."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import pytest

from render import objectstore as obs
from tests import mediagen as mg

#: name -> spec. Camera ids are distinct so a wrong source shows up as a wrong stamp.
CAMERAS: dict[str, mg.CameraSpec] = {
    "h264_a.mp4": mg.CameraSpec(camera=1, codec="h264", seconds=6, gop=30, bframes=2),
    "h264_b.mp4": mg.CameraSpec(
        camera=2,
        codec="h264",
        seconds=6,
        gop=30,
        bframes=3,
        crf=30,
        x264_params="ref=1:weightp=0:8x8dct=0",
    ),
    "hevc_open.mp4": mg.CameraSpec(
        camera=3, codec="hevc", seconds=6, gop=30, bframes=2, open_gop=True
    ),
    "hevc_b.mp4": mg.CameraSpec(camera=4, codec="hevc", seconds=6, gop=24, bframes=3, crf=30),
    "ntsc.mp4": mg.CameraSpec(
        camera=5, codec="h264", seconds=6, fps=Fraction(30000, 1001), gop=30, bframes=2
    ),
    "hevc10.mp4": mg.CameraSpec(
        camera=6, codec="hevc", seconds=4, gop=30, bframes=2, pix_fmt="yuv420p10le"
    ),
    "h264_640.mp4": mg.CameraSpec(camera=7, codec="h264", width=640, height=360, seconds=6),
    "silent.mp4": mg.CameraSpec(camera=8, codec="h264", seconds=6, audio=False),
    "phone_vfr.mp4": mg.CameraSpec(camera=9, codec="h264", seconds=6, vfr=True, gop=30),
    "h264_10bit.mp4": mg.CameraSpec(camera=10, codec="h264", seconds=4, pix_fmt="yuv420p10le"),
    "obs.mkv": mg.CameraSpec(
        camera=11, codec="h264", seconds=3, container="mkv", audio_codec="opus"
    ),
}


class MediaRoot:
    def __init__(self, root: Path, media: dict[str, mg.GeneratedMedia]) -> None:
        self.root = root
        self.media = media

    @property
    def sources(self) -> Path:
        return self.root / "sources"

    def camera(self, name: str) -> int:
        return self.media[name].spec.camera


def _remux(src: Path, dst: Path, fmt: str) -> None:
    """The same camera in a container the engine does not index (MPEG-TS)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", format=fmt) as out:
        vin = inp.streams.video[0]
        vout = out.add_stream_from_template(vin)
        for packet in inp.demux(vin):
            if packet.dts is None:
                continue
            packet.stream = vout
            out.mux(packet)


@pytest.fixture(scope="session")
def media_root(tmp_path_factory: pytest.TempPathFactory) -> MediaRoot:
    root = tmp_path_factory.mktemp("media")
    (root / "sources").mkdir()
    media = {name: mg.make_camera(root / "sources" / name, spec) for name, spec in CAMERAS.items()}
    src = root / "sources"
    mg.truncate_copy(src / "h264_a.mp4", src / "truncated.mp4", 0.6)
    mg.make_not_a_video(src / "notes.mp4", kind="text")
    mg.make_not_a_video(src / "voice.wav", kind="wav")
    _remux(src / "h264_a.mp4", src / "camera.ts", "mpegts")
    (root / "secret.mp4").write_bytes((src / "h264_a.mp4").read_bytes())
    (src / "escape.mp4").symlink_to(root / "secret.mp4")
    return MediaRoot(root, media)


#: The fake store's secret key: tests check that it never shows in a message.
S3_SECRET = "not-a-real-secret-but-never-print-it"


# -- a real S3-compatible server (moto in server mode, over HTTP) --------------------------


@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log_path = tmp_path_factory.mktemp("moto") / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
            stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            found = re.search(rb"Running on (http://127\.0\.0\.1:\d+)", log_path.read_bytes())
            if found:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not start: {log_path.read_text()}")
            time.sleep(0.05)
        yield found.group(1).decode()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def aws_env(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """boto3's standard configuration, from the environment only, pointing at moto."""
    nowhere = tmp_path_factory.mktemp("aws") / "none"
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("AWS_"):
                mp.delenv(name)
        mp.setenv("AWS_ENDPOINT_URL", moto_endpoint)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
        mp.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_CONFIG_FILE", str(nowhere))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(nowhere))
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        obs.clear_clients()
        yield
        obs.clear_clients()
