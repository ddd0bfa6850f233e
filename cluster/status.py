"""The status book: every job's state, kept in memory and written through to status.json.

``StatusBook`` is plain Python (tested without Ray); ``StatusActor`` is the one named,
detached Ray actor per cluster that owns it. On start it reloads every status.json, so a
restarted actor, or a restarted cluster, loses no job.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from typing import Any

import ray

from render.engine import Progress

from .errors import JobConflictError, JobNotFoundError
from .jobs import JobState, JobStatus, PiecePlacement, config_hash
from .metrics import Metrics
from .store import JobStore

#: Progress-only changes are written to disk at most this often per job; state changes
#: are written at once.
PROGRESS_WRITE_INTERVAL = 0.5
#: Shown until a job completes: a job at 100 % that is not done confuses users.
MAX_RUNNING_PROGRESS = 0.99


class StatusBook:
    def __init__(self, store: JobStore, metrics: Metrics | None = None) -> None:
        self.store = store
        self.metrics = metrics
        self.jobs: dict[str, JobStatus] = {s.job_id: s for s in store.iter_statuses()}
        self.next_seq = max((s.seq for s in self.jobs.values()), default=0) + 1
        self._written: dict[str, float] = {}
        self.report_states()

    # ------------------------------------------------------------------ queries

    def get(self, job_id: str) -> JobStatus:
        status = self.jobs.get(job_id)
        if status is None:
            raise JobNotFoundError(f"export {job_id!r} not found")
        return status

    def list(self, states: Iterable[JobState] | None = None) -> list[JobStatus]:
        wanted = set(states) if states else None
        jobs = [s for s in self.jobs.values() if wanted is None or s.status in wanted]
        return sorted(jobs, key=lambda s: s.seq)

    # ------------------------------------------------------------------ changes

    def create(self, job_id: str, config: dict[str, Any], priority: int,
               warnings: Iterable[str] = ()) -> tuple[JobStatus, bool]:
        """New pending job, or the existing one for the same config (idempotent submit)."""
        digest = config_hash(config)
        existing = self.jobs.get(job_id)
        if existing is not None:
            if existing.config_hash != digest:
                raise JobConflictError(
                    f"export {job_id!r} already exists with a different config; use a new id"
                )
            return existing, False
        self.store.write_config(job_id, config)
        status = JobStatus(job_id=job_id, priority=priority, seq=self.next_seq,
                           config_hash=digest, warnings=[*warnings])
        self.next_seq += 1
        self.jobs[job_id] = status
        self._write(status, force=True)
        return status, True

    def update(self, job_id: str, **fields: Any) -> JobStatus:
        status = self.get(job_id)
        state = fields.get("status")
        if status.status.terminal:
            return status  # a terminal state is final
        before = status.status
        for key, value in fields.items():
            setattr(status, key, value)
        now = time.time()
        if state == JobState.PROCESSING and status.started_at is None:
            status.started_at = now
        if state is not None and JobState(state).terminal:
            status.finished_at = now
            status.eta_seconds = None
            if state == JobState.COMPLETED:
                status.progress = 1.0
            if self.metrics is not None and status.started_at is not None:
                self.metrics.job_finished(JobState(state), now - status.started_at)
        self._touch(status)
        self._write(status, force=state is not None or "error" in fields)
        if state is not None and state != before:
            self.report_states()
        return status

    def add_work(self, job_id: str, bytes_: int = 0, frames: int = 0, samples: int = 0) -> None:
        status = self.jobs.get(job_id)
        if status is None or status.status.terminal:
            return
        status.bytes_done += bytes_
        status.frames_done += frames
        status.samples_done += samples
        if self.metrics is not None:
            self.metrics.work(bytes_, frames)
        self._recompute(status)
        self._touch(status)
        self._write(status)

    def add_placement(self, job_id: str, placement: PiecePlacement) -> None:
        status = self.jobs.get(job_id)
        if status is not None:
            status.pieces.append(placement)
            self._touch(status)
            self._write(status)

    def add_webhook_attempt(self, job_id: str, attempt: dict[str, Any]) -> None:
        """Record one webhook delivery attempt (they happen after the job is terminal)."""
        status = self.jobs.get(job_id)
        if status is not None:
            status.webhook_attempts.append(attempt)
            self._touch(status)
            self._write(status, force=True)

    def forget(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)
        self.report_states()

    # ------------------------------------------------------------------ internals

    def _recompute(self, s: JobStatus) -> None:
        p = Progress(s.bytes_total, s.frames_total, s.samples_total, s.pixels_per_frame,
                     s.bytes_done, s.frames_done, s.samples_done)
        s.progress = min(MAX_RUNNING_PROGRESS, p.fraction)
        if s.started_at is not None and s.progress > 0.02:
            elapsed = time.time() - s.started_at
            s.eta_seconds = round(elapsed * (1 - s.progress) / s.progress, 1)

    def _touch(self, s: JobStatus) -> None:
        s.updated_at = time.time()
        s.version += 1

    def _write(self, s: JobStatus, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._written.get(s.job_id, 0.0) < PROGRESS_WRITE_INTERVAL:
            return
        self._written[s.job_id] = now
        self.store.write_status(s, durable=force)

    def flush(self) -> None:
        for s in self.jobs.values():
            self.store.write_status(s)

    def report_states(self) -> None:
        if self.metrics is not None:
            counts = {state: 0 for state in JobState}
            for s in self.jobs.values():
                counts[s.status] += 1
            self.metrics.job_states(counts)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=2)
class StatusActor:
    """The named status actor (one per cluster). Async: one event loop, no locks needed."""

    def __init__(self, export_root: str) -> None:
        from pathlib import Path

        self.book = StatusBook(JobStore(Path(export_root)), Metrics())
        self._changed: dict[str, asyncio.Event] = {}

    def _notify(self, job_id: str) -> None:
        event = self._changed.pop(job_id, None)
        if event is not None:
            event.set()

    async def create(self, job_id: str, config: dict[str, Any], priority: int,
                     warnings: Iterable[str] = ()) -> tuple[JobStatus, bool]:
        result = self.book.create(job_id, config, priority, warnings)
        self._notify(job_id)
        return result

    async def update(self, job_id: str, fields: dict[str, Any]) -> JobStatus:
        status = self.book.update(job_id, **fields)
        self._notify(job_id)
        return status

    async def add_work(self, job_id: str, bytes_: int = 0, frames: int = 0,
                       samples: int = 0) -> None:
        self.book.add_work(job_id, bytes_, frames, samples)
        self._notify(job_id)

    async def add_placement(self, job_id: str, placement: PiecePlacement) -> None:
        self.book.add_placement(job_id, placement)

    async def add_webhook_attempt(self, job_id: str, attempt: dict[str, Any]) -> None:
        self.book.add_webhook_attempt(job_id, attempt)
        self._notify(job_id)

    async def get(self, job_id: str) -> JobStatus:
        return self.book.get(job_id)

    async def list(self, states: list[JobState] | None = None) -> list[JobStatus]:
        return self.book.list(states)

    async def forget(self, job_id: str) -> None:
        self.book.forget(job_id)
        self._notify(job_id)

    async def wait_change(self, job_id: str, version: int, timeout: float) -> JobStatus:
        """The job's status once its version passes ``version`` (or after ``timeout``)."""
        status = self.book.get(job_id)
        if status.version > version or status.status.terminal:
            return status
        event = self._changed.setdefault(job_id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
        return self.book.get(job_id)

    async def flush(self) -> None:
        self.book.flush()

    async def report_states(self) -> None:
        """Set the job-state gauges again (the coordinator calls this periodically)."""
        self.book.report_states()

    async def ping(self) -> str:
        return "ok"
