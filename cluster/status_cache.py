"""A replica's copy of every job's status, kept current by the status actor's change feed.

The editor polls ``GET .../status`` every few hundred ms per job; asking the status actor
each time cost a Ray call on both sides per poll. A ``StatusCache`` instead follows the
feed (``StatusActor.changes``) with one long-poll at a time and answers from memory, with
the answer's bytes rendered once per version (``body``). Event streams wait on it too.

Consistency rules (``_newer`` orders two documents of one job id):

* only newer documents replace older ones: a later job under a re-used id (later
  ``created_at``) beats an earlier one; for one job a final state beats any other (final
  states never change) and otherwise the higher ``version`` wins;
* writes made through this replica (submit, cancel, delete; ``wrote``/``deleted``) go in at
  once from their answers, so the client that made them reads them on its next request; a
  deleted job is remembered (``_buried``) so an older document still on its way cannot
  bring it back;
* a document that did not come from the feed (a write's answer, a fallback read) may come
  from an actor incarnation other than the feed's, whose versions are not comparable: it
  is taken only if the feed's incarnation did not change while it was fetched, and when
  the feed later starts over from a snapshot such documents are dropped, not trusted;
* nothing is served from memory unless the feed is live: its last poll succeeded less
  than ``live_window`` seconds ago and the feed task runs. Otherwise, and for a job it does
  not hold, a read asks the actor as before (and keeps the answer).

Dropping an entry is always safe (the next read asks the actor), so every doubtful case
drops. Only the event loop that created the cache may use it (no locks: one loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import dataclass, field
from typing import Protocol

from .jobs import JobStatus
from .status import ChangeBatch

log = logging.getLogger("cutfarm.status_cache")

#: How long one feed poll waits for a change in the actor before answering "nothing".
POLL_TIMEOUT = 2.0
#: The cache answers only while its last successful poll is at most this old.
LIVE_WINDOW = POLL_TIMEOUT + 3.0
#: Polls start at most this often: changes that come faster (progress of many running
#: jobs) are picked up together; writes through this replica do not wait for it.
MIN_POLL_INTERVAL = 0.1
#: Retry delays of a failing feed (the status actor restarting or gone).
BACKOFF_START, BACKOFF_MAX = 0.1, 5.0
#: Jobs kept; the oldest-changed go first (a read of one of them asks the actor again).
MAX_ENTRIES = 10_000
#: Deleted jobs remembered against late documents of theirs.
MAX_BURIED = 1024
#: An event stream sends at most one event per this many seconds: every state the job
#: entered and then its latest document, so only progress ticks in between are merged.
#: The feed brings a running job's progress every MIN_POLL_INTERVAL; sending each tick to
#: each of 20 streams was ~180 events a second, the API replica's second-largest cost under
#: the load benchmark, for a progress bar nobody reads ten times a second.
EVENT_MIN_INTERVAL = 0.25
#: State documents kept per job for event streams (a job has a handful of states).
MAX_HISTORY = 8

#: Renders the answer for a status: its bytes, and how long they stay valid (None: as long
#: as the status does; e.g. a signed download link expires).
Renderer = Callable[[JobStatus], tuple[bytes, float | None]]


class StatusSource(Protocol):
    """What the cache asks (the status actor, through ``CutfarmCluster``)."""

    async def changes(self, epoch: str | None, after: int, timeout: float) -> ChangeBatch: ...

    async def fetch(self, job_id: str) -> JobStatus: ...

    async def wait_change(self, job_id: str, version: int, timeout: float) -> JobStatus: ...


def _identity(s: JobStatus) -> tuple[float, int]:
    """Tells jobs that re-use an id apart: a later submit under the same id is later."""
    return s.created_at, s.seq


def _newer(new: JobStatus, old: JobStatus) -> bool:
    """Whether ``new`` is a later document than ``old`` (same job id)."""
    if _identity(new) != _identity(old):
        return _identity(new) > _identity(old)
    if new.status.terminal != old.status.terminal:
        return new.status.terminal  # a final state is final
    return new.version > old.version


def _state(s: JobStatus) -> tuple[str, str]:
    return s.status.value, s.stage


@dataclass
class _Entry:
    status: JobStatus
    #: From the feed of the current incarnation (not a write's answer or a fallback read).
    confirmed: bool
    #: Documents where a state (status or stage) began, oldest first, for event streams.
    history: deque[JobStatus] = field(default_factory=lambda: deque(maxlen=MAX_HISTORY))
    body: bytes | None = None
    body_key: Hashable = None
    body_until: float = 0.0

    def after(self, sent: JobStatus, comparable: bool) -> list[JobStatus]:
        """What a stream that last sent ``sent`` sends next: the states begun since, then
        the latest. ``comparable``: ``sent`` is from the cache's current incarnation."""
        latest = self.status
        if not comparable:  # versions may have gone back: any other document is news
            same = latest.version == sent.version and _identity(latest) == _identity(sent)
            return [] if same else [latest]
        if not _newer(latest, sent):
            return []
        between = [s for s in self.history if _newer(s, sent) and _newer(latest, s)]
        return [*between, latest]


class StatusCache:
    """Every job's latest status in this process, fed by one long-poll loop (``start``)."""

    def __init__(self, source: StatusSource, *, poll_timeout: float = POLL_TIMEOUT,
                 live_window: float = LIVE_WINDOW, min_interval: float = MIN_POLL_INTERVAL,
                 max_entries: int = MAX_ENTRIES) -> None:
        self.source = source
        self.poll_timeout = poll_timeout
        self.live_window = live_window
        self.min_interval = min_interval
        self.max_entries = max_entries
        #: The feed position: the actor incarnation and its change number.
        self.epoch: str | None = None
        self.seq = 0
        #: Bumped each time the feed starts over from a snapshot.
        self.generation = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self._entries: dict[str, _Entry] = {}
        self._buried: dict[str, tuple[float, int]] = {}
        self._waiters: dict[str, asyncio.Event] = {}
        self._last_ok = float("-inf")
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._failing = False

    # ------------------------------------------------------------------ feed

    def start(self) -> None:
        """Start the feed task on the running loop (the only loop that may use the cache)."""
        self.loop = asyncio.get_running_loop()
        self._stopped = False
        self._spawn()

    def stop(self) -> None:
        self._stopped = True
        if self._task is not None:
            self._task.cancel()

    def _spawn(self) -> None:
        if self.loop is not None and (self._task is None or self._task.done()):
            self._task = self.loop.create_task(self._follow(), name="status-feed")

    @property
    def live(self) -> bool:
        """Whether answers from memory are current (to within one feed round trip)."""
        if self._task is None or self._task.done():
            if not self._stopped:
                self._spawn()  # the loop never ends by itself; if it did, start it again
            return False
        return time.monotonic() - self._last_ok <= self.live_window

    async def _follow(self) -> None:
        """The feed loop: one pending ``changes`` call at a time, forever; backs off while
        the actor is unreachable (memory is not served meanwhile)."""
        delay = BACKOFF_START
        while True:
            started = time.monotonic()
            if await self._poll():
                delay = BACKOFF_START
                rest = self.min_interval - (time.monotonic() - started)
            else:
                rest, delay = delay, min(delay * 2, BACKOFF_MAX)
            if rest > 0:
                await asyncio.sleep(rest)

    async def _poll(self) -> bool:
        """One poll of the feed; False when it failed."""
        try:
            batch = await self.source.changes(self.epoch, self.seq, self.poll_timeout)
        except Exception as exc:  # the actor is restarting or gone: retried with backoff
            self._down(exc)
            return False
        try:
            self.apply(batch)
        except Exception as exc:  # a bug must not leave memory half-updated and trusted
            log.exception("a status feed answer could not be applied; starting over")
            self.epoch = None  # the next poll gets a snapshot
            self._down(exc)
            return False
        if self._failing:
            log.info("status feed is back")
            self._failing = False
        self._last_ok = time.monotonic()
        return True

    def _down(self, exc: Exception) -> None:
        if not self._failing:  # once per outage (a status actor of an older release,
            # without the feed, is one that never ends: reads then all go to the actor)
            log.warning("status feed unavailable (%s: %s); reading from the status actor "
                        "until it is back", type(exc).__name__, exc)
        self._failing = True
        self._last_ok = float("-inf")
        self._wake_all()  # streams waiting on memory go and ask the actor

    def apply(self, batch: ChangeBatch) -> None:
        """Take one answer of the feed."""
        if batch.reset or batch.epoch != self.epoch:
            self._reset(batch)
            return
        touched = set()
        for status in batch.statuses:
            self._offer(status, confirmed=True)
            touched.add(status.job_id)
        for job_id in batch.removed:
            self._entries.pop(job_id, None)
            touched.add(job_id)
        self.seq = batch.seq
        for job_id in touched:
            self._wake(job_id)

    def _reset(self, batch: ChangeBatch) -> None:
        """Start over from a snapshot. Documents that did not come from the feed may be
        newer than the snapshot or from an older incarnation: they are dropped, not kept."""
        old, self._entries = self._entries, {}
        for status in batch.statuses:
            before = old.get(status.job_id)
            if before is None or before.confirmed:
                self._offer(status, confirmed=True)
        self.epoch, self.seq = batch.epoch, batch.seq
        self.generation += 1
        self._wake_all()

    # ------------------------------------------------------------------ entries

    def _offer(self, status: JobStatus, confirmed: bool) -> None:
        """Keep ``status`` if it is newer than what is held (and not of a deleted job)."""
        job_id = status.job_id
        buried = self._buried.get(job_id)
        if buried is not None and _identity(status) <= buried:
            return
        entry = self._entries.get(job_id)
        if entry is not None and not _newer(status, entry.status):
            if confirmed and status.version == entry.status.version and _identity(
                    status) == _identity(entry.status):
                entry.confirmed = True
            return
        new = _Entry(status, confirmed)
        if entry is not None and _identity(entry.status) == _identity(status):
            new.history = entry.history
        if entry is None or _state(entry.status) != _state(status) or not new.history:
            new.history.append(status)
        self._entries.pop(job_id, None)  # re-inserted last: the oldest change goes first
        self._entries[job_id] = new
        while len(self._entries) > self.max_entries:
            self._entries.pop(next(iter(self._entries)))

    def token(self) -> str | None:
        """Taken before asking the actor; hand it to ``wrote``/``deleted`` with the answer."""
        return self.epoch

    def wrote(self, token: str | None, status: JobStatus) -> None:
        """An answer of the status actor (a write's result, a read): keep it if the feed's
        incarnation did not change meanwhile (else it may be from another: drop the job)."""
        if token != self.epoch:
            self.forget(status.job_id)
            return
        self._offer(status, confirmed=False)
        self._wake(status.job_id)

    def deleted(self, status: JobStatus) -> None:
        """The job was removed through this replica: gone now, and for any late document."""
        self._buried.pop(status.job_id, None)
        self._buried[status.job_id] = _identity(status)
        if len(self._buried) > MAX_BURIED:
            self._buried.pop(next(iter(self._buried)))
        self.forget(status.job_id)

    def forget(self, job_id: str) -> None:
        """Drop what is held for ``job_id``: its next read asks the actor."""
        self._entries.pop(job_id, None)
        self._wake(job_id)

    def peek(self, job_id: str) -> JobStatus | None:
        """The held status, if the feed is live and holds the job."""
        entry = self._entries.get(job_id) if self.live else None
        return entry.status if entry is not None else None

    def __len__(self) -> int:
        return len(self._entries)

    # ------------------------------------------------------------------ reads

    async def get(self, job_id: str) -> JobStatus:
        """The job's status: from memory when live, else from the actor (kept)."""
        held = self.peek(job_id)
        if held is not None:
            return held
        return await self.fetch(job_id)

    async def fetch(self, job_id: str) -> JobStatus:
        """Ask the actor (and keep the answer)."""
        token = self.token()
        try:
            status = await self.source.fetch(job_id)
        except Exception:
            self.forget(job_id)
            raise
        self.wrote(token, status)
        return status

    async def body(self, job_id: str, key: Hashable, render: Renderer) -> bytes:
        """The rendered answer for the job: rendered once per version (and ``key``, e.g.
        the settings it depends on) while it is held; JobNotFoundError for an unknown job."""
        entry = self._entries.get(job_id) if self.live else None
        if entry is None:
            status = await self.fetch(job_id)
            entry = self._entries.get(job_id)
            if entry is None or entry.status is not status:
                return render(status)[0]  # not kept (e.g. older than what is held)
        now = time.monotonic()
        if entry.body is None or entry.body_key != key or now >= entry.body_until:
            body, ttl = render(entry.status)
            entry.body, entry.body_key = body, key
            entry.body_until = float("inf") if ttl is None else now + ttl
        return entry.body

    # ------------------------------------------------------------------ event streams

    async def follow(self, first: JobStatus, keepalive: float) -> AsyncIterator[
            JobStatus | None]:
        """The job's documents after ``first``, in order, until a final one: each state it
        enters, then its latest, at most once per ``EVENT_MIN_INTERVAL``; None after
        ``keepalive`` seconds without a change."""
        sent, generation = first, self.generation
        last = time.monotonic()  # the caller has just sent ``first``
        while not sent.status.terminal:
            pause = last + EVENT_MIN_INTERVAL - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            found = await self._next(sent, generation,
                                     max(last + keepalive - time.monotonic(), 0.0))
            last = time.monotonic()
            generation = self.generation
            if not found:
                yield None
            for status in found:
                sent = status
                yield status

    async def _next(self, sent: JobStatus, generation: int, timeout: float) -> list[JobStatus]:
        job_id = sent.job_id
        deadline = time.monotonic() + timeout
        while True:
            entry = self._entries.get(job_id) if self.live else None
            remaining = deadline - time.monotonic()
            if entry is None:  # not held, or the feed is down: wait in the actor, as before
                token = self.token()
                status = await self.source.wait_change(job_id, sent.version,
                                                       max(remaining, 0.0))
                self.wrote(token, status)
                same = (status.version == sent.version
                        and _identity(status) == _identity(sent))
                return [] if same else [status]
            found = entry.after(sent, comparable=generation == self.generation)
            if found or remaining <= 0:
                return found
            event = self._waiters.setdefault(job_id, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), remaining)

    def _wake(self, job_id: str) -> None:
        event = self._waiters.pop(job_id, None)
        if event is not None:
            event.set()

    def _wake_all(self) -> None:
        waiters, self._waiters = self._waiters, {}
        for event in waiters.values():
            event.set()
