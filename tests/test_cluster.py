"""The cluster on a real multi-node Ray (ray.cluster_utils.Cluster) on this machine.

A head and two worker nodes of one CPU each, all reading the same media folders (as every
node of a real cluster sees the same shared root): the tests can assert, from what the
tasks themselves reported, that one job's pieces ran on several nodes. Every test uses its
own namespace, so its coordinator and status actors (and settings) are its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster
from ray.util.state import list_actors, list_tasks

from cluster.coordinator import STATUS_NAME
from cluster.errors import JobConflictError, JobNotFoundError
from cluster.jobs import JobState
from cluster.planning import prober
from cluster.priority import WORKER_NICE
from cluster.settings import MediaRoot
from render.errors import CorruptMediaError, SourceNotFoundError
from render.plan import EncodePiece
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


@dataclass
class Nodes:
    head: str
    a: str
    b: str


@pytest.fixture(scope="module")
def nodes() -> Iterator[Nodes]:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    a = c.add_node(num_cpus=1)
    b = c.add_node(num_cpus=1)
    ray.init(address=c.address)
    c.wait_for_nodes()
    try:
        yield Nodes(c.head_node.node_id, a.node_id, b.node_id)
    finally:
        ray.shutdown()
        c.shutdown()


def expected(media: Media, files: list[str], status_cuts: list[tuple[int, int, int]]) -> list[
        tuple[int, int]]:
    return [(media.camera(files[s]), f) for s, a, b in status_cuts for f in range(a, b)]


def planned_cuts(client: object, cfg: dict[str, object]) -> list[tuple[int, int, int]]:
    prep = client.plan_sync(cfg)  # type: ignore[attr-defined]
    return [(c.source, c.first, c.stop) for c in prep.plan.cuts]


def test_a_job_on_a_shared_root_spreads_its_pieces_over_the_nodes(
        nodes: Nodes, media_root: Media, tmp_path: Path) -> None:
    """One job's re-encodes run on several nodes, all reading one shared root; the concat
    actor reads the copied GOPs from the same root itself (no copy tasks)."""
    shared = tmp_path / "shared"
    link_sources(media_root.root, shared, ["h264_a.mp4", "h264_b.mp4"])
    client = connect((MediaRoot(shared),))
    try:
        files = ["h264_a.mp4", "h264_b.mp4"]
        cfg = config("export-spread", files, MULTICAM)
        status = client.submit_sync(cfg)
        assert status.status == JobState.PENDING
        done = wait_terminal(client, "export-spread")
        assert done.status == JobState.COMPLETED, done.error
        assert done.download_url == "/api/export/export-spread/download"
        prep = client.plan_sync(cfg)
        assert prep.plan.copy_bytes > 0
        pieces = client.pieces_sync("export-spread")
        by_kind: dict[str, set[str]] = {}
        for p in pieces:
            by_kind.setdefault(p.kind, set()).add(p.node_id)
        assert set(by_kind) == {"encode", "audio", "concat"}, pieces
        encoded = {p.index for p in pieces if p.kind == "encode"}
        assert encoded == {i for i, piece in enumerate(prep.plan.pieces)
                           if isinstance(piece, EncodePiece)}
        assert by_kind["encode"] <= {nodes.head, nodes.a, nodes.b}
        assert len(by_kind["encode"]) >= 2, f"every re-encode ran on one node: {pieces}"
        out = shared / "exports" / "export-spread" / "output.mp4"
        cuts = [(c.source, c.first, c.stop) for c in prep.plan.cuts]
        decoded = mg.decode_video(out)
        assert decoded.errors == 0
        assert decoded.stamps == expected(media_root, files, cuts)
        on_disk = json.loads((out.parent / "status.json").read_text())
        assert {k: on_disk[k] for k in ("jobId", "status", "progress", "downloadUrl")} == {
            "jobId": "export-spread", "status": "completed", "progress": 1.0,
            "downloadUrl": "/api/export/export-spread/download"}
        assert sorted(p.name for p in out.parent.iterdir()) == [
            "config.json", "output.mp4", "status.json"]
    finally:
        shutdown_actors(client)


def test_an_obs_recording_beside_an_mp4_on_two_shared_roots(nodes: Nodes, media_root: Media,
                                                            tmp_path: Path) -> None:
    """Matroska (OBS) in a second root is probed, planned and copied like an MP4."""
    cams, shared = tmp_path / "cams", tmp_path / "shared"
    link_sources(media_root.root, cams, ["obs.mkv"])
    link_sources(media_root.root, shared, ["h264_a.mp4"])
    client = connect((MediaRoot(shared), MediaRoot(cams)))
    try:
        files = ["obs.mkv", "h264_a.mp4"]
        cfg = config("export-obs", files, [(0, 0.5, 2.6), (1, 2.6, 3.9)])
        client.submit_sync(cfg)
        done = wait_terminal(client, "export-obs")
        assert done.status == JobState.COMPLETED, done.error
        prep = client.plan_sync(cfg)
        assert prep.plan.copy_bytes > 0
        out = shared / "exports" / "export-obs" / "output.mp4"
        decoded = mg.decode_video(out)
        assert decoded.errors == 0
        cuts = [(c.source, c.first, c.stop) for c in prep.plan.cuts]
        assert decoded.stamps == expected(media_root, files, cuts)
        assert [(s, a) for s, a, _ in cuts] == [(0, 15), (1, 78)]
    finally:
        shutdown_actors(client)


def test_submit_is_idempotent_and_conflicts_are_refused(nodes: Nodes, media_root: Media) -> None:
    client = connect((MediaRoot(media_root.root),))
    try:
        cfg = config("export-idem", ["h264_a.mp4"], [(0, 0.0, 1.0)])
        first = client.submit_sync(cfg)
        again = client.submit_sync(cfg)
        assert again.job_id == first.job_id and again.seq == first.seq
        other = config("export-idem", ["h264_a.mp4"], [(0, 0.0, 2.0)])
        with pytest.raises(JobConflictError, match="different config"):
            client.submit_sync(other)
        assert wait_terminal(client, "export-idem").status == JobState.COMPLETED
    finally:
        shutdown_actors(client)


def test_bad_media_is_refused_at_submit_and_fails_a_job_once(nodes: Nodes, media_root: Media
                                                             ) -> None:
    client = connect((MediaRoot(media_root.root),))
    try:
        with pytest.raises(SourceNotFoundError):
            client.submit_sync(config("export-missing", ["nope.mp4"], [(0, 0, 1)]))
        with pytest.raises(CorruptMediaError):
            client.submit_sync(config("export-trunc", ["truncated.mp4"], [(0, 0, 1)]))
        # The file breaks after submission (here: never checked): the job fails with the
        # engine's sentence, and a good job beside it is not disturbed.
        bad = client.submit_sync(config("export-bad", ["truncated.mp4"], [(0, 0, 1)]),
                                 preflight=False)
        good = client.submit_sync(config("export-good", ["h264_a.mp4"], [(0, 0.5, 3.0)]))
        failed = wait_terminal(client, bad.job_id)
        assert failed.status == JobState.FAILED
        assert failed.error is not None and "truncated" in failed.error
        assert failed.attempts == 0
        assert wait_terminal(client, good.job_id).status == JobState.COMPLETED
        job_dir = media_root.root / "exports" / "export-bad"
        assert sorted(p.name for p in job_dir.iterdir()) == ["config.json", "status.json"]
    finally:
        shutdown_actors(client)


def test_a_preflight_is_the_plan_summarized_in_the_prober_or_here_when_it_is_gone(
        nodes: Nodes, media_root: Media) -> None:
    """The prober plans a preflight and sends back the summary alone; killed, the caller
    probes with a task and plans itself, with the same answer, errors included."""
    client = connect((MediaRoot(media_root.root),))
    try:
        files = ["h264_a.mp4", "h264_b.mp4"]
        cfg = config("export-preflight", files, MULTICAM)
        prep = client.plan_sync(cfg)
        want = [(c.source, c.first, c.stop - 1) for c in prep.plan.cuts]
        for attempt in ("prober", "after a kill"):
            summary = client.preflight_sync(cfg).summary
            got = [(s["sourceIndex"], s["firstFrame"], s["lastFrame"])
                   for s in summary["segments"]]
            assert got == want, attempt
            assert summary["frames"] == prep.plan.frame_count
            assert summary["reencodedFrames"] == prep.plan.encode_frames > 0
            assert summary["copiedBytes"] == prep.plan.copy_bytes > 0
            with pytest.raises(SourceNotFoundError):
                client.preflight_sync(config("export-missing", ["nope.mp4"], [(0, 0, 1)]))
            ray.kill(prober(client.settings.namespace), no_restart=True)
        assert client.submit_sync(cfg).status == JobState.PENDING
        assert wait_terminal(client, "export-preflight").status == JobState.COMPLETED
    finally:
        shutdown_actors(client)


def test_the_control_plane_runs_at_nice_0_and_media_work_below_it(
        nodes: Nodes, media_root: Media) -> None:
    """cluster/priority.py: status actor, coordinator and prober start at nice 0; what the
    coordinator starts for a job (concat actor, piece workers) does not inherit that and
    stays at Ray's 15 (their media threads at 19: test_cluster_logic)."""
    client = connect((MediaRoot(media_root.root),))
    try:
        ns = client.settings.namespace
        ray.get(prober(ns).cache_stats.remote())  # started by connect, perhaps not yet up
        control = {a.class_name: a.pid for a in list_actors(
            filters=[("ray_namespace", "=", ns), ("state", "=", "ALIVE")])}
        for name in ("StatusActor", "Coordinator", "Prober"):
            assert os.getpriority(os.PRIO_PROCESS, control[name]) == 0, name
        client.submit_sync(config("export-nice", ["h264_a.mp4", "h264_b.mp4"], MULTICAM))
        seen: dict[str, int] = {}
        deadline = time.monotonic() + 120
        while client.get_sync("export-nice").status != JobState.COMPLETED:
            assert time.monotonic() < deadline
            for a in list_actors(filters=[("ray_namespace", "=", ns), ("state", "=", "ALIVE"),
                                          ("class_name", "=", "ConcatActor")]):
                with contextlib.suppress(OSError):
                    seen["concat"] = os.getpriority(os.PRIO_PROCESS, a.pid)
            for t in list_tasks(filters=[("state", "=", "RUNNING")]):
                if t.name.startswith("export-nice:") and t.worker_pid:
                    with contextlib.suppress(OSError):
                        seen[t.name] = os.getpriority(os.PRIO_PROCESS, t.worker_pid)
        assert "concat" in seen and set(seen.values()) == {WORKER_NICE}, seen
    finally:
        shutdown_actors(client)


def test_not_enough_disk_fails_early_with_a_clear_message(nodes: Nodes, media_root: Media,
                                                          tmp_path: Path) -> None:
    link_sources(media_root.root, tmp_path, ["h264_a.mp4"])
    client = connect((MediaRoot(tmp_path),), disk_headroom_bytes=1 << 60)
    try:
        client.submit_sync(config("export-disk", ["h264_a.mp4"], [(0, 0, 2)]))
        done = wait_terminal(client, "export-disk")
        assert done.status == JobState.FAILED
        assert done.error is not None and "not enough disk space" in done.error
    finally:
        shutdown_actors(client)


def test_eight_jobs_with_a_limit_of_two(nodes: Nodes, media_root: Media, tmp_path: Path) -> None:
    link_sources(media_root.root, tmp_path, ["h264_a.mp4", "h264_b.mp4"])
    client = connect((MediaRoot(tmp_path),), max_concurrent_jobs=2)
    try:
        files = ["h264_a.mp4", "h264_b.mp4"]
        ids = []
        for n in range(8):
            cfg = config(f"export-batch-{n}", files, MULTICAM)
            cfg["priority"] = 5 if n == 6 else 0  # jumps the queue
            ids.append(client.submit_sync(cfg, preflight=False).job_id)
        most = 0
        while True:
            jobs = client.list_sync()
            running = sum(1 for j in jobs if j.status == JobState.PROCESSING)
            most = max(most, running)
            if all(j.status.terminal for j in jobs):
                break
            time.sleep(0.05)
        assert most <= 2
        jobs = {j.job_id: j for j in client.list_sync()}
        assert all(jobs[i].status == JobState.COMPLETED for i in ids)
        order = sorted(ids, key=lambda i: jobs[i].started_at or 0)
        # The two first submitted start at once; the priority job is next; then arrival order.
        assert set(order[:2]) == {ids[0], ids[1]}
        assert order[2] == ids[6]
        assert order[3:] == [ids[2], ids[3], ids[4], ids[5], ids[7]]
        stamps = {i: mg.decode_video(tmp_path / "exports" / i / "output.mp4").stamps
                  for i in (ids[0], ids[7])}
        cuts = planned_cuts(client, config("export-batch-x", files, MULTICAM))
        assert stamps[ids[0]] == stamps[ids[7]] == expected(media_root, files, cuts)
    finally:
        shutdown_actors(client)


def _running_tasks(prefix: str) -> list[object]:
    return [t for t in list_tasks(filters=[("state", "=", "RUNNING")], limit=1000)
            if str(t.name).startswith(prefix)]


def test_cancel_stops_the_work_and_removes_files(nodes: Nodes, media_root: Media,
                                                 tmp_path: Path) -> None:
    link_sources(media_root.root, tmp_path, ["h264_a.mp4", "h264_640.mp4"])
    # A slow preset makes the re-encodes last long enough to cancel in the middle.
    client = connect((MediaRoot(tmp_path),), preset="veryslow")
    try:
        files = ["h264_a.mp4", "h264_640.mp4"]
        cfg = config("export-cancel", files, [(1, 0.0, 6.0), (0, 0.0, 6.0)], codec="h264")
        client.submit_sync(cfg)
        wait_for(client, "export-cancel", lambda s: s.frames_done > 0, timeout=60,
                 interval=0.05)
        deadline = time.monotonic() + 20  # the state API sees tasks a moment late
        while not _running_tasks("export-cancel") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _running_tasks("export-cancel")
        t0 = time.monotonic()
        cancelled = client.cancel_sync("export-cancel")
        assert cancelled.status == JobState.CANCELLED
        assert time.monotonic() - t0 < 10
        deadline = time.monotonic() + 10
        while _running_tasks("export-cancel") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _running_tasks("export-cancel")
        job_dir = tmp_path / "exports" / "export-cancel"
        assert sorted(p.name for p in job_dir.iterdir()) == ["config.json", "status.json"]
        assert json.loads((job_dir / "status.json").read_text())["status"] == "cancelled"
        assert not list(job_dir.parent.glob("**/.*partial"))
    finally:
        shutdown_actors(client)


def test_a_worker_killed_mid_job_is_retried(nodes: Nodes, media_root: Media,
                                            tmp_path: Path) -> None:
    link_sources(media_root.root, tmp_path, ["h264_a.mp4", "h264_640.mp4"])
    client = connect((MediaRoot(tmp_path),), preset="veryslow")
    try:
        files = ["h264_a.mp4", "h264_640.mp4"]
        segs = [(0, 0.4, 2.5), (1, 2.5, 5.5), (0, 5.5, 5.9)]
        cfg = config("export-kill", files, segs)
        client.submit_sync(cfg)
        deadline = time.monotonic() + 60
        victim = None
        while victim is None and time.monotonic() < deadline:
            for t in _running_tasks("export-kill:seg1:format"):
                victim = t
            time.sleep(0.05)
        assert victim is not None, "the long re-encode never ran"
        os.kill(int(victim.worker_pid), signal.SIGKILL)  # type: ignore[attr-defined]
        index = int(str(victim.name).rsplit(":", 1)[1])  # type: ignore[attr-defined]
        done = wait_terminal(client, "export-kill")
        assert done.status == JobState.COMPLETED, done.error
        # Ray ran the killed piece again: its task has a second attempt. (The placement
        # report of the killed attempt may never have left its worker, so count attempts
        # in Ray's own task table, which sees them a moment late.)
        name = str(victim.name)  # type: ignore[attr-defined]
        deadline = time.monotonic() + 20
        attempts: set[int] = set()
        while time.monotonic() < deadline:
            attempts = {int(t.attempt_number) for t in  # type: ignore[attr-defined]
                        list_tasks(filters=[("name", "=", name)], limit=100)}
            if len(attempts) >= 2:
                break
            time.sleep(0.5)
        assert len(attempts) >= 2, attempts
        assert any(p.index == index for p in client.pieces_sync("export-kill")
                   if p.kind == "encode")
        # Issue 12: the retried piece's frames are not counted twice.
        assert done.frames_done <= done.frames_total, (done.frames_done, done.frames_total)
        cuts = planned_cuts(client, cfg)
        out = tmp_path / "exports" / "export-kill" / "output.mp4"
        decoded = mg.decode_video(out)
        assert decoded.errors == 0
        assert decoded.stamps == expected(media_root, files, cuts)
    finally:
        shutdown_actors(client)


def test_restarted_status_actor_loses_no_job(nodes: Nodes, media_root: Media,
                                             tmp_path: Path) -> None:
    link_sources(media_root.root, tmp_path, ["h264_a.mp4"])
    client = connect((MediaRoot(tmp_path),))
    try:
        client.submit_sync(config("export-keep", ["h264_a.mp4"], [(0, 0.1, 3.3)]))
        assert wait_terminal(client, "export-keep").status == JobState.COMPLETED
        actor = ray.get_actor(STATUS_NAME, namespace=client.settings.namespace)
        ray.kill(actor, no_restart=False)
        deadline = time.monotonic() + 30
        while True:
            try:
                status = client.get_sync("export-keep")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert status.status == JobState.COMPLETED
        assert status.download_url == "/api/export/export-keep/download"
    finally:
        shutdown_actors(client)


def test_retention_removes_only_old_finished_exports(nodes: Nodes, media_root: Media,
                                                     tmp_path: Path) -> None:
    link_sources(media_root.root, tmp_path, ["h264_a.mp4"])
    client = connect((MediaRoot(tmp_path),), retention_hours=1.0)
    try:
        client.submit_sync(config("export-old", ["h264_a.mp4"], [(0, 0.0, 1.0)]))
        assert wait_terminal(client, "export-old").status == JobState.COMPLETED
        assert ray.get(client.coordinator.sweep.remote()) == []  # not old yet
        assert (tmp_path / "exports" / "export-old" / "output.mp4").is_file()
        later = time.time() + 2 * 3600
        assert ray.get(client.coordinator.sweep.remote(later)) == ["export-old"]
        assert not (tmp_path / "exports" / "export-old").exists()
        with pytest.raises(JobNotFoundError):
            client.get_sync("export-old")
    finally:
        shutdown_actors(client)


def test_a_restarted_coordinator_runs_its_jobs_again(nodes: Nodes, media_root: Media,
                                                     tmp_path: Path) -> None:
    """Killed mid-job, the detached coordinator restarts and picks its jobs up by itself."""
    from cluster.coordinator import COORDINATOR_NAME

    link_sources(media_root.root, tmp_path, ["h264_a.mp4", "h264_640.mp4"])
    client = connect((MediaRoot(tmp_path),), preset="veryslow")
    try:
        files = ["h264_640.mp4", "h264_a.mp4"]
        cfg = config("export-phoenix", files, [(0, 0.0, 6.0), (1, 0.0, 3.0)], codec="h264")
        client.submit_sync(cfg)
        wait_for(client, "export-phoenix", lambda s: s.frames_done > 0, timeout=60)
        actor = ray.get_actor(COORDINATOR_NAME, namespace=client.settings.namespace)
        ray.kill(actor, no_restart=False)
        # Nobody calls the new coordinator: it must resume the job on its own.
        done = wait_terminal(client, "export-phoenix", timeout=300)
        assert done.status == JobState.COMPLETED, done.error
        assert done.attempts == 1
        decoded = mg.decode_video(tmp_path / "exports" / "export-phoenix" / "output.mp4")
        assert decoded.errors == 0 and len(decoded.stamps) == 270
    finally:
        shutdown_actors(client)
