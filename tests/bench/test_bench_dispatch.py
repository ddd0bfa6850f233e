"""What a job costs to plan and hand out, by number of segments: 20, 200 and 2,000.

Skipped in the default run; run with::

    .venv/bin/python -m pytest tests/bench/test_bench_dispatch.py --benchmark-only -s

Three one-hour 30 fps cameras as synthetic sample indexes (2 s closed GOPs, 2 B-frames;
no media is read: planning never opens a file), and a multicam edit of N contiguous
segments with a cut mid-GOP at every switch. For each N it reports:

- ``plan_s``: ``build_plan`` (what a submit's preflight adds to probing);
- ``cut_out_s``: ``Prepared.encode_job`` for every re-encoded piece (what the coordinator
  does before dispatch), and per task;
- ``task_bytes_mean`` / ``task_bytes_max``: one task's payload, pickled (protocol 5, numpy
  buffers in-band), against ``whole_plan_bytes``, which every task received before;
- ``dispatch_s`` / ``dispatch_ms_per_task``: submitting one Ray task per piece with its
  job as the argument on a 2-CPU local Ray, until every task has unpickled its job and
  returned (the tasks do nothing else: this is the fan-out's own cost);
  ``whole_dispatch_ms_per_task``: the same when every task gets the whole plan (put once
  in the object store) and cuts its piece out itself, as tasks were fed before.

Linear means: the per-task figures stay flat as N grows 100-fold.
"""

from __future__ import annotations

import pickle
import time
from typing import Any

import pytest
import ray

from render.config import parse_config
from render.engine import Prepared
from render.piecejob import EncodeJob
from render.plan import EncodePiece, build_plan
from tests.bench.benchmedia import report
from tests.test_piecejob import SETTINGS, multicam, source_info
from tests.test_plan import closed, make_config, planned

HOUR_GOPS = 1800  # 60-frame GOPs: one hour at 30 fps


@ray.remote(num_cpus=1)
def _receive(job: EncodeJob) -> int:
    return job.frames


@ray.remote(num_cpus=1)
def _receive_whole(prep: Prepared, index: int) -> int:
    """How tasks were fed before: the whole plan (one object in the store), and an index."""
    return prep.encode_job(index).frames


@pytest.fixture(scope="module")
def cameras() -> list[Any]:
    return [closed(HOUR_GOPS, 60), closed(HOUR_GOPS, 60, step=510), closed(HOUR_GOPS, 60)]


@pytest.fixture(scope="module")
def local_ray() -> Any:
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.mark.parametrize("segments", [20, 200, 2000])
def test_plan_and_dispatch(benchmark: Any, cameras: list[Any], local_ray: Any,
                           segments: int) -> None:
    config = parse_config(make_config(multicam(segments, cameras, seed=segments), 3))
    sources = {i: source_info(s, i) for i, s in enumerate(cameras)}
    t0 = time.perf_counter()
    plan = build_plan(config, [planned(s) for s in cameras])
    plan_s = time.perf_counter() - t0
    encode = [i for i, p in enumerate(plan.pieces) if isinstance(p, EncodePiece)]
    prep = Prepared(config, sources, plan, dict.fromkeys(encode, SETTINGS), None, "mp4")

    def cut_out() -> list[EncodeJob]:
        return [prep.encode_job(i) for i in encode]

    t0 = time.perf_counter()
    jobs = cut_out()
    cut_out_s = time.perf_counter() - t0
    sizes = [len(pickle.dumps(j, protocol=5)) for j in jobs]
    whole = len(pickle.dumps(prep, protocol=5))

    def dispatch() -> float:
        start = time.perf_counter()
        frames = ray.get([_receive.remote(j) for j in jobs])
        assert frames == [j.frames for j in jobs]
        return time.perf_counter() - start

    def dispatch_whole() -> float:
        start = time.perf_counter()
        ref = ray.put(prep)
        frames = ray.get([_receive_whole.remote(ref, i) for i in encode])
        assert frames == [j.frames for j in jobs]
        return time.perf_counter() - start

    dispatch()  # workers started, functions exported: measured warm
    runs = [dispatch() for _ in range(3)]
    dispatch_s = sorted(runs)[1]
    whole_s = dispatch_whole()
    benchmark.pedantic(lambda: None, rounds=1)
    report(benchmark, f"plan and dispatch, {segments} segments", {
        "segments": segments,
        "tasks": len(jobs),
        "plan_s": plan_s,
        "cut_out_s": cut_out_s,
        "cut_out_ms_per_task": 1e3 * cut_out_s / len(jobs),
        "task_bytes_mean": int(sum(sizes) / len(sizes)),
        "task_bytes_max": max(sizes),
        "whole_plan_bytes": whole,
        "dispatch_s": dispatch_s,
        "dispatch_ms_per_task": 1e3 * dispatch_s / len(jobs),
        "whole_dispatch_s": whole_s,
        "whole_dispatch_ms_per_task": 1e3 * whole_s / len(jobs),
    })
