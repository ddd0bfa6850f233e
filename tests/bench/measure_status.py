"""Measure the CPU cost of GET /api/export/{id}/status (issue 12).

    .venv/bin/python tests/bench/measure_status.py \
        --rate 150 --seconds 20 [--streams 20] [--churn 20]

Starts a local Ray (2 CPUs) + the Serve app (like tests/http_support.running_api), creates
10 jobs straight on the status actor and keeps them "running" (a thread reports work on them
``--churn`` times a second, like the progress of 10 exports), then a separate process fires
``--rate`` status GETs a second for ``--seconds`` (httpx AsyncClient, open loop) while
``--streams`` SSE streams stay open. Prints p50/p99 and the CPU seconds that the Serve
replica, the proxy and the status actor spent per status request (from /proc/<pid>/stat).
``MEASURE_DUMP=path`` also writes every status request's (start, latency) there: slow
answers that come in bursts are the replica not being scheduled, not slow handlers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

JOBS = 10
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray_processes() -> dict[str, list[int]]:
    """This process's own Ray processes by kind (other agents run Ray clusters too)."""
    from tests.procs import descendants  # main() has put the repository on sys.path

    found: dict[str, list[int]] = {}
    for pid in descendants(os.getpid()):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(
                errors="replace")
        except OSError:
            continue
        for prefix in ("ray::ServeReplica", "ray::StatusActor", "ray::ProxyActor",
                       "ray::Coordinator"):
            if cmd.startswith(prefix):
                found.setdefault(prefix[5:], []).append(pid)
    return found


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / TICK


# --------------------------------------------------------------------------- load process


class RawPool:
    """Keep-alive HTTP/1.1 connections driven by hand: a load generator that costs a few
    tens of microseconds per request (httpx costs milliseconds, and on 2 cores the client
    then competes with the server it measures)."""

    def __init__(self, host: str, port: int, size: int) -> None:
        self.host, self.port, self.size = host, port, size
        self.idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue())

    async def open(self) -> None:
        for _ in range(self.size):
            self.idle.put_nowait(await asyncio.open_connection(self.host, self.port))

    async def get(self, path: str) -> int:
        reader, writer = await self.idle.get()
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
        except Exception:
            writer.close()
            reader, writer = await asyncio.open_connection(self.host, self.port)
            raise
        finally:
            self.idle.put_nowait((reader, writer))
        return status


async def load(base: str, ids: list[str], rate: float, seconds: float, streams: int,  # noqa: C901
               raw: bool = False) -> None:
    import httpx

    lat: list[float] = []
    stamps: list[tuple[float, float]] = []
    errors: list[str] = []
    events = 0

    host, port = base.rsplit("/", 1)[1].split(":")
    pool = RawPool(host, int(port), 64)

    async def one(client: httpx.AsyncClient, job_id: str) -> None:
        t0 = time.perf_counter()
        try:
            if raw:
                code = await pool.get(f"/api/export/{job_id}/status")
            else:
                code = (await client.get(f"/api/export/{job_id}/status")).status_code
        except (httpx.HTTPError, OSError, asyncio.IncompleteReadError) as exc:
            errors.append(type(exc).__name__)
            return
        lat.append(time.perf_counter() - t0)
        stamps.append((t0, lat[-1]))
        if code != 200:
            errors.append(f"HTTP {code}")

    async def stream(client: httpx.AsyncClient, job_id: str, until: float) -> None:
        nonlocal events
        with contextlib.suppress(httpx.HTTPError):
            async with client.stream("GET", f"/api/export/{job_id}/events",
                                     timeout=httpx.Timeout(30, read=20)) as r:
                async for line in r.aiter_lines():
                    events += line.startswith("data:")
                    if time.monotonic() > until:
                        return

    limits = httpx.Limits(max_connections=400, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        if raw:
            await pool.open()
        for job_id in ids:  # warm up connections and the replica
            await one(client, job_id)
        lat.clear()
        until = time.monotonic() + seconds
        sse = [asyncio.create_task(stream(client, ids[n % len(ids)], until))
               for n in range(streams)]
        print(json.dumps({"phase": "start"}), flush=True)
        cpu0 = time.process_time()
        tasks = []
        start = time.monotonic()
        k = 0
        while time.monotonic() < until:
            due = start + k / rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            tasks.append(asyncio.create_task(one(client, ids[k % len(ids)])))
            k += 1
        await asyncio.gather(*tasks)
        print(json.dumps({"phase": "end"}), flush=True)
        client_cpu = time.process_time() - cpu0
        for t in sse:
            t.cancel()
    lat.sort()

    if os.environ.get("MEASURE_DUMP"):
        Path(os.environ["MEASURE_DUMP"]).write_text(json.dumps(stamps))

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else float("nan")

    print(json.dumps({"n": len(lat), "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99),
                      "max": pct(1.0), "errors": errors[:10], "n_errors": len(errors),
                      "events": events, "client_cpu": client_cpu}), flush=True)


# --------------------------------------------------------------------------- app process


def churn(status: Any, ids: list[str], per_second: float, stop: threading.Event) -> None:
    """Progress reports on the jobs, like running exports' pieces send them."""
    n = 0
    while not stop.is_set() and per_second > 0:
        job_id = ids[n % len(ids)]
        status.report_work.remote(job_id, "piece-0", n * 1000, 0, 0)
        n += 1
        stop.wait(1.0 / per_second)


def keep_exporting(base: str, n: int, stop: threading.Event, submits: list[float],
                   errors: list[str], once: bool = False) -> None:
    """Keep ``n`` real exports (full HEVC re-encodes, like the load benchmark) unfinished."""
    import httpx

    submitted: list[str] = []
    k = 0
    with httpx.Client(base_url=base, timeout=60) as client:
        while not stop.is_set():
            active = sum(client.get(f"/api/export/{j}/status").json()["status"]
                         in ("pending", "processing") for j in submitted[-2 * n:])
            for _ in range(n - active):
                job_id = f"export-real-{k:04d}"
                k += 1
                cfg = {"version": 1, "id": job_id, "projectName": "load",
                       "sources": [{"filePath": "h264_a.mp4"}, {"filePath": "h264_b.mp4"}],
                       "segments": [{"sourceIndex": 0, "startTime": 0.0, "endTime": 3.0},
                                    {"sourceIndex": 1, "startTime": 3.0, "endTime": 6.0}],
                       "output": {"format": "mp4", "codec": "h265"}}
                t0 = time.perf_counter()
                r = client.post("/api/export", json=cfg)
                submits.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors.append(f"submit HTTP {r.status_code}")
                submitted.append(job_id)
            if once:
                return
            stop.wait(0.5)


def main() -> None:  # noqa: C901 -- one flat script of options
    p = argparse.ArgumentParser()
    p.add_argument("--rate", type=float, default=150)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--streams", type=int, default=0)
    p.add_argument("--churn", type=float, default=20)
    p.add_argument("--load", nargs=3, metavar=("BASE", "IDS", "STREAMS"))
    p.add_argument("--exports", type=int, default=0,
                   help="real exports kept running (full re-encodes)")
    p.add_argument("--preset", default="medium", help="x264/x265 preset of the exports")
    p.add_argument("--once", action="store_true",
                   help="submit the exports once, do not replace finished ones")
    p.add_argument("--raw", action="store_true",
                   help="a hand-driven HTTP/1.1 client instead of httpx for the polls")
    p.add_argument("--direct", action="store_true",
                   help="Serve's direct ingress (serve_app/ingress.py), no proxy hop")
    args = p.parse_args()
    if args.load:
        base, ids, streams = args.load
        asyncio.run(load(base, ids.split(","), args.rate, args.seconds, int(streams),
                         args.raw))
        return

    import ray
    from ray import serve

    sys.path.insert(0, str(Path.cwd()))
    from cluster.api import LOCAL_RAY_SYSTEM_CONFIG
    from cluster.coordinator import STATUS_NAME
    from cluster.jobs import JobState
    from cluster.settings import MediaRoot, Settings
    from serve_app.app import build_app

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    root = Path(tempfile.mkdtemp(prefix="cutfarm-measure-"))
    (root / "sources").mkdir()
    if args.exports:
        from tests import mediagen as mg
        from tests.conftest import CAMERAS

        for name in ("h264_a.mp4", "h264_b.mp4"):
            mg.make_camera(root / "sources" / name, CAMERAS[name])
    port = free_port()
    proxy_port = port
    if args.direct:
        from serve_app.ingress import direct_ingress_env

        os.environ.update(direct_ingress_env(port))
        proxy_port = free_port()
    settings = Settings(media_roots=(MediaRoot(root),), namespace="measure", port=port,
                        **({"max_concurrent_jobs": args.exports, "preset": args.preset}
                           if args.exports else {}))
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             logging_level="WARNING", _system_config=LOCAL_RAY_SYSTEM_CONFIG)
    stop = threading.Event()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": proxy_port})
        serve.run(build_app(settings), name="cutfarm", route_prefix="/", blocking=False)
        base = f"http://127.0.0.1:{port}"
        import httpx

        deadline = time.monotonic() + 90
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/api/health", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("app not healthy")
            time.sleep(0.2)
        status = ray.get_actor(STATUS_NAME, namespace="measure")
        ids = [f"export-measure-{i}" for i in range(JOBS)]
        for job_id in ids:
            cfg = {"version": 1, "id": job_id, "sources": [], "segments": []}
            ray.get(status.create.remote(job_id, cfg, 0, []))
            ray.get(status.update.remote(job_id, {
                "status": JobState.PROCESSING, "stage": "rendering",
                "bytes_total": 10**12, "message": "Re-encoding cut 1 of 3"}))
        threading.Thread(target=churn, args=(status, ids, args.churn, stop),
                         daemon=True).start()
        submits: list[float] = []
        submit_errors: list[str] = []
        t_submit, t_submit_wall = time.monotonic(), time.time()
        if args.exports:
            threading.Thread(target=keep_exporting, daemon=True, args=(
                base, args.exports, stop, submits, submit_errors, args.once)).start()
            time.sleep(5)
        for job_id in ids:  # the replica's first polls (start its status cache, if any)
            httpx.get(f"{base}/api/export/{job_id}/status", timeout=10)
        time.sleep(2)
        procs = ray_processes()
        # The idle cost (churn, gauges, feeds) over as long as the load runs.
        idle0 = {k: cpu_seconds(v) for k, v in procs.items()}
        time.sleep(args.seconds)
        idle = {k: cpu_seconds(v) - idle0[k] for k, v in procs.items()}
        cmd = [sys.executable, __file__, "--rate", str(args.rate), "--seconds",
               str(args.seconds), "--load", base, ",".join(ids), str(args.streams),
               *(["--raw"] if args.raw else [])]
        child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        before: dict[str, float] = {}
        after: dict[str, float] = {}
        result: dict[str, Any] = {}
        for line in child.stdout:
            msg = json.loads(line)
            if msg.get("phase") == "start":
                before = {k: cpu_seconds(v) for k, v in procs.items()}
                load_start = time.monotonic()
            elif msg.get("phase") == "end":
                after = {k: cpu_seconds(v) for k, v in procs.items()}
                load_end = time.monotonic()
            else:
                result = msg
        child.wait()
        n = max(1, result.get("n", 1))
        print(f"rate {args.rate}/s for {args.seconds}s, {args.streams} SSE streams, "
              f"churn {args.churn} changes/s: n={result.get('n')} p50 "
              f"{result.get('p50'):.1f} ms p90 {result.get('p90'):.1f} ms p99 "
              f"{result.get('p99'):.1f} ms max {result.get('max'):.1f} ms errors "
              f"{result.get('n_errors')} {result.get('errors')} events {result.get('events')}"
              f"; client CPU {result.get('client_cpu', 0):.2f} s")
        if args.exports:
            jobs = httpx.get(f"{base}/api/export", params={"limit": 1000}, timeout=30).json()
            states = Counter(j["status"] for j in jobs["jobs"]
                             if j["jobId"].startswith("export-real"))
            finished = [j["updatedAt"] for j in jobs["jobs"]
                        if j["jobId"].startswith("export-real") and j["status"] == "completed"]
            print(f"  real exports at the end: {dict(states)}; load window ran "
                  f"{load_start - t_submit:.0f}-{load_end - t_submit:.0f} s after the first "
                  f"submit; completions at "
                  f"{sorted(round(f - t_submit_wall) for f in finished)} s")
        # The first submits start the load on a cold service; the rest meet it running.
        for label, part in (("first submits", submits[:args.exports]),
                            ("submit", submits[args.exports:])):
            if part:
                ordered = sorted(part)
                p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
                print(f"  {label} n={len(ordered)} p50 {ordered[len(ordered) // 2] * 1000:.1f}"
                      f" ms p99 {p99 * 1000:.1f} ms max {ordered[-1] * 1000:.1f} ms")
        if submit_errors:
            print(f"  submit errors {submit_errors[:5]}")
        for key in sorted(procs):
            used = after.get(key, 0) - before.get(key, 0)
            print(f"  {key:14} pids {procs[key]}: {used:6.2f} CPU s under load, "
                  f"{idle[key]:5.2f} idle; {(used - idle[key]) / n * 1000:6.3f} ms per "
                  "status request")
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
