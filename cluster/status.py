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
  progress-only changes at most every ``PROGRESS_WRITE_INTERVAL`` per job;
* readers that want every change (each API replica's status cache) follow one change feed
  (``ChangeLog``, ``StatusActor.changes``) instead of asking per request or per stream.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import ray

from render.engine import Progress
from render.paths import media_location

from .errors import JobConflictError, JobNotFoundError
from .jobs import JobState, JobStatus, PiecePlacement, config_hash
from .metrics import Metrics
from .store import Store, open_store

#: Progress-only changes are written to disk at most this often per job; state changes
#: are written at once.
PROGRESS_WRITE_INTERVAL = 0.5
#: Shown until a job completes: a job at 100 % that is not done confuses users.
MAX_RUNNING_PROGRESS = 0.99
#: Placements kept per job (operators look at them; a huge transcode must not grow memory).
MAX_PLACEMENTS = 5000
#: Removed jobs the change feed remembers; a reader further behind than the oldest starts
#: over from a snapshot.
FEED_REMOVALS = 1024
#: Documents of state changes (status or stage) the feed keeps, so a reader sees every state
#: a job went through, not only the last one, even when several came between two polls.
FEED_TRANSITIONS = 1024
#: A snapshot (a reader starting over) holds every unfinished job and this many finished
#: ones, the most recently changed: a restart must not ship thousands of old jobs. A reader
#: asks for any other job when it needs it.
SNAPSHOT_FINISHED = 1000

#: Writes one status document: (status, durable).
Writer = Callable[[JobStatus, bool], None]
#: A reporter's running totals: bytes copied, frames re-encoded, audio samples.
Totals = tuple[int, int, int]


@dataclass(frozen=True)
class ChangeBatch:
    """What changed after a reader's position in the feed (``StatusActor.changes``).

    ``reset``: the reader's position is not one this feed can continue from (another actor
    incarnation, or too far behind): ``statuses`` is then a snapshot that replaces what the
    reader knew, holding every job only when ``complete``. Otherwise ``statuses`` are the
    changed jobs' documents in change order (a job's state changes first, then its latest
    document) and ``removed`` the jobs that are gone. ``epoch``/``seq`` are the position to
    ask from next.
    """

    epoch: str
    seq: int
    statuses: list[JobStatus] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    reset: bool = False
    complete: bool = False


class ChangeLog:
    """A global, growing sequence number per status change, and who changed when.

    Instead of a ring of every (seq, job) change, each job's last change is kept (a dict in
    change order), so a burst of progress ticks never pushes a slow reader out: memory is one
    entry per job, plus ``FEED_REMOVALS`` removals and ``FEED_TRANSITIONS`` state documents.
    ``epoch`` names this incarnation: sequence numbers (and job versions: progress-only
    writes are throttled) start over when the actor restarts.
    """

    def __init__(self) -> None:
        self.epoch = uuid.uuid4().hex
        self.seq = 0
        #: A reader at or after this position has missed no removal.
        self.floor = 0
        self._last: dict[str, int] = {}
        self._removed: dict[str, int] = {}
        self._transitions: deque[tuple[int, JobStatus]] = deque(maxlen=FEED_TRANSITIONS)

    def changed(self, status: JobStatus, new_state: bool = False) -> None:
        """``status`` changed; ``new_state``: its status or stage did (keep this document)."""
        self.seq += 1
        job_id = status.job_id
        self._removed.pop(job_id, None)
        self._last.pop(job_id, None)  # re-inserted last: the dict stays in change order
        self._last[job_id] = self.seq
        if new_state:
            self._transitions.append((self.seq, status.model_copy(deep=True)))

    def removed(self, job_id: str) -> None:
        self.seq += 1
        self._last.pop(job_id, None)
        self._removed.pop(job_id, None)
        self._removed[job_id] = self.seq
        if len(self._removed) > FEED_REMOVALS:
            oldest = next(iter(self._removed))
            self.floor = max(self.floor, self._removed.pop(oldest))

    def since(self, after: int) -> tuple[list[str], list[str], list[JobStatus]] | None:
        """Jobs changed and removed after ``after``, and the state documents recorded since,
        all oldest first; None when this log cannot tell (``after`` is not one of its
        positions, or removals after it were forgotten)."""
        if not self.floor <= after <= self.seq:
            return None
        return (_after(self._last, after), _after(self._removed, after),
                _states_after(self._transitions, after))


def _after(order: dict[str, int], after: int) -> list[str]:
    """Keys of a dict kept in growing-value order whose value is above ``after``, oldest
    first: walked from the newest end, so a reader that is up to date costs nothing."""
    found = []
    for job_id, seq in reversed(order.items()):
        if seq <= after:
            break
        found.append(job_id)
    return found[::-1]


def _states_after(entries: deque[tuple[int, JobStatus]], after: int) -> list[JobStatus]:
    """The recorded state documents after ``after``, oldest first (walked from the newest)."""
    found = []
    for seq, status in reversed(entries):
        if seq <= after:
            break
        found.append(status)
    return found[::-1]


class StatusBook:
    def __init__(self, store: Store, metrics: Metrics | None = None,
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
        self.feed = ChangeLog()
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

    def changes(self, epoch: str | None, after: int) -> ChangeBatch:
        """What changed after position (``epoch``, ``after``) of the feed; a snapshot when
        that position is not one of this incarnation's or is too old."""
        feed = self.feed
        delta = feed.since(after) if epoch == feed.epoch else None
        if delta is None:
            statuses, complete = self.snapshot()
            return ChangeBatch(feed.epoch, feed.seq, statuses, reset=True, complete=complete)
        changed, removed, states = delta
        latest = [self.jobs[job_id] for job_id in changed]
        # A state document is worth sending only when the job has moved on since.
        current = {s.job_id: s.version for s in latest}
        earlier = [s for s in states if current.get(s.job_id, s.version) > s.version]
        return ChangeBatch(feed.epoch, feed.seq, [*earlier, *latest], removed)

    def snapshot(self) -> tuple[builtins.list[JobStatus], bool]:
        """Every unfinished job and the ``SNAPSHOT_FINISHED`` most recently changed finished
        ones; the bool says whether that is every job."""
        active = [s for s in self.jobs.values() if not s.status.terminal]
        finished = [s for s in self.jobs.values() if s.status.terminal]
        if len(finished) > SNAPSHOT_FINISHED:
            finished.sort(key=lambda s: s.updated_at, reverse=True)
            finished = finished[:SNAPSHOT_FINISHED]
        statuses = active + finished
        return statuses, len(statuses) == len(self.jobs)

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
        self.feed.changed(status, new_state=True)
        return status, True

    def update(self, job_id: str, **fields: Any) -> JobStatus:
        status = self.get(job_id)
        state = fields.get("status")
        if status.status.terminal:
            return status  # a terminal state is final
        before, before_stage = status.status, status.stage
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
        self.feed.changed(status, new_state=status.status != before
                          or status.stage != before_stage)
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
        self.feed.changed(status)
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
            self.feed.changed(status)
            self._write(status, force=True)

    def forget(self, job_id: str) -> None:
        if self.jobs.pop(job_id, None) is not None:
            self.feed.removed(job_id)
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
        store = open_store(media_location(export_root))
        self._disk = ThreadPoolExecutor(max_workers=1, thread_name_prefix="status-writer")
        self._durable: Future[None] | None = None
        self.book = StatusBook(store, Metrics(), writer=self._enqueue)
        self._changed: dict[str, asyncio.Event] = {}
        #: Set (and replaced) on every change: wakes every follower of the change feed.
        self._feed_changed = asyncio.Event()

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
        self._feed_changed.set()
        self._feed_changed = asyncio.Event()

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

    async def changes(self, epoch: str | None, after: int, timeout: float) -> ChangeBatch:
        """The change feed: what changed after position (``epoch``, ``after``), once
        something has (or after ``timeout`` seconds, then possibly nothing). A position of
        another incarnation (None: a new reader) or too old gets a snapshot (``reset``).

        One call per API replica is pending at any time, whatever the number of polls and
        event streams it serves; a call pending when this actor dies is retried by Ray on
        the restarted one, which answers it with a snapshot at once.
        """
        feed = self.book.feed
        deadline = asyncio.get_running_loop().time() + timeout
        while epoch == feed.epoch and after == feed.seq:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._feed_changed.wait(), remaining)
        return self.book.changes(epoch, after)

    async def flush(self) -> None:
        """Every document on disk, durably, before this returns."""
        self.book.flush()
        await self._drain()

    async def report_states(self) -> None:
        """Set the job-state gauges again (the coordinator calls this periodically)."""
        self.book.report_states()

    async def ping(self) -> str:
        return "ok"
