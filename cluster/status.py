"""The status book: every job's state, kept in memory and written through to status.json.

``StatusBook`` is plain Python (tested without Ray); ``StatusActor`` is the one named,
detached Ray actor per cluster that owns it. On start it reloads every status.json, so a
restarted actor, or a restarted cluster, loses no job.

It answers every poll and event stream of every running job, so it stays light:

* the status document is small and does not grow with the work: where each piece ran is
  kept beside it (``placements``), not in it;
* work is reported as running totals per reporter (``report_work``): a retried call or a
  retried task sets a total again instead of adding it twice;
* in the actor, files are written by one writer thread in order, never on the event loop;
  progress-only changes at most every ``PROGRESS_WRITE_INTERVAL`` per job.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
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
#: Placements kept per job (operators look at them; a huge transcode must not grow memory).
MAX_PLACEMENTS = 5000

#: Writes one status document: (status, durable).
Writer = Callable[[JobStatus, bool], None]
#: A reporter's running totals: bytes copied, frames re-encoded, audio samples.
Totals = tuple[int, int, int]


class StatusBook:
    def __init__(self, store: JobStore, metrics: Metrics | None = None,
                 writer: Writer | None = None) -> None:
        self.store = store
        self.metrics = metrics
        self.writer: Writer = writer or (
            lambda s, durable: store.write_status_data(s.job_id, s.to_file(), durable))
        self.jobs: dict[str, JobStatus] = {}
        for status, repaired in store.iter_statuses():
            self.jobs[status.job_id] = status
            if repaired:  # a damaged status.json becomes a readable failed job
                self.writer(status, True)
        self.next_seq = max((s.seq for s in self.jobs.values()), default=0) + 1
        self.placements: dict[str, list[PiecePlacement]] = {}
        self._work: dict[str, dict[str, Totals]] = {}
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

    def page(self, states: Iterable[JobState] | None, after: int, limit: int) -> tuple[
            builtins.list[JobStatus], int | None]:
        """Up to ``limit`` jobs in arrival order after arrival number ``after``, and the
        cursor for the next page (None on the last)."""
        jobs = [s for s in self.list(states) if s.seq > after]
        more = len(jobs) > limit
        jobs = jobs[:limit]
        return jobs, (jobs[-1].seq if more and jobs else None)

    def pieces(self, job_id: str) -> tuple[PiecePlacement, ...]:
        self.get(job_id)
        return tuple(self.placements.get(job_id, ()))

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
        if fields.pop("reset_work", False):
            # The job runs again from the start: its reporters' totals start from zero.
            self._work.pop(job_id, None)
            self.placements.pop(job_id, None)
            fields.update(bytes_done=0, frames_done=0, samples_done=0, progress=0.0,
                          eta_seconds=None)
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
            self._work.pop(job_id, None)
        self._touch(status)
        self._write(status, force=state is not None or "error" in fields)
        if state is not None and state != before:
            self.report_states()
        return status

    def report_work(self, job_id: str, reporter: str, bytes_: int = 0, frames: int = 0,
                    samples: int = 0) -> None:
        """``reporter``'s running totals so far (a piece, the audio, the concat).

        Totals only grow: a retried call changes nothing, and a retried task that starts
        again from zero is not counted until it has done more than its first attempt.
        """
        status = self.jobs.get(job_id)
        if status is None or status.status.terminal:
            return
        per_job = self._work.setdefault(job_id, {})
        old = per_job.get(reporter, (0, 0, 0))
        new = (max(old[0], bytes_), max(old[1], frames), max(old[2], samples))
        if new == old:
            return
        per_job[reporter] = new
        status.bytes_done += new[0] - old[0]
        status.frames_done += new[1] - old[1]
        status.samples_done += new[2] - old[2]
        if self.metrics is not None:
            self.metrics.work(new[0] - old[0], new[1] - old[1])
        self._recompute(status)
        self._touch(status)
        self._write(status)

    def add_placement(self, job_id: str, placement: PiecePlacement) -> None:
        if job_id in self.jobs:
            kept = self.placements.setdefault(job_id, [])
            if len(kept) < MAX_PLACEMENTS:
                kept.append(placement)

    def add_webhook_attempt(self, job_id: str, attempt: dict[str, Any]) -> None:
        """Record one webhook delivery attempt (they happen after the job is terminal)."""
        status = self.jobs.get(job_id)
        if status is not None:
            status.webhook_attempts.append(attempt)
            self._touch(status)
            self._write(status, force=True)

    def forget(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)
        self.placements.pop(job_id, None)
        self._work.pop(job_id, None)
        self._written.pop(job_id, None)
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
        self.writer(s, force)

    def flush(self) -> None:
        for s in self.jobs.values():
            self.writer(s, True)

    def report_states(self) -> None:
        if self.metrics is not None:
            counts = {state: 0 for state in JobState}
            for s in self.jobs.values():
                counts[s.status] += 1
            self.metrics.job_states(counts)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=2)
class StatusActor:
    """The named status actor (one per cluster). Async: one event loop, no locks needed.

    The loop only changes memory and answers; the documents are serialised on the loop (a
    consistent snapshot) and written by one thread, in order. A call that changed a job's
    state returns only once that is on disk: a caller acting on "completed" must never
    meet "processing" again after this actor restarts.
    """

    def __init__(self, export_root: str) -> None:
        from pathlib import Path

        store = JobStore(Path(export_root))
        self._disk = ThreadPoolExecutor(max_workers=1, thread_name_prefix="status-writer")
        self._durable: Future[None] | None = None
        self.book = StatusBook(store, Metrics(), writer=self._enqueue)
        self._changed: dict[str, asyncio.Event] = {}

    def _enqueue(self, status: JobStatus, durable: bool) -> None:
        job_id, data = status.job_id, status.to_file()
        done = self._disk.submit(self.book.store.write_status_data, job_id, data, durable)
        if durable:
            self._durable = done

    async def _drain(self) -> None:
        """Wait until every write queued so far is done."""
        await asyncio.wrap_future(self._disk.submit(lambda: None))

    async def _written(self) -> None:
        """Wait for the last durable write (and so every write before it) to finish."""
        done, self._durable = self._durable, None
        if done is not None:
            await asyncio.wrap_future(done)

    def _notify(self, job_id: str) -> None:
        event = self._changed.pop(job_id, None)
        if event is not None:
            event.set()

    async def create(self, job_id: str, config: dict[str, Any], priority: int,
                     warnings: Iterable[str] = ()) -> tuple[JobStatus, bool]:
        result = self.book.create(job_id, config, priority, warnings)
        await self._written()
        self._notify(job_id)
        return result

    async def update(self, job_id: str, fields: dict[str, Any]) -> JobStatus:
        status = self.book.update(job_id, **fields)
        await self._written()
        self._notify(job_id)
        return status

    async def report_work(self, job_id: str, reporter: str, bytes_: int = 0, frames: int = 0,
                          samples: int = 0) -> None:
        self.book.report_work(job_id, reporter, bytes_, frames, samples)
        self._notify(job_id)

    async def add_placement(self, job_id: str, placement: PiecePlacement) -> None:
        self.book.add_placement(job_id, placement)

    async def pieces(self, job_id: str) -> tuple[PiecePlacement, ...]:
        return self.book.pieces(job_id)

    async def add_webhook_attempt(self, job_id: str, attempt: dict[str, Any]) -> None:
        self.book.add_webhook_attempt(job_id, attempt)
        await self._written()
        self._notify(job_id)

    async def get(self, job_id: str) -> JobStatus:
        return self.book.get(job_id)

    async def list(self, states: list[JobState] | None = None) -> list[JobStatus]:
        return self.book.list(states)

    async def page(self, states: builtins.list[JobState] | None, after: int,
                   limit: int) -> tuple[builtins.list[JobStatus], int | None]:
        return self.book.page(states, after, limit)

    async def forget(self, job_id: str) -> None:
        """Drop the job; returns once no write for it is pending (its folder can go)."""
        self.book.forget(job_id)
        self._notify(job_id)
        await self._drain()

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
        """Every document on disk, durably, before this returns."""
        self.book.flush()
        await self._drain()

    async def report_states(self) -> None:
        """Set the job-state gauges again (the coordinator calls this periodically)."""
        self.book.report_states()

    async def ping(self) -> str:
        return "ok"
