"""Soak benchmark (issue 12), run on request::

    .venv/bin/python -m pytest tests/bench/test_bench_soak.py --benchmark-only -s

Three nodes (a head and two 1-CPU workers) on this machine, 32 stamped-media jobs over HTTP
with at most 4 unfinished at a time, every 6th cancelled mid-run, a chaos loop that kills a
piece worker, the audio task's worker, a concat actor, the coordinator or the status actor
(SIGKILL by pid; one kind, chosen evenly, every 1.5 s), and the API restarted once. It
prints jobs, kills by kind, retries, wall time, max job latency and the actors' memory in
the first and last third of the run, and fails on any lost job, inexact output, cancelled
output or stray file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MediaRoot as Media
from tests.soak import run_soak


@pytest.mark.benchmark(group="soak")
def test_soak_with_random_kills(benchmark: Any, media_root: Media, tmp_path: Path) -> None:
    reports = []

    def once() -> None:
        reports.append(run_soak(tmp_path / f"run{len(reports)}", media_root, jobs=32,
                                in_flight=4, kill_every=1.5, cancel_every=6, seed=32,
                                limits={"coordinator": 2, "status": 4}))

    benchmark.pedantic(once, rounds=1, iterations=1)
    report = reports[0]
    print("\n" + "\n".join(report.lines()))
    benchmark.extra_info.update(kills=dict(report.kills), states=dict(report.states),
                                retries=report.retries, max_latency=report.max_latency,
                                memory_mb=report.memory_mb)
    assert report.problems == []
    for name, (first, last) in report.memory_mb.items():
        assert last <= first * 1.5 + 64, (name, first, last)
