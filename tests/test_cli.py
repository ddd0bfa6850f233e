"""The README's way to run the service: `cutfarm serve`, then `cutfarm demo` and friends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import mediagen as mg
from tests.conftest import MediaRoot as Media
from tests.http_support import free_port

CUTFARM = [sys.executable, "-m", "serve_app.cli"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("cli-media")
    port = free_port()
    log = (root / "serve.log").open("w")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen(
        [*CUTFARM, "serve", "--media-root", str(root), "--port", str(port),
         "--ray-address", "local"], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/api/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (root / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "cutfarm serve did not come up"
            time.sleep(0.5)
        yield url, root
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    text = (root / "serve.log").read_text()
    assert f"API        {url}/api/export" in text
    assert proc.returncode == 0, text[-3000:]


def run_cli(*args: str, url: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CUTFARM, *args, "--url", url], capture_output=True, text=True,
                          timeout=timeout, check=False)


def link_camera(root: Path, media_root: Media, name: str = "h264_a.mp4") -> None:
    """Put one of the session's stamped cameras into the server's sources/."""
    src = root / "sources" / name
    if not src.exists():
        src.hardlink_to(media_root.sources / name)


def test_demo_exports_through_the_api(server: tuple[str, Path]) -> None:
    url, root = server
    demo = subprocess.run([*CUTFARM, "demo", "--media-root", str(root), "--url", url],
                          capture_output=True, text=True, timeout=600, check=False)
    assert demo.returncode == 0, demo.stderr + demo.stdout
    line = next(x for x in demo.stdout.splitlines() if x.startswith("the demo export is at"))
    out = Path(line.rsplit(" ", 1)[1])
    assert out.is_file() and out.parent.parent == root / "exports"
    decoded = mg.decode_video(out)
    assert decoded.errors == 0
    assert len(decoded.stamps) == round(11.5 * 30)


def test_submit_wait_download_status_list_cancel(server: tuple[str, Path], media_root: Media,
                                                 tmp_path: Path) -> None:
    url, root = server
    link_camera(root, media_root)
    cfg = {"version": 1, "id": "export-cli", "projectName": "cli",
           "sources": [{"filePath": "h264_a.mp4"}],
           "segments": [{"sourceIndex": 0, "startTime": 0.5, "endTime": 4.5}],
           "output": {"format": "mp4", "codec": "copy"}}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    out = tmp_path / "result.mp4"
    r = run_cli("submit", str(path), "--download", str(out), url=url)
    assert r.returncode == 0, r.stderr
    assert "export-cli: Export job created" in r.stdout
    assert mg.decode_video(out).stamps == [(1, n) for n in range(15, 135)]
    status = run_cli("status", "export-cli", url=url)
    assert json.loads(status.stdout)["status"] == "completed"
    listing = run_cli("list", "--state", "completed", url=url)
    assert "export-cli" in listing.stdout
    missing = run_cli("status", "export-none", url=url)
    assert missing.returncode == 2 and "not found" in missing.stderr
    cancel = run_cli("cancel", "export-cli", url=url)
    assert cancel.returncode == 1 and "cutfarm delete export-cli" in cancel.stderr
    assert (root / "exports" / "export-cli" / "output.mp4").is_file()  # cancel kept it
    delete = run_cli("delete", "export-cli", url=url)
    assert json.loads(delete.stdout)["message"] == "Export deleted"
    assert not (root / "exports" / "export-cli").exists()


def test_submit_reports_typos_as_warnings(server: tuple[str, Path], media_root: Media,
                                          tmp_path: Path) -> None:
    url, root = server
    link_camera(root, media_root)
    cfg = {"version": 1, "id": "export-typo", "sources": [{"filePath": "h264_a.mp4"}],
           "segments": [{"sourceIndex": 0, "startTime": 0.5, "endTime": 1.5,
                         "audioFromSorce": False}]}
    path = tmp_path / "typo.json"
    path.write_text(json.dumps(cfg))
    r = run_cli("submit", str(path), url=url)
    assert r.returncode == 0, r.stderr
    assert ("cutfarm: warning: segments[0].audioFromSorce is not a known field and was "
            "ignored; did you mean 'audioFromSource'?") in r.stderr
    plan = subprocess.run([*CUTFARM, "plan", str(path), "--media-root", str(root)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert plan.returncode == 0, plan.stderr
    assert "did you mean 'audioFromSource'?" in plan.stderr


@pytest.mark.parametrize(("content", "words"), [
    (None, "not found"),
    ("{\"version\": 1, ", "is not valid JSON"),
    ("[1, 2]", "must hold a JSON object"),
    (b"\xff\xfe\x00", "not a text"),
])
def test_submit_bad_files_get_a_sentence_not_a_traceback(
        tmp_path: Path, content: str | bytes | None, words: str) -> None:
    path = tmp_path / "broken.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    # No server is needed: the file is read before anything is sent (port 9 is discard).
    r = run_cli("submit", str(path), url="http://127.0.0.1:9", timeout=60)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("cutfarm: ") and words in r.stderr, r.stderr


def test_help_is_plain_text() -> None:
    r = subprocess.run([*CUTFARM, "--help"], capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 0
    assert "``" not in r.stdout
    assert "cutfarm delete JOB_ID" in r.stdout and "cutfarm status JOB_ID" in r.stdout
