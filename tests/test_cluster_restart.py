"""A whole local Ray cluster stopped mid-job and started again loses no job; metrics show up.

This module starts its own local Ray (twice), so it cannot share the multi-node cluster of
test_cluster.py.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.request
from pathlib import Path

import ray

from cluster.jobs import JobState
from cluster.planning import prober
from cluster.settings import MediaRoot
from tests import mediagen as mg
from tests.cluster_support import (
    config,
    connect,
    link_sources,
    shutdown_actors,
    wait_for,
    wait_terminal,
)
from tests.conftest import MediaRoot as Media

MULTICAM = [(0, 0.4, 2.5), (1, 2.5, 4.1), (0, 4.1, 5.55)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_ray(metrics_port: int | None = None) -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    kwargs = {"_metrics_export_port": metrics_port} if metrics_port else {}
    ray.init(address="local", num_cpus=2, include_dashboard=False, **kwargs)


def test_cluster_restart_resumes_pending_and_processing_jobs(media_root: Media,
                                                             tmp_path: Path) -> None:
    link_sources(media_root.root, tmp_path, ["h264_a.mp4", "h264_b.mp4", "h264_640.mp4"])
    roots = (MediaRoot(tmp_path),)
    slow = config("export-slow", ["h264_640.mp4", "h264_a.mp4"],
                  [(0, 0.0, 6.0), (1, 0.0, 6.0)], codec="h264")
    quick = config("export-quick", ["h264_a.mp4", "h264_b.mp4"], MULTICAM)
    start_ray()
    try:
        client = connect(roots, max_concurrent_jobs=1, preset="veryslow")
        namespace = client.settings.namespace
        client.submit_sync(slow)
        client.submit_sync(quick)
        wait_for(client, "export-slow", lambda s: s.frames_done > 0, timeout=60)
        assert client.get_sync("export-quick").status == JobState.PENDING
    finally:
        ray.shutdown()  # the whole cluster goes: actors, tasks, workers
    on_disk = {j: json.loads((tmp_path / "exports" / j / "status.json").read_text())["status"]
               for j in ("export-slow", "export-quick")}
    assert on_disk == {"export-slow": "processing", "export-quick": "pending"}

    start_ray()
    try:
        client = connect(roots, max_concurrent_jobs=1)
        assert client.settings.namespace != namespace  # nothing carried over but the files
        # Issue 8: it used to resume silently; now it says so (and `serve` prints this).
        assert ray.get(client.coordinator.resumed_jobs.remote()) == [
            {"jobId": "export-slow", "why": "the service stopped unexpectedly while it ran"}]
        assert client.get_sync("export-slow").interrupted_at is not None
        for job in ("export-slow", "export-quick"):
            done = wait_terminal(client, job, timeout=300)
            assert done.status == JobState.COMPLETED, done.error
        assert client.get_sync("export-slow").attempts == 1
        prep = client.plan_sync(quick)
        cams = {0: media_root.camera("h264_a.mp4"), 1: media_root.camera("h264_b.mp4")}
        want = [(cams[c.source], f) for c in prep.plan.cuts for f in range(c.first, c.stop)]
        decoded = mg.decode_video(tmp_path / "exports" / "export-quick" / "output.mp4")
        assert decoded.errors == 0 and decoded.stamps == want
        slow_out = mg.decode_video(tmp_path / "exports" / "export-slow" / "output.mp4")
        assert slow_out.errors == 0 and len(slow_out.stamps) == 360
        shutdown_actors(client)
    finally:
        ray.shutdown()


def test_metrics_are_exported(media_root: Media, tmp_path: Path) -> None:
    link_sources(media_root.root, tmp_path, ["h264_a.mp4", "h264_b.mp4"])
    port = free_port()
    start_ray(metrics_port=port)
    try:
        client = connect((MediaRoot(tmp_path),))
        client.submit_sync(config("export-metrics", ["h264_a.mp4", "h264_b.mp4"], MULTICAM))
        done = wait_terminal(client, "export-metrics")
        assert done.status == JobState.COMPLETED
        # Every task's last totals land before the job completes (they used to race it).
        assert done.bytes_done == done.bytes_total > 0, (done.bytes_done, done.bytes_total)
        assert done.frames_done == done.frames_total > 0, (done.frames_done, done.frames_total)
        # Two sources probed once each: at the preflight; the job's start reused them.
        stats = ray.get(prober(client.settings.namespace).cache_stats.remote())
        assert stats == (2, 2), stats
        wanted = ("ray_cutfarm_jobs", "ray_cutfarm_frames_reencoded",
                  "ray_cutfarm_bytes_copied", "ray_cutfarm_job_duration_seconds",
                  "ray_cutfarm_queue_length")
        deadline = time.monotonic() + 60  # metrics reach the agent a few seconds late
        text = ""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    text = r.read().decode()
            except OSError:
                text = ""
            if all(name in text for name in wanted):
                break
            time.sleep(1)
        missing = [name for name in wanted if name not in text]
        assert not missing, missing
        completed = [line for line in text.splitlines()
                     if line.startswith("ray_cutfarm_jobs{") and 'state="completed"' in line]
        assert completed and float(completed[0].rsplit(" ", 1)[1]) >= 1
        shutdown_actors(client)
    finally:
        ray.shutdown()
