"""A soak run: stamped-media jobs over HTTP on a multi-node local Ray while a chaos loop
kills our processes at random (SIGKILL by pid), and the API is restarted once.

Used by ``tests/test_soak.py`` (a short run in the default suite) and
``tests/bench/test_bench_soak.py`` (the long one, on request). Nothing here is faked: the
Serve app, the actors, the tasks and the kills are real; outputs are decoded frame by frame.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import ray
from ray import serve
from ray.cluster_utils import Cluster
from ray.util.state import list_actors, list_tasks

from cluster.settings import MediaRoot, Settings
from tests import mediagen as mg
from tests.cluster_support import new_namespace
from tests.conftest import MediaRoot as Media
from tests.http_support import free_port

CAMERAS = ("h264_a.mp4", "h264_b.mp4")
TERMINAL = ("completed", "failed", "cancelled")
KINDS = ("piece", "audio", "concat", "coordinator", "status")


@dataclass
class SoakReport:
    jobs: int = 0
    states: Counter[str] = field(default_factory=Counter)
    kills: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    interruptions: int = 0
    wall_seconds: float = 0.0
    max_latency: float = 0.0
    problems: list[str] = field(default_factory=list)
    memory_mb: dict[str, tuple[float, float]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"jobs {self.jobs}: " + ", ".join(f"{k} {v}" for k, v in sorted(
                   self.states.items())),
               "kills: " + (", ".join(f"{k} {v}" for k, v in sorted(self.kills.items()))
                            or "none"),
               f"Ray task retries {self.retries}, jobs restarted after a coordinator death "
               f"{self.interruptions}",
               f"wall {self.wall_seconds:.1f} s, max job latency {self.max_latency:.1f} s"]
        out += [f"{name} RSS first third {a:.0f} MB, last third {b:.0f} MB"
                for name, (a, b) in self.memory_mb.items()]
        out += [f"PROBLEM {p}" for p in self.problems]
        return out


@contextlib.contextmanager
def soak_cluster(root: Path, worker_nodes: int = 2) -> Iterator[tuple[Settings, str]]:
    """A head and ``worker_nodes`` workers (1 CPU each), the Serve app on a free port."""
    from serve_app.app import build_app

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(worker_nodes):
        c.add_node(num_cpus=1)
    ray.init(address=c.address)
    c.wait_for_nodes()
    port = free_port()
    settings = Settings(media_roots=(MediaRoot(root),), namespace=new_namespace(), port=port,
                        max_concurrent_jobs=2, preset="ultrafast")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(settings), name="cutfarm", route_prefix="/", blocking=False)
        yield settings, f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
        c.shutdown()


def job_config(job_id: str, rng: random.Random) -> dict[str, Any]:
    """3-5 segments alternating cameras, cut mid-GOP at random times."""
    points = sorted(rng.sample([round(x * 0.1, 1) for x in range(3, 57)], rng.randint(3, 5)))
    spans = list(zip([0.2, *points], [*points, 5.8], strict=True))
    return {"version": 1, "id": job_id, "projectName": job_id,
            "sources": [{"filePath": f} for f in CAMERAS],
            "segments": [{"sourceIndex": i % 2, "startTime": a, "endTime": b}
                         for i, (a, b) in enumerate(spans)],
            "output": {"format": "mp4", "codec": "copy"}}


class Http:
    """The editor's calls, riding out an API restart (connection errors and 5xx)."""

    def __init__(self, base: str) -> None:
        self.client = httpx.Client(base_url=base, timeout=60)

    def __enter__(self) -> Http:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        deadline = time.monotonic() + 120
        while True:
            try:
                r = self.client.request(method, path, **kw)
                if r.status_code < 500:
                    return r
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{method} {path} kept failing")
            time.sleep(0.5)


#: (pid, what it works for): a concat actor is one job's, so kills can be spread over jobs.
Victim = tuple[int, str]
#: A job survives CONCAT_ATTEMPTS - 1 deaths of its concat actor; the chaos stays below that
#: so a failure means a bug, not a retry budget spent on purpose.
CONCAT_KILLS_PER_JOB = 2


def _pid_of_actor(class_name: str) -> list[Victim]:
    actors = list_actors(filters=[("class_name", "=", class_name), ("state", "=", "ALIVE")],
                         limit=1000, raise_on_missing_output=False)
    return [(int(a.pid), str(a.name or a.pid))  # type: ignore[attr-defined]
            for a in actors if a.pid]  # type: ignore[attr-defined]


def _pids_of_tasks(match: Callable[[str], bool]) -> list[Victim]:
    tasks = list_tasks(filters=[("state", "=", "RUNNING")], limit=1000,
                       raise_on_missing_output=False)
    return [(int(t.worker_pid), str(t.name)) for t in tasks  # type: ignore[attr-defined]
            if t.worker_pid and match(str(t.name))]  # type: ignore[attr-defined]


def victims(kind: str) -> list[Victim]:
    if kind == "piece":
        return _pids_of_tasks(lambda n: ":seg" in n)
    if kind == "audio":
        return _pids_of_tasks(lambda n: n.endswith(":audio"))
    if kind == "concat":
        return _pid_of_actor("ConcatActor")
    if kind == "coordinator":
        return _pid_of_actor("Coordinator")
    return _pid_of_actor("StatusActor")


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Chaos(threading.Thread):
    """Every ``every`` seconds, SIGKILL one process of a random kind that has one."""

    def __init__(self, every: float, rng: random.Random, limits: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.every = every
        self.rng = rng
        self.limits = limits
        self.kills: Counter[str] = Counter()
        self.per_job: Counter[str] = Counter()
        self.stop = threading.Event()
        self.memory: dict[str, list[tuple[float, float]]] = {"coordinator": [], "status": []}

    def run(self) -> None:
        while not self.stop.wait(self.every):
            for name in self.memory:
                for pid, _ in victims(name):
                    self.memory[name].append((time.monotonic(), rss_mb(pid)))
            # One kill a tick, its kind chosen evenly among the kinds that have a process
            # now: a kind that is always there (a concat actor lives as long as its job)
            # must not take every kill, nor a short-lived one (a piece) none.
            present = {}
            for kind in KINDS:
                if self.kills[kind] < self.limits.get(kind, 1 << 30):
                    targets = [v for v in victims(kind) if kind != "concat"
                               or self.per_job[v[1]] < CONCAT_KILLS_PER_JOB]
                    if targets:
                        present[kind] = targets
            if present:
                kind = self.rng.choice(sorted(present))
                pid, owner = self.rng.choice(present[kind])
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    self.kills[kind] += 1
                    if kind == "concat":
                        self.per_job[owner] += 1


def run_soak(root: Path, media: Media, *, jobs: int, in_flight: int, kill_every: float,
             cancel_every: int, seed: int, limits: dict[str, int]) -> SoakReport:
    """Submit ``jobs`` jobs (at most ``in_flight`` unfinished at a time), cancel every
    ``cancel_every``-th one mid-run, kill at random, restart the API once; check all."""
    from serve_app.app import build_app

    (root / "sources").mkdir(parents=True, exist_ok=True)
    for name in CAMERAS:
        if not (root / "sources" / name).exists():
            (root / "sources" / name).hardlink_to(media.sources / name)
    rng = random.Random(seed)
    report = SoakReport(jobs=jobs)
    with soak_cluster(root) as (settings, base), Http(base) as http:
        chaos = Chaos(kill_every, rng, limits)
        started = time.monotonic()
        chaos.start()
        expected: dict[str, list[tuple[int, int]]] = {}
        to_cancel: set[str] = set()
        pending: list[str] = []
        restarted = False
        try:
            for n in range(jobs):
                job_id = f"export-soak-{n:03d}"
                cfg = job_config(job_id, rng)
                plan = http.call("POST", "/api/export/plan", json=cfg).json()
                expected[job_id] = [(media.camera(CAMERAS[s["sourceIndex"]]), f)
                                    for s in plan["segments"]
                                    for f in range(s["firstFrame"], s["lastFrame"] + 1)]
                r = http.call("POST", "/api/export", json=cfg)
                assert r.status_code == 200, r.text
                pending.append(job_id)
                if cancel_every and n % cancel_every == cancel_every - 1:
                    to_cancel.add(job_id)
                while len(pending) >= in_flight:
                    pending = _advance(http, pending, to_cancel)
                if not restarted and n >= jobs // 2:
                    # The API goes away and comes back; the coordinator keeps the jobs.
                    serve.delete("cutfarm")
                    serve.run(build_app(settings), name="cutfarm", route_prefix="/",
                              blocking=False)
                    restarted = True
            deadline = time.monotonic() + 900
            while pending and time.monotonic() < deadline:
                pending = _advance(http, pending, to_cancel)
            report.problems += [f"{j} never finished" for j in pending]
        finally:
            chaos.stop.set()
            chaos.join()
        report.wall_seconds = time.monotonic() - started
        report.kills = chaos.kills
        for name, samples in chaos.memory.items():
            if len(samples) >= 3:
                third = len(samples) // 3
                report.memory_mb[name] = (max(m for _, m in samples[:third]),
                                          max(m for _, m in samples[-third:]))
        _check(http, root, expected, to_cancel, report)
        report.retries = sum(1 for t in list_tasks(limit=10_000, raise_on_missing_output=False)
                             if int(t.attempt_number) > 0)  # type: ignore[attr-defined]
    return report


def _advance(http: Http, pending: list[str], to_cancel: set[str]) -> list[str]:
    still = []
    for job_id in pending:
        body = http.call("GET", f"/api/export/{job_id}/status").json()
        if body["status"] in TERMINAL:
            continue
        if job_id in to_cancel and body["status"] == "processing":
            http.call("DELETE", f"/api/export/{job_id}")
            to_cancel.discard(job_id)
        still.append(job_id)
    if still:
        time.sleep(0.3)
    return still


def _check(http: Http, root: Path, expected: dict[str, list[tuple[int, int]]],
           never_cancelled: set[str], report: SoakReport) -> None:
    for job_id, want in expected.items():
        body = http.call("GET", f"/api/export/{job_id}/status").json()
        state = body["status"]
        report.states[state] += 1
        report.interruptions += body.get("interruptedAt") is not None
        job_dir = root / "exports" / job_id
        files = sorted(p.name for p in job_dir.iterdir())
        if state == "completed":
            if files != ["config.json", "output.mp4", "status.json"]:
                report.problems.append(f"{job_id}: files {files}")
            decoded = mg.decode_video(job_dir / "output.mp4")
            if decoded.errors or decoded.stamps != want:
                report.problems.append(f"{job_id}: output is not frame-exact")
        elif state == "cancelled":
            if job_id in never_cancelled:
                report.problems.append(f"{job_id}: cancelled but nobody cancelled it")
            if files != ["config.json", "status.json"]:
                report.problems.append(f"{job_id}: cancelled, files {files}")
        else:
            report.problems.append(f"{job_id}: {state}: {body.get('error')}")
        status_file = http.call("GET", f"/api/export/{job_id}/status").json()
        created = float(status_file.get("createdAt") or 0)
        updated = float(status_file.get("updatedAt") or 0)
        report.max_latency = max(report.max_latency, updated - created)
    stray = [p.name for p in (root / "exports").iterdir()
             if p.name not in expected and not p.name.startswith(".")]
    report.problems += [f"stray entry in exports/: {name}" for name in stray]
