"""`cutfarm serve` as an operator runs it: one per cluster and export root, a clean stop.

Issue 8: a second `serve` attached to the first's Ray, redeployed over it and on exit shut
Serve down for both; SIGTERM dumped stacks, aborted after seconds and left Ray's agents
behind; a job running at the stop resumed silently at the next start.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests import mediagen as mg
from tests.http_support import free_port, stable_port
from tests.procs import descendants

CUTFARM = [sys.executable, "-m", "serve_app.cli"]
#: A transcode to HEVC at 720p: long enough on two cores to be caught mid-run.
SLOW_CAMERA = mg.CameraSpec(camera=12, codec="h264", width=1280, height=720, seconds=8,
                            gop=60)


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def banner_value(self, label: str) -> str:
        line = next(x for x in self.text().splitlines() if x.startswith(f"  {label} "))
        return line[len(label) + 2:].strip()

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 60) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"serve did not stop within {timeout}s:\n{self.text()[-3000:]}"
                                 ) from None


def env_for(home: Path, auth: str | None = "disabled") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "CUTFARM_"))}
    env["HOME"] = str(home)
    if auth is not None:
        env["RAY_AUTH_MODE"] = auth
    return env


def start(root: Path, port: int, env: dict[str, str], *extra: str) -> Server:
    log = root.parent / f"serve-{root.name}-{port}-{time.monotonic_ns()}.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [*CUTFARM, "serve", "--media-root", str(root), "--port", str(port), *extra],
            stdout=fh, stderr=subprocess.STDOUT, env=env)
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + 180
    while "Press Ctrl-C" not in server.text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            listeners = subprocess.run(["ss", "-tanp", f"sport = :{port}"],
                                       capture_output=True, text=True, check=False).stdout
            raise AssertionError(f"serve did not come up:\n{server.text()[-3000:]}\n"
                                 f"sockets on {port}: {listeners}")
        time.sleep(0.3)
    return server


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CUTFARM, *args], capture_output=True, text=True, env=env,
                          timeout=180, check=False)


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/api/health", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def roots(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    home = tmp_path / "home"
    home.mkdir()
    yield home, tmp_path / "media-one", tmp_path / "media-two"


def test_a_second_serve_never_disturbs_the_first(roots: tuple[Path, Path, Path]) -> None:
    home, one, two = roots
    env = env_for(home, auth=None)  # Ray's default: token auth on, token under $HOME
    port = free_port()
    first = start(one, port, env, "--ray-address", "local")
    second: Server | None = None
    try:
        address = first.banner_value("Ray")
        assert f"{home}/.ray/auth_token" in first.banner_value("dashboard")
        assert healthy(first.url)

        # Attached to the same Ray: refused, and the first's app is untouched.
        other_port = free_port()
        r = run(["serve", "--media-root", str(two), "--port", str(other_port),
                 "--ray-address", address], env)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "a cutfarm API is already running on the Ray cluster at" in r.stderr
        assert f"127.0.0.1:{port}" in r.stderr
        assert healthy(first.url)

        # The same export root, even on a Ray of its own: refused (it would resume the
        # first one's jobs).
        r = run(["serve", "--media-root", str(one), "--port", str(free_port()),
                 "--ray-address", "local"], env)
        assert r.returncode == 2 and "cutfarm is already serving" in r.stderr, r.stderr
        assert first.url in r.stderr

        # The same port: refused before anything starts.
        r = run(["serve", "--media-root", str(two), "--port", str(port),
                 "--ray-address", "local"], env)
        assert r.returncode == 2 and f"port {port}" in r.stderr, r.stderr
        assert healthy(first.url)

        # Its own Ray, root and port: an independent second instance.
        second = start(two, other_port, env, "--ray-address", "local")
        assert healthy(second.url) and healthy(first.url)
        assert second.stop() == 0
        second = None
        assert healthy(first.url)
    finally:
        if second is not None:
            second.stop()
        assert first.stop() == 0, first.text()[-3000:]


def _config(job_id: str) -> dict[str, object]:
    return {"version": 1, "id": job_id, "projectName": "interrupted",
            "sources": [{"filePath": "slow.mp4"}],
            "segments": [{"sourceIndex": 0, "startTime": 0.0, "endTime": 8.0}],
            "output": {"format": "mp4", "codec": "h265"}}


def _wait_state(url: str, job_id: str, want: str, timeout: float = 300) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, object] = httpx.get(f"{url}/api/export/{job_id}/status",
                                            timeout=10).json()
        if body["status"] == want and (want != "processing" or body["stage"] == "rendering"):
            return body
        assert body["status"] in ("pending", "processing", want), body
        assert time.monotonic() < deadline, body
        time.sleep(0.1)


def test_sigterm_stops_cleanly_and_the_next_start_resumes(
        roots: tuple[Path, Path, Path]) -> None:
    home, root, _ = roots
    (root / "sources").mkdir(parents=True)
    mg.make_camera(root / "sources" / "slow.mp4", SLOW_CAMERA)
    env = env_for(home)
    port = stable_port()  # the restart below needs it again
    server = start(root, port, env, "--ray-address", "local")
    job_id = "export-interrupted"
    try:
        r = httpx.post(f"{server.url}/api/export", json=_config(job_id), timeout=120)
        assert r.status_code == 200, r.text
        _wait_state(server.url, job_id, "processing")
        tree = descendants(server.proc.pid)
        assert len(tree) >= 3  # GCS, raylet, workers...
    except BaseException:
        server.proc.kill()
        raise
    assert server.stop(signal.SIGTERM) == 0, server.text()[-3000:]
    text = server.text()
    assert "SIGTERM received at" not in text and "SIGABRT" not in text, text[-3000:]
    assert f"interrupted {job_id}: it resumes when cutfarm serve starts again" in text
    deadline = time.monotonic() + 15
    while any(alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [p for p in tree if alive(p)], "Ray processes outlived cutfarm serve"

    job_dir = root / "exports" / job_id
    status = json.loads((job_dir / "status.json").read_text())
    assert status["status"] == "pending" and status["stage"] == "interrupted", status
    assert status["message"].startswith("Interrupted: the server was stopped")
    assert sorted(p.name for p in job_dir.iterdir()) == ["config.json", "status.json"]

    again = start(root, port, env, "--ray-address", "local")
    try:
        assert again.banner_value("resuming") == (
            f"{job_id}: the server was stopped while it ran")
        final = _wait_state(again.url, job_id, "completed")
        assert final["interruptedAt"] == status["interruptedAt"]
        decoded = mg.decode_video(job_dir / "output.mp4")
        assert decoded.errors == 0
        assert decoded.stamps == [(SLOW_CAMERA.camera, n) for n in range(240)]
    finally:
        assert again.stop(signal.SIGINT) == 0, again.text()[-3000:]


def test_dashboard_login_hint_names_where_the_token_is(tmp_path: Path) -> None:
    from serve_app.server import dashboard_login_hint

    assert dashboard_login_hint({}, tmp_path) == (
        f"log in with the token in {tmp_path}/.ray/auth_token; `ray get-auth-token` prints it")
    assert dashboard_login_hint({"RAY_AUTH_TOKEN_PATH": "/run/secrets/ray"}, tmp_path) \
        .startswith("log in with the token in /run/secrets/ray")
    assert "RAY_AUTH_TOKEN" in dashboard_login_hint({"RAY_AUTH_TOKEN": "x"}, tmp_path)
    assert dashboard_login_hint({"RAY_AUTH_MODE": "disabled"}, tmp_path).startswith("no login")


def test_serve_restarts_at_once_on_a_port_with_connections_in_time_wait(
        roots: tuple[Path, Path, Path]) -> None:
    """A browser's idle keep-alive connection, closed by the server as it stops, leaves a
    TIME_WAIT on the server's side of the port for 60 s; a restart must not wait for it."""
    home, root, _ = roots
    env = env_for(home)
    port = stable_port()
    server = start(root, port, env, "--ray-address", "local")
    try:
        conn = socket.create_connection(("127.0.0.1", port), timeout=60)
        conn.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert conn.recv(65536).startswith(b"HTTP/1.1 200")
    finally:
        assert server.stop(signal.SIGTERM) == 0, server.text()[-3000:]
    with conn:
        while conn.recv(65536):  # until the server's FIN, then ours
            pass
    waits = subprocess.run(["ss", "-tanH", "state", "time-wait", f"sport = :{port}"],
                           capture_output=True, text=True, check=True).stdout
    assert waits.strip(), "the server did not close first: nothing to test"
    again = start(root, port, env, "--ray-address", "local")
    try:
        assert healthy(again.url), again.text()[-3000:]
    finally:
        assert again.stop(signal.SIGTERM) == 0, again.text()[-3000:]
