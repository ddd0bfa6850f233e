"""Benchmarks of the Ray cluster (``cluster/``) against the in-process engine, same run.

Skipped in the default test run (``pyproject.toml`` adds ``--benchmark-skip``; the skip is
applied at collection, so neither the media fixture nor Ray ever starts then). Run with::

    .venv/bin/python -m pytest tests/bench/test_bench_cluster.py \
        --benchmark-only -s

Media: the engine benchmarks' three 1280x720 cameras (``tests/bench/benchmedia.py``; set
``CUTFARM_BENCH_MEDIA=/dir`` to reuse them between runs). Every test starts its own local
Ray (``ray.init(address="local", num_cpus=N, include_dashboard=False)``, auth disabled),
connects a cluster in a fresh namespace, and kills the detached actors and shuts Ray down
afterwards. Nothing here asserts on time; ratios are measured in the same run and printed
and stored in ``extra_info``.

1. ``test_distribution_overhead``: the engine benchmark's 20-cut, 59 s multicam edit end to
   end through the cluster on a 2-CPU local Ray (from ``submit_sync`` until a 50 ms poll sees
   ``completed``) vs ``render.engine.prepare`` + ``execute`` in this process with the
   cluster's own piece limits and preset (rounds interleaved). Both outputs must decode to
   the frame stamps the plan selects. Also reports where the cluster's time goes: queueing,
   planning, the encode window and the CPU slots left idle (from ``ray.timeline()``), and
   the CPU seconds each way (this process's threads vs every Ray process's, from /proc).
2. ``test_batch_throughput[1cpu|2cpu]``: a batch of ``BATCH_JOBS`` shorter edits submitted
   concurrently (``max_concurrent_jobs=2``) on a local Ray with 1 and then 2 CPUs: jobs per
   hour for each, and (in the 2-CPU case) the scaling ratio 2-CPU / 1-CPU. Also: the cores
   the Ray processes really used (CPU seconds / makespan) against the CPUs Ray was given,
   and how long one preflight (``plan_sync``, what a submit runs first) takes once every
   CPU slot is busy.

Warnings and errors from the Ray session's logs (worker stderr, core-worker/raylet W/E
lines) are counted and summarised per test, so scheduling trouble shows up beside the
numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import pytest
import ray

from cluster import tasks as cluster_tasks
from cluster.api import CutfarmCluster
from cluster.jobs import JobState, JobStatus
from cluster.settings import MediaRoot, Settings
from render.config import parse_config
from render.engine import Prepared, execute, prepare
from tests import mediagen as mg
from tests.bench.benchmedia import (
    CAMERAS,
    FILES,
    SECONDS,
    BenchMedia,
    make_config,
    median,
    multicam_segments,
    report,
)
from tests.cluster_support import link_sources, new_namespace, shutdown_actors
from tests.procs import proc_table

#: Rounds of benchmark 1 (each: one in-process export and one cluster job, interleaved).
OVERHEAD_ROUNDS = 2
#: Benchmark 2: jobs per batch, and each job's edit (cuts over seconds of program).
BATCH_JOBS = 6
BATCH_SEGMENTS = 6
BATCH_PROGRAM_SECONDS = 17.0
#: A preflight (what a submit runs before queueing) is timed this long into the batch, while
#: every CPU slot is busy (probing holds no CPU slot, but may need a fresh worker process).
PROBE_AFTER_SECONDS = 5.0
MAX_CONCURRENT_JOBS = 2
POLL_SECONDS = 0.05
JOB_TIMEOUT = 600.0
#: Ray workers flush task events about once a second: wait this long before the timeline.
TIMELINE_SETTLE_SECONDS = 1.5

#: Tasks whose CPUs are set per call (cluster.scheduling.piece_tasks), not by the decorator.
PER_CALL_CPUS = {"encode_task": 1.0}
#: The tasks that make a job's output (everything else is planning or probing).
PIECE_TASKS = ("encode_task", "audio_task")


def task_cpus(func: str) -> float | None:
    """CPU slots a cutfarm task holds (None: not one of ``cluster.tasks``' functions).

    Looked up when used, by name, so the benchmark follows cluster/ as its tasks change.
    """
    module, _, name = func.rpartition(".")
    if module != "cluster.tasks":
        return None
    if name in PER_CALL_CPUS:
        return PER_CALL_CPUS[name]
    value = getattr(getattr(cluster_tasks, name, None), "_default_options", {}).get("num_cpus")
    return 1.0 if value is None else float(value)


# --------------------------------------------------------------------------- local Ray


@dataclass
class LocalCluster:
    client: CutfarmCluster
    num_cpus: int
    start_s: float
    logs: Path | None


@contextlib.contextmanager
def local_cluster(num_cpus: int, root: Path) -> Iterator[LocalCluster]:
    """A fresh local Ray with ``num_cpus`` CPUs and a connected cutfarm cluster on ``root``."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():  # ray.init is once per process at a time
        ray.shutdown()
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    client: CutfarmCluster | None = None
    try:
        settings = Settings(media_roots=(MediaRoot(root),), namespace=new_namespace(),
                            max_concurrent_jobs=MAX_CONCURRENT_JOBS)
        client = CutfarmCluster.connect(settings)
        yield LocalCluster(client, num_cpus, time.perf_counter() - t0, _logs_dir())
    finally:
        if client is not None:
            shutdown_actors(client)
        ray.shutdown()


def _logs_dir() -> Path | None:
    """This Ray session's log folder (private API; None if it moved)."""
    with contextlib.suppress(Exception):
        node = ray._private.worker.global_worker.node
        return Path(node.get_logs_dir_path())
    return None


_LOG_NOISE = (
    re.compile(r"^:(job_id|actor_name|task_name):"),  # Ray's per-task stderr markers
    re.compile(r"Quick exit - terminating process immediately"),
    re.compile(r"Disconnecting client due to connection error"),
    re.compile(r"Failed to export metrics to the metrics agent"),
)
_NUMBERS = re.compile(r"[0-9a-f]{16,}|\d+")
_CXX_LEVEL = re.compile(r"^\[[^\]]+ ([WEF]) \d+ \d+\] (?:\(\w+\) )?([\w.]+:\d+): (.*)$")


def scan_logs(logs: Path | None) -> dict[str, Any]:
    """Count warnings/errors in a Ray session's logs: Python stderr of the workers (where
    ``logging`` goes) and W/E/F lines of the core workers and the raylet."""
    if logs is None or not logs.is_dir():
        return {"log_scan": "no log folder found"}
    python: Counter[str] = Counter()
    for f in sorted(logs.glob("worker-*.err")):
        for line in f.read_text(errors="replace").splitlines():
            if line.strip() and not any(p.search(line) for p in _LOG_NOISE):
                python[line.strip()[:160]] += 1
    native: Counter[str] = Counter()
    for f in [*sorted(logs.glob("python-core-worker-*.log")), logs / "raylet.out",
              logs / "gcs_server.out"]:
        if not f.is_file():
            continue
        for line in f.read_text(errors="replace").splitlines():
            m = _CXX_LEVEL.match(line)
            if m and not any(p.search(line) for p in _LOG_NOISE):
                # Strip ids and numbers so repeats of one message count as one kind.
                text = _NUMBERS.sub("#", m[3])[:140]
                native[f"{m[1]} {m[2]}: {text}"] += 1
    return {
        "ray_worker_processes_started": len(list(logs.glob("python-core-worker-*.log"))),
        "log_python_stderr_lines": sum(python.values()),
        "log_python_stderr_first": list(python)[:5],
        "log_native_warnings": sum(n for k, n in native.items() if k[0] == "W"),
        "log_native_errors": sum(n for k, n in native.items() if k[0] in "EF"),
        "log_native_kinds": [f"{n}x {k}" for k, n in native.most_common(6)],
    }


# --------------------------------------------------------------------------- CPU time

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Cpu:
    """CPU seconds so far (all threads): this process, its descendants (the local Ray's
    GCS, raylet and workers; an exited worker counts through its parent's reaped-children
    time), and the whole machine (every process, /proc/stat)."""

    me: float
    ray: float
    machine: float
    wall: float

    @classmethod
    def now(cls) -> Cpu:
        table = proc_table()
        me = os.getpid()
        kids: dict[int, list[int]] = {}
        for pid, (ppid, _) in table.items():
            kids.setdefault(ppid, []).append(pid)
        ray_s, todo = 0.0, list(kids.get(me, []))
        while todo:
            pid = todo.pop()
            ray_s += table[pid][1]
            todo.extend(kids.get(pid, []))
        t = os.times()
        # cpu  user nice system idle iowait irq softirq steal ...
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        busy = sum(fields) - fields[3] - fields[4]
        return cls(t.user + t.system, ray_s, busy / _TICK, time.perf_counter())

    def since(self, before: Cpu) -> Cpu:
        return Cpu(self.me - before.me, self.ray - before.ray, self.machine - before.machine,
                   self.wall - before.wall)

    def others_cores(self, ours: float) -> float:
        """Cores the rest of the machine (other users' runs) kept busy, given our CPU s."""
        return max(0.0, self.machine - ours) / max(self.wall, 1e-9)


# --------------------------------------------------------------------------- timeline


@dataclass(frozen=True)
class TaskSpan:
    job_id: str
    func: str
    start: float  # epoch seconds
    end: float
    cpus: float


def task_spans(job_ids: Sequence[str]) -> list[TaskSpan]:
    """Executions of cutfarm's CPU tasks for these jobs, from ``ray.timeline()``."""
    time.sleep(TIMELINE_SETTLE_SECONDS)
    wanted = set(job_ids)
    spans: list[TaskSpan] = []
    for e in ray.timeline():  # type: ignore[no-untyped-call]
        cat, func = str(e.get("cat", "")), str(e.get("name", ""))
        cpus = task_cpus(func)
        if cpus is None or not cat.startswith("task::") or e.get("ph") != "X":
            continue  # actor calls, and the phases inside each task
        job = cat[len("task::"):].split(":", 1)[0]
        if job in wanted:
            start = float(e["ts"]) / 1e6
            spans.append(TaskSpan(job, func, start, start + float(e["dur"]) / 1e6,
                                  cpus))
    return spans


def slot_usage(spans: Sequence[TaskSpan], num_cpus: int, lo: float, hi: float) -> dict[str,
                                                                                        float]:
    """Within [lo, hi]: busy fraction of the CPU slots, and seconds with all of them idle."""
    points = sorted({lo, hi, *(t for s in spans for t in (s.start, s.end) if lo < t < hi)})
    busy = idle = 0.0
    for a, b in itertools.pairwise(points):
        mid = (a + b) / 2
        load = sum(s.cpus for s in spans if s.start <= mid < s.end)
        busy += min(load, num_cpus) * (b - a)
        idle += (b - a) if load == 0 else 0.0
    window = max(hi - lo, 1e-9)
    return {"cpu_slot_utilisation": busy / (num_cpus * window), "cpu_slots_all_idle_s": idle,
            "task_slot_s": sum(s.cpus * (s.end - s.start) for s in spans)}


# --------------------------------------------------------------------------- one job


@dataclass
class JobRun:
    job_id: str
    total_s: float  # submit called .. completed seen
    submit_s: float  # submit_sync's own time (preflight plan included)
    status: JobStatus
    t0_epoch: float
    stages: dict[str, float] = field(default_factory=dict)  # first seen, s after submit


def run_job(client: CutfarmCluster, cfg: dict[str, Any]) -> JobRun:
    """Submit one job and poll its status every POLL_SECONDS until it is terminal."""
    job_id = cfg["id"]
    t0_epoch, t0 = time.time(), time.perf_counter()
    client.submit_sync(cfg)
    submit_s = time.perf_counter() - t0
    stages: dict[str, float] = {}
    while True:
        status = client.get_sync(job_id)
        now = time.perf_counter() - t0
        stages.setdefault(status.stage, now)
        if status.status.terminal:
            break
        if now > JOB_TIMEOUT:
            raise AssertionError(f"{job_id} not done after {JOB_TIMEOUT}s: {status}")
        time.sleep(POLL_SECONDS)
    assert status.status == JobState.COMPLETED, f"{job_id}: {status.status} {status.error}"
    return JobRun(job_id, now, submit_s, status, t0_epoch, stages)


def job_breakdown(run: JobRun, spans: Sequence[TaskSpan], num_cpus: int) -> dict[str, Any]:
    st = run.status
    assert st.started_at is not None and st.finished_at is not None
    mine = [s for s in spans if s.job_id == run.job_id]
    work = [s for s in mine if s.func.endswith(PIECE_TASKS)]
    out: dict[str, Any] = {
        "submit_call_s": run.submit_s,
        "queued_s": st.started_at - st.created_at,
        "processing_s": st.finished_at - st.started_at,
        "completion_seen_after_s": run.t0_epoch + run.total_s - st.finished_at,
        "stages_first_seen_s": {k: round(v, 2) for k, v in run.stages.items()},
    }
    if work:
        first, last = min(s.start for s in work), max(s.end for s in work)
        out.update({
            "started_to_first_piece_s": first - st.started_at,  # planning + fan-out
            "piece_window_s": last - first,
            "after_last_piece_s": st.finished_at - last,
            "pieces_run": len(work),
        })
        out.update(slot_usage(mine, num_cpus, st.started_at, st.finished_at))
    return out


def expected_stamps(prep: Prepared) -> list[tuple[int, int]]:
    cams = {i: CAMERAS[FILES[i]].camera for i in range(len(FILES))}
    return [(cams[c.source], f) for c in prep.plan.cuts for f in range(c.first, c.stop)]


def video_packets(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for p in c.demux(c.streams.video[0]) if p.size)


def prepare_like(settings: Settings, cfg: dict[str, Any]) -> Prepared:
    """What the cluster's plan task does, in process: same roots, piece limits, preset."""
    return prepare(parse_config(cfg), settings.root_paths,
                   max_piece_frames=settings.max_piece_frames,
                   max_piece_bytes=settings.max_piece_bytes, preset=settings.preset)


# --------------------------------------------------------------------------- 1. overhead


def test_distribution_overhead(benchmark: Any, bench_media: BenchMedia, tmp_path: Path) -> None:
    benchmark.group = "cluster-1-distribution-overhead"
    segments = multicam_segments()
    root = tmp_path / "root"
    link_sources(bench_media.root, root, list(FILES))
    local_out = tmp_path / "in-process.mp4"
    local_times: list[float] = []
    local_prepare: list[float] = []
    runs: list[JobRun] = []
    preps: list[Prepared] = []
    local_cpu: list[float] = []
    cluster_cpu: list[float] = []
    local_others: list[float] = []  # cores other users kept busy meanwhile
    cluster_others: list[float] = []
    with local_cluster(2, root) as lc:
        client, settings = lc.client, lc.client.settings
        t0 = time.perf_counter()  # untimed warm-up: a worker process, imports, probes
        client.plan_sync(make_config(segments, job="bench-warmup"))
        warmup_s = time.perf_counter() - t0

        def in_process_round() -> None:
            # Untimed by pytest-benchmark: the in-process export, interleaved with the
            # cluster rounds so both see the same machine load.
            local_out.unlink(missing_ok=True)
            for old in runs:  # outputs are big; only the last round's is checked
                path = client.finished_output(old.status)
                if path is not None:
                    path.unlink()
            cpu0 = Cpu.now()
            t0 = time.perf_counter()
            prep = prepare_like(settings, make_config(segments, job="bench-local"))
            t1 = time.perf_counter()
            execute(prep, local_out, workers=2)
            local_times.append(time.perf_counter() - t0)
            used = Cpu.now().since(cpu0)
            local_cpu.append(used.me)  # this process: the export's threads
            local_others.append(used.others_cores(used.me + used.ray))
            local_prepare.append(t1 - t0)
            preps.append(prep)

        def cluster_round() -> None:
            cfg = make_config(segments, job=f"bench-dist-{len(runs)}")
            cpu0 = Cpu.now()
            runs.append(run_job(client, cfg))
            used = Cpu.now().since(cpu0)
            cluster_cpu.append(used.me + used.ray)  # driver + every Ray process
            cluster_others.append(used.others_cores(used.me + used.ray))

        benchmark.pedantic(cluster_round, setup=in_process_round, rounds=OVERHEAD_ROUNDS,
                           iterations=1)
        spans = task_spans([r.job_id for r in runs])
        cluster_prep = client.plan_sync(make_config(segments, job="bench-dist-check"))
        cluster_out = client.finished_output(runs[-1].status)
        logs = lc.logs
        ray_start_s = lc.start_s

    # Correct work: same plan, and both outputs decode to the frames that plan selects.
    prep = preps[-1]
    assert [(c.source, c.first, c.stop) for c in cluster_prep.plan.cuts] == [
        (c.source, c.first, c.stop) for c in prep.plan.cuts]
    assert cluster_out is not None
    want = expected_stamps(prep)
    local_dec = mg.decode_video(local_out)
    cluster_dec = mg.decode_video(cluster_out)
    assert local_dec.errors == 0 and cluster_dec.errors == 0
    assert local_dec.stamps == want, "in-process output has the wrong frames"
    assert cluster_dec.stamps == want, "cluster output has the wrong frames"
    local_bytes, cluster_bytes = local_out.stat().st_size, cluster_out.stat().st_size
    local_out.unlink()
    cluster_out.unlink()

    cluster_times = [r.total_s for r in runs]
    per_round = [job_breakdown(r, spans, 2) for r in runs]
    last = per_round[-1]
    cl_med, lo_med = median(cluster_times), median(local_times)
    plan = prep.plan
    info: dict[str, Any] = {
        "segments": len(segments),
        "output_frames": plan.frame_count,
        "output_s": float(plan.duration),
        "reencoded_frames": plan.encode_frames,
        "pieces": len(plan.pieces),
        "cluster_s_median": cl_med,
        "in_process_s_median": lo_med,
        "ratio_cluster_vs_in_process": cl_med / lo_med,
        "cluster_extra_s": cl_med - lo_med,
        "cluster_times_s": [round(t, 3) for t in cluster_times],
        "in_process_times_s": [round(t, 3) for t in local_times],
        "in_process_prepare_s_median": median(local_prepare),
        "cluster_cpu_s_median": median(cluster_cpu),
        "in_process_cpu_s_median": median(local_cpu),
        "ratio_cpu_cluster_vs_in_process": median(cluster_cpu) / median(local_cpu),
        "cluster_cores_used": median([c / t for c, t in zip(cluster_cpu, cluster_times,
                                                            strict=True)]),
        "in_process_cores_used": median([c / t for c, t in zip(local_cpu, local_times,
                                                               strict=True)]),
        "other_load_cores_during_cluster": median(cluster_others),
        "other_load_cores_during_in_process": median(local_others),
        "frames_verified_each": len(want),
        "output_bytes_in_process": local_bytes,
        "output_bytes_cluster": cluster_bytes,
        "ray_start_and_connect_s": ray_start_s,
        "warmup_plan_s": warmup_s,
        "submit_call_s_median": median([b["submit_call_s"] for b in per_round]),
        "queued_s_median": median([b["queued_s"] for b in per_round]),
        "processing_s_median": median([b["processing_s"] for b in per_round]),
        "completion_seen_after_s_median": median(
            [b["completion_seen_after_s"] for b in per_round]),
    }
    for key in ("started_to_first_piece_s", "piece_window_s", "after_last_piece_s",
                "cpu_slot_utilisation", "cpu_slots_all_idle_s", "task_slot_s"):
        vals = [b[key] for b in per_round if key in b]
        if vals:
            info[f"{key}_median"] = median(vals)
    info["last_round_stages_first_seen_s"] = last["stages_first_seen_s"]
    info.update(scan_logs(logs))
    report(benchmark, "one 20-cut job: local 2-CPU Ray cluster vs in-process engine", info)


# --------------------------------------------------------------------------- 2. throughput


def batch_configs(num_cpus: int) -> list[dict[str, Any]]:
    """BATCH_JOBS different short multicam edits (own cut points, own stretch of footage)."""
    span = SECONDS - BATCH_PROGRAM_SECONDS - 1.0
    return [
        make_config(
            multicam_segments(BATCH_SEGMENTS, BATCH_PROGRAM_SECONDS, seed=100 + j,
                              start=(5.0 * j) % span),
            job=f"bench-batch-{num_cpus}cpu-{j}",
        )
        for j in range(BATCH_JOBS)
    ]


@dataclass
class BatchRun:
    num_cpus: int
    makespan_s: float
    latencies_s: dict[str, float]  # submit start .. completed seen, per job
    submit_s: dict[str, float]  # each concurrent submit call's own time
    statuses: dict[str, JobStatus]
    t0_epoch: float
    preflight_busy_s: float | None  # the probe's plan_sync time, None if it failed
    cpu_s: float  # CPU seconds of every Ray process (and the driver) during the batch
    others_cores: float  # cores the rest of the machine kept busy meanwhile

    @property
    def jobs_per_hour(self) -> float:
        return len(self.latencies_s) * 3600.0 / self.makespan_s


async def _submit_all(client: CutfarmCluster, cfgs: Sequence[dict[str, Any]],
                      t0: float) -> dict[str, float]:
    async def one(cfg: dict[str, Any]) -> tuple[str, float]:
        await client.submit(cfg)
        return cfg["id"], time.perf_counter() - t0

    return dict(await asyncio.gather(*(one(c) for c in cfgs)))


def run_batch(client: CutfarmCluster, cfgs: Sequence[dict[str, Any]], num_cpus: int) -> BatchRun:
    """Submit every job concurrently, then poll the job list until all are terminal."""
    ids = {c["id"] for c in cfgs}
    probe: list[float] = []

    def preflight_probe() -> None:
        time.sleep(max(0.0, PROBE_AFTER_SECONDS - (time.perf_counter() - t0)))
        a = time.perf_counter()
        client.plan_sync(make_config(multicam_segments(3, 8.0), job="bench-probe"))
        probe.append(time.perf_counter() - a)

    cpu0 = Cpu.now()
    t0_epoch, t0 = time.time(), time.perf_counter()
    submit_s = asyncio.run(_submit_all(client, cfgs, t0))
    prober = threading.Thread(target=preflight_probe, name="preflight-probe", daemon=True)
    prober.start()
    done: dict[str, float] = {}
    statuses: dict[str, JobStatus] = {}
    while len(done) < len(ids):
        now = time.perf_counter() - t0
        for s in client.list_sync():
            if s.job_id in ids and s.status.terminal and s.job_id not in done:
                done[s.job_id] = now
                statuses[s.job_id] = s
        if now > JOB_TIMEOUT:
            raise AssertionError(f"batch not done after {JOB_TIMEOUT}s: {sorted(done)}")
        if len(done) < len(ids):
            time.sleep(POLL_SECONDS)
    used = Cpu.now().since(cpu0)
    prober.join(timeout=JOB_TIMEOUT)
    bad = {j: (s.status, s.error) for j, s in statuses.items() if s.status != JobState.COMPLETED}
    assert not bad, f"batch jobs did not complete: {bad}"
    return BatchRun(num_cpus, max(done.values()), done, submit_s, statuses, t0_epoch,
                    probe[0] if probe else None, used.me + used.ray,
                    used.others_cores(used.me + used.ray))


def batch_benchmark(num_cpus: int, media: BenchMedia, work: Path,
                    benchmark: Any | None) -> tuple[BatchRun, dict[str, Any]]:
    """One batch on a fresh local Ray with ``num_cpus`` CPUs (timed by ``benchmark`` if
    given); returns the run and its details. Outputs are checked, then deleted."""
    root = work / f"root-{num_cpus}cpu"
    link_sources(media.root, root, list(FILES))
    cfgs = batch_configs(num_cpus)
    with local_cluster(num_cpus, root) as lc:
        client = lc.client
        t0 = time.perf_counter()
        client.plan_sync(make_config(multicam_segments(), job="bench-warmup"))
        warmup_s = time.perf_counter() - t0
        if benchmark is not None:
            run: BatchRun = benchmark.pedantic(run_batch, args=(client, cfgs, num_cpus),
                                               rounds=1, iterations=1)
        else:
            run = run_batch(client, cfgs, num_cpus)
        spans = task_spans([c["id"] for c in cfgs])
        outputs = {j: client.finished_output(s) for j, s in run.statuses.items()}
        settings, logs, ray_start_s = client.settings, lc.logs, lc.start_s
    # Correct work: every output holds the planned frame count; the first is decoded.
    encode_frames = 0
    for i, cfg in enumerate(cfgs):
        prep = prepare_like(settings, cfg)
        encode_frames += prep.plan.encode_frames
        out = outputs[cfg["id"]]
        assert out is not None and video_packets(out) == prep.plan.frame_count, cfg["id"]
        if i == 0:
            dec = mg.decode_video(out)
            assert dec.errors == 0 and dec.stamps == expected_stamps(prep), cfg["id"]
    for out in outputs.values():
        if out is not None:
            out.unlink()
    lo, hi = run.t0_epoch, max(s.finished_at or 0.0 for s in run.statuses.values())
    usage = slot_usage(spans, num_cpus, lo, hi)
    queued = [(s.started_at or 0.0) - s.created_at for s in run.statuses.values()]
    processing = [(s.finished_at or 0.0) - (s.started_at or 0.0) for s in run.statuses.values()]
    info: dict[str, Any] = {
        f"{num_cpus}cpu_makespan_s": run.makespan_s,
        f"{num_cpus}cpu_jobs_per_hour": run.jobs_per_hour,
        f"{num_cpus}cpu_job_latency_s_median": median(list(run.latencies_s.values())),
        f"{num_cpus}cpu_job_processing_s_median": median(processing),
        f"{num_cpus}cpu_job_queued_s_max": max(queued),
        f"{num_cpus}cpu_submit_call_s_max": max(run.submit_s.values()),
        f"{num_cpus}cpu_preflight_on_busy_cluster_s": run.preflight_busy_s,
        f"{num_cpus}cpu_cores_used": run.cpu_s / run.makespan_s,
        f"{num_cpus}cpu_cpu_s_per_job": run.cpu_s / len(cfgs),
        f"{num_cpus}cpu_other_load_cores": run.others_cores,
        f"{num_cpus}cpu_cpu_slot_utilisation": usage["cpu_slot_utilisation"],
        f"{num_cpus}cpu_cpu_slots_all_idle_s": usage["cpu_slots_all_idle_s"],
        f"{num_cpus}cpu_task_slot_s": usage["task_slot_s"],
        f"{num_cpus}cpu_reencoded_frames_total": encode_frames,
        f"{num_cpus}cpu_ray_start_and_connect_s": ray_start_s,
        f"{num_cpus}cpu_warmup_plan_s": warmup_s,
        f"{num_cpus}cpu_finish_order_s": sorted(round(v, 2) for v in run.latencies_s.values()),
    }
    info.update({f"{num_cpus}cpu_{k}": v for k, v in scan_logs(logs).items()})
    return run, info


@pytest.fixture(scope="module")
def batch_runs() -> dict[int, tuple[BatchRun, dict[str, Any]]]:
    """Batch results by CPU count, so the 2-CPU case can report the scaling ratio."""
    return {}


@pytest.mark.parametrize("num_cpus", [1, 2], ids=["1cpu", "2cpu"])
def test_batch_throughput(benchmark: Any, bench_media: BenchMedia, tmp_path: Path,
                          batch_runs: dict[int, tuple[BatchRun, dict[str, Any]]],
                          num_cpus: int) -> None:
    benchmark.group = "cluster-2-batch-throughput"
    run, info = batch_benchmark(num_cpus, bench_media, tmp_path, benchmark)
    batch_runs[num_cpus] = (run, info)
    head: dict[str, Any] = {"jobs": BATCH_JOBS, "segments_per_job": BATCH_SEGMENTS,
                            "program_s_per_job": BATCH_PROGRAM_SECONDS,
                            "max_concurrent_jobs": MAX_CONCURRENT_JOBS, "num_cpus": num_cpus}
    if num_cpus == 2:
        if 1 not in batch_runs:  # 1-CPU case deselected: measure it now, untimed
            batch_runs[1] = batch_benchmark(1, bench_media, tmp_path, None)
        one, one_info = batch_runs[1]
        head.update({
            "jobs_per_hour_1cpu": one.jobs_per_hour,
            "jobs_per_hour_2cpu": run.jobs_per_hour,
            "ratio_throughput_2cpu_vs_1cpu": run.jobs_per_hour / one.jobs_per_hour,
            "ratio_makespan_1cpu_vs_2cpu": one.makespan_s / run.makespan_s,
            "1cpu_cpu_slot_utilisation": one_info["1cpu_cpu_slot_utilisation"],
            "1cpu_cores_used": one_info["1cpu_cores_used"],
            "1cpu_other_load_cores": one_info["1cpu_other_load_cores"],
        })
    report(benchmark, f"batch of {BATCH_JOBS} jobs on a local {num_cpus}-CPU Ray",
           {**head, **info})
