"""Helpers for tests that run jobs on a real local Ray cluster."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from cluster.api import CutfarmCluster
from cluster.coordinator import COORDINATOR_NAME, STATUS_NAME
from cluster.jobs import JobStatus
from cluster.settings import MediaRoot, Settings


def new_namespace() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


def connect(roots: tuple[MediaRoot, ...], **kwargs: Any) -> CutfarmCluster:
    settings = Settings(media_roots=roots, namespace=new_namespace(), **kwargs)
    return CutfarmCluster.connect(settings)


def shutdown_actors(client: CutfarmCluster) -> None:
    """Detached actors outlive the test: kill them (and the job coroutines with them)."""
    for name in (COORDINATOR_NAME, STATUS_NAME):
        with contextlib.suppress(Exception):
            ray.kill(ray.get_actor(name, namespace=client.settings.namespace))


def wait_for(client: CutfarmCluster, job_id: str, done: Callable[[JobStatus], bool],
             timeout: float = 120.0, interval: float = 0.1) -> JobStatus:
    deadline = time.monotonic() + timeout
    while True:
        status = client.get_sync(job_id)
        if done(status):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {job_id}: {status}")
        time.sleep(interval)


def wait_terminal(client: CutfarmCluster, job_id: str, timeout: float = 120.0) -> JobStatus:
    return wait_for(client, job_id, lambda s: s.status.terminal, timeout)


def config(job_id: str, files: list[str], segments: list[tuple[int, float, float]],
           **output: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "id": job_id,
        "projectName": job_id,
        "sources": [{"filePath": f} for f in files],
        "segments": [{"sourceIndex": s, "startTime": a, "endTime": b} for s, a, b in segments],
        "output": {"format": "mp4", "codec": "copy", **output},
    }


def link_sources(media: Path, target: Path, names: list[str]) -> None:
    (target / "sources").mkdir(parents=True, exist_ok=True)
    for name in names:
        dst = target / "sources" / name
        if not dst.exists():
            dst.hardlink_to(media / "sources" / name)
