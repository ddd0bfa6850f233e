"""A short soak in the default suite (issue 12): jobs over HTTP while processes are killed.

The long run is ``tests/bench/test_bench_soak.py``. Both check the same things: no job
lost, every completed output frame-exact, every cancelled job without output, no stray
files, with piece workers, the audio task, concat actors, the coordinator and the status
actor killed by SIGKILL at random and the API restarted once.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import MediaRoot as Media
from tests.soak import run_soak


def test_short_soak_loses_nothing(media_root: Media, tmp_path: Path) -> None:
    report = run_soak(tmp_path, media_root, jobs=8, in_flight=3, kill_every=1.5,
                      cancel_every=4, seed=8, limits={"coordinator": 1, "status": 2})
    print("\n".join(report.lines()))
    assert report.problems == []
    assert report.states["completed"] + report.states["cancelled"] == 8
    assert report.states["cancelled"] <= 2
    assert sum(report.kills.values()) >= 3, report.kills  # the chaos really happened
