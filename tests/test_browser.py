"""A real browser plays an export to the end: Chromium decodes every frame, no error.

FFmpeg is forgiving; browsers are not (Chrome refused our first multi-description tracks).
Skipped when no Chromium is installed (.ci/run installs Debian's).
"""

from __future__ import annotations

import html
import json
import shutil
import subprocess
import threading
import time
import urllib.request
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from render.config import parse_config
from render.engine import execute, prepare
from tests.conftest import MediaRoot
from tests.http_support import free_port
from tests.test_engine import MULTICAM, make_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")

PAGE = """<!doctype html><html><body>
<video id="v" src="out.mp4" muted playsinline></video>
<script>
const v = document.getElementById('v');
v.addEventListener('error', () => { document.title = JSON.stringify(
  {error: v.error && v.error.code, message: v.error && v.error.message}); });
v.addEventListener('ended', () => { const q = v.getVideoPlaybackQuality();
  document.title = JSON.stringify({ended: true, duration: v.duration,
    decoded: q.totalVideoFrames, width: v.videoWidth, height: v.videoHeight}); });
v.play().catch(e => { document.title = JSON.stringify({error: 'play', message: String(e)}); });
</script></body></html>"""


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


def play_in_chromium(folder: Path, timeout: float = 90.0) -> dict[str, Any]:
    (folder / "index.html").write_text(PAGE)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = free_port()
    assert CHROMIUM is not None
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={folder / 'profile'}",
         "--autoplay-policy=no-user-gesture-required", f"--remote-debugging-port={port}",
         f"http://127.0.0.1:{server.server_port}/index.html"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=5) as r:
                    pages = [p for p in json.load(r) if p.get("type") == "page"]
            except OSError:
                continue
            title = html.unescape(pages[0]["title"]) if pages else ""
            if title.startswith("{"):
                result: dict[str, Any] = json.loads(title)
                return result
        raise AssertionError("the video neither ended nor failed in Chromium")
    finally:
        proc.kill()
        proc.wait()
        server.shutdown()
        server.server_close()


def test_chromium_plays_a_multicam_export_to_the_end(media_root: MediaRoot,
                                                      tmp_path: Path) -> None:
    # Two cameras with different SPS/PPS and re-encoded cuts between them.
    cfg = make_config(["h264_a.mp4", "h264_b.mp4"], MULTICAM)
    prep = prepare(parse_config(cfg), [media_root.root])
    execute(prep, tmp_path / "out.mp4")
    result = play_in_chromium(tmp_path)
    assert result.get("ended"), result
    assert result["decoded"] == prep.plan.frame_count
    assert result["duration"] == pytest.approx(float(prep.plan.duration), abs=0.05)
    assert (result["width"], result["height"]) == (320, 180)
