"""``cutfarm demo``: three small sample cameras and a multicam config, rendered via the API."""

from __future__ import annotations

import math
import uuid
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

CAMERAS = (("demo_cam1_wide.mp4", (40, 90, 200)), ("demo_cam2_host.mp4", (200, 80, 40)),
           ("demo_cam3_guest.mp4", (40, 170, 80)))
SECONDS = 12
FPS = 30
WIDTH, HEIGHT = 640, 360
RATE = 48000


def make_camera(path: Path, color: tuple[int, int, int], freq: float) -> None:
    """A camera file: moving bar over a colour, a tone with a click every second."""
    tmp = path.with_name(f".{path.name}.partial")
    with av.open(str(tmp), "w", format="mp4") as out:
        v = out.add_stream("libx264", rate=FPS)
        v.width, v.height, v.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        v.options = {"preset": "veryfast", "crf": "23",
                     "x264-params": "keyint=60:min-keyint=60:scenecut=0:bframes=2"}
        a = out.add_stream("aac", rate=RATE)
        a.layout = "stereo"
        base = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
        base[:] = color
        for n in range(SECONDS * FPS):
            img = base.copy()
            x = (n * 8) % WIDTH
            img[:, x:x + 24] = 255
            img[HEIGHT - 40:, : int(WIDTH * n / (SECONDS * FPS))] = 230  # a progress strip
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = n
            frame.time_base = Fraction(1, FPS)
            out.mux(v.encode(frame))
        out.mux(v.encode(None))
        t = np.arange(SECONDS * RATE) / RATE
        tone = 0.1 * np.sin(2 * math.pi * freq * t)
        tone[(np.arange(t.size) % RATE) < 96] = 0.8
        samples = np.stack([tone, tone]).astype(np.float32)
        for i in range(0, samples.shape[1], 1024):
            chunk = np.ascontiguousarray(samples[:, i:i + 1024])
            af = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
            af.sample_rate = RATE
            af.pts = i
            af.time_base = Fraction(1, RATE)
            out.mux(a.encode(af))
        out.mux(a.encode(None))
    tmp.replace(path)


def prepare_demo(media_root: Path) -> dict[str, Any]:
    """Write the sample cameras (once) and return an editor config cutting between them."""
    sources = media_root / "sources"
    sources.mkdir(parents=True, exist_ok=True)
    for (name, color), freq in zip(CAMERAS, (220.0, 330.0, 440.0), strict=True):
        if not (sources / name).exists():
            make_camera(sources / name, color, freq)
    switches = [(0, 0.0), (1, 1.7), (2, 3.2), (0, 5.05), (1, 7.4), (2, 9.0), (0, 10.3)]
    segments = []
    for k, (cam, t) in enumerate(switches):
        end = switches[k + 1][1] if k + 1 < len(switches) else 11.5
        segments.append({"sourceIndex": cam, "startTime": t, "endTime": end,
                         "audioFromSource": True})
    job_id = f"export-demo-{uuid.uuid4().hex[:8]}"
    return {
        "version": 1, "id": job_id, "projectId": "demo", "projectName": "cutfarm demo",
        "createdAt": "2026-01-01T00:00:00.000Z",
        "sources": [{"id": f"media-{i}", "name": name, "filePath": name, "width": WIDTH,
                     "height": HEIGHT, "duration": SECONDS, "fps": FPS, "hasAudio": True}
                    for i, (name, _) in enumerate(CAMERAS)],
        "segments": segments,
        "output": {"filePath": f"exports/{job_id}/output.mp4", "format": "mp4",
                   "width": WIDTH, "height": HEIGHT, "fps": FPS, "codec": "copy",
                   "includeAudio": True},
        "status": "pending",
    }
