"""The status change feed and a replica's status cache, without Ray (issue 12).

The feed (``StatusBook.changes``) is driven directly; the cache (``StatusCache``) reads a
``StatusBook`` through a fake source that copies documents the way a Ray call does.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from cluster import status as status_module
from cluster.errors import ClusterUnavailableError, JobNotFoundError
from cluster.jobs import JobState, JobStatus
from cluster.status import ChangeBatch, StatusBook
from cluster.status_cache import EVENT_MIN_INTERVAL, StatusCache
from cluster.store import JobStore

CFG = {"version": 1, "id": "x", "sources": [], "segments": []}


def new_book(tmp_path: Path) -> StatusBook:
    return StatusBook(JobStore(tmp_path / "exports"))


def copied(batch: ChangeBatch) -> ChangeBatch:
    """What crossing a Ray call does: the reader gets copies, never the book's objects."""
    return ChangeBatch(batch.epoch, batch.seq, [s.model_copy(deep=True) for s in batch.statuses],
                       list(batch.removed), batch.reset, batch.complete)


class BookSource:
    """The status actor's three calls over a plain StatusBook; ``down`` makes them fail."""

    def __init__(self, book: StatusBook) -> None:
        self.book = book
        self.down = False
        self.calls: Counter[str] = Counter()

    def _check(self, name: str) -> None:
        self.calls[name] += 1
        if self.down:
            raise ClusterUnavailableError("the status actor is restarting")

    async def changes(self, epoch: str | None, after: int, timeout: float) -> ChangeBatch:
        self._check("changes")
        deadline = asyncio.get_running_loop().time() + timeout
        while (epoch == self.book.feed.epoch and after == self.book.feed.seq
               and asyncio.get_running_loop().time() < deadline):
            await asyncio.sleep(0.005)  # a long-poll, by polling the plain book
        return copied(self.book.changes(epoch, after))

    async def fetch(self, job_id: str) -> JobStatus:
        self._check("fetch")
        return self.book.get(job_id).model_copy(deep=True)

    async def wait_change(self, job_id: str, version: int, timeout: float) -> JobStatus:
        self._check("wait_change")
        deadline = asyncio.get_running_loop().time() + timeout
        while (self.book.get(job_id).version <= version
               and asyncio.get_running_loop().time() < deadline):
            await asyncio.sleep(0.005)
        return self.book.get(job_id).model_copy(deep=True)


def doc(job_id: str = "export-1", version: int = 1, state: JobState = JobState.PROCESSING,
        created_at: float = 100.0, seq: int = 1, **fields: object) -> JobStatus:
    return JobStatus(job_id=job_id, version=version, status=state, created_at=created_at,
                     seq=seq, updated_at=created_at, **fields)


def batch(epoch: str, seq: int, *statuses: JobStatus, removed: tuple[str, ...] = (),
          reset: bool = False) -> ChangeBatch:
    return ChangeBatch(epoch, seq, list(statuses), list(removed), reset, reset)


def live_cache(source: object = None) -> StatusCache:
    """A cache whose feed is taken by hand (``apply``) and counts as live."""
    cache = StatusCache(source)  # type: ignore[arg-type]
    cache._task = asyncio.get_running_loop().create_future()  # type: ignore[assignment]
    cache._last_ok = float("inf")
    return cache


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


# --------------------------------------------------------------------------- the feed


def test_the_feed_numbers_every_change_and_names_the_jobs(tmp_path: Path) -> None:
    book = new_book(tmp_path)
    first = book.changes(None, 0)
    assert first.reset and first.complete and first.statuses == [] and first.seq == 0
    epoch = first.epoch
    book.create("export-1", CFG, 0)
    book.create("export-2", CFG, 0)
    after_create = book.changes(epoch, 0)
    assert not after_create.reset and after_create.seq == 2
    assert [s.job_id for s in after_create.statuses] == ["export-1", "export-2"]
    assert book.changes(epoch, 2) == ChangeBatch(epoch, 2)  # up to date: nothing
    book.update("export-1", status=JobState.PROCESSING, stage="rendering", bytes_total=100,
                frames_total=0, pixels_per_frame=1)
    for n in range(5):  # progress ticks of one job are one entry, not five
        book.report_work("export-1", "piece-0", bytes_=10 * (n + 1))
    ticks = book.changes(epoch, 2)
    assert ticks.seq == 8
    # The state it entered, then its latest document.
    assert [(s.job_id, s.stage, s.bytes_done) for s in ticks.statuses] == [
        ("export-1", "rendering", 0), ("export-1", "rendering", 50)]
    book.forget("export-2")
    gone = book.changes(epoch, 8)
    assert gone.statuses == [] and gone.removed == ["export-2"] and gone.seq == 9


def test_the_feed_sends_every_state_a_job_went_through(tmp_path: Path) -> None:
    book = new_book(tmp_path)
    epoch = book.changes(None, 0).epoch
    book.create("export-1", CFG, 0)
    seq = book.changes(epoch, 0).seq
    book.update("export-1", status=JobState.PROCESSING, stage="planning")
    book.update("export-1", message="Planning the export")  # not a new state
    book.update("export-1", stage="rendering")
    book.update("export-1", status=JobState.FAILED, stage="failed", error="boom")
    states = [(s.status.value, s.stage) for s in book.changes(epoch, seq).statuses]
    assert states == [("processing", "planning"), ("processing", "rendering"),
                      ("failed", "failed")]


def test_a_reader_of_another_incarnation_or_too_far_behind_starts_over(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status_module, "FEED_REMOVALS", 2)
    monkeypatch.setattr(status_module, "SNAPSHOT_FINISHED", 2)
    book = new_book(tmp_path)
    epoch = book.changes(None, 0).epoch
    for n in range(6):
        book.create(f"export-{n}", CFG, 0)
        if n < 4:
            book.update(f"export-{n}", status=JobState.COMPLETED)
    assert book.changes("another-incarnation", 3).reset
    assert book.changes(epoch, 999).reset  # a position this feed never had
    snapshot = book.changes(None, 0)
    # Every unfinished job, and only the most recently changed finished ones.
    assert sorted(s.job_id for s in snapshot.statuses) == [
        "export-2", "export-3", "export-4", "export-5"]
    assert not snapshot.complete
    seq = book.feed.seq
    for n in range(3):
        book.forget(f"export-{n}")
    assert book.changes(epoch, seq).reset  # the first removal after seq was forgotten
    assert book.changes(epoch, seq + 1).removed == ["export-1", "export-2"]


def test_a_restarted_book_is_a_new_incarnation(tmp_path: Path) -> None:
    book = new_book(tmp_path)
    book.create("export-1", CFG, 0)
    store = JobStore(tmp_path / "exports")
    again = StatusBook(store)
    assert again.feed.epoch != book.feed.epoch
    restarted = again.changes(book.feed.epoch, book.feed.seq)
    assert restarted.reset and [s.job_id for s in restarted.statuses] == ["export-1"]


# --------------------------------------------------------------------------- cache rules


def test_only_newer_documents_replace_older_ones() -> None:
    async def body() -> None:
        cache = live_cache()
        cache.apply(batch("e1", 1, doc(version=3), reset=True))
        cache.apply(batch("e1", 2, doc(version=2, message="late")))  # older: ignored
        assert cache.peek("export-1") == doc(version=3)
        cache.apply(batch("e1", 3, doc(version=5, message="newer")))
        assert cache.peek("export-1").message == "newer"  # type: ignore[union-attr]
        # A final state is final: a non-final document never replaces it, whatever its
        # version (versions may go back when the status actor restarts).
        done = doc(version=4, state=JobState.COMPLETED)
        cache.wrote("e1", done)
        assert cache.peek("export-1") == done
        cache.apply(batch("e1", 4, doc(version=9)))
        assert cache.peek("export-1") == done
        # A new job under a re-used id (created later) replaces the old one's document.
        again = doc(version=0, state=JobState.PENDING, created_at=200.0, seq=7)
        cache.apply(batch("e1", 5, again))
        assert cache.peek("export-1") == again
        cache.apply(batch("e1", 6, doc(version=50, state=JobState.FAILED)))  # the old job
        assert cache.peek("export-1") == again

    run(body)


def test_writes_through_the_replica_are_read_at_once_and_stay() -> None:
    async def body() -> None:
        cache = live_cache()
        cache.apply(batch("e1", 1, doc(version=3), reset=True))
        token = cache.token()
        cancelled = doc(version=4, state=JobState.CANCELLED)
        cache.wrote(token, cancelled)
        assert cache.peek("export-1") == cancelled
        cache.apply(batch("e1", 2, doc(version=3, message="in flight before the cancel")))
        assert cache.peek("export-1") == cancelled
        # Deleted: gone at once, and a document of it still on its way does not bring it back.
        cache.deleted(cancelled)
        assert cache.peek("export-1") is None
        cache.apply(batch("e1", 3, cancelled))
        assert cache.peek("export-1") is None
        resubmitted = doc(version=0, state=JobState.PENDING, created_at=300.0, seq=2)
        cache.wrote(cache.token(), resubmitted)
        assert cache.peek("export-1") == resubmitted

    run(body)


def test_answers_that_may_be_from_another_incarnation_are_not_trusted() -> None:
    async def body() -> None:
        cache = live_cache()
        cache.apply(batch("e1", 5, doc(version=30), doc("export-2", version=8), reset=True))
        token = cache.token()
        # The status actor restarts (progress versions went back) while a write is on its
        # way: its answer may be of either incarnation, so the job is dropped, not kept.
        cache.apply(batch("e2", 1, doc(version=12), doc("export-2", version=3), reset=True))
        assert cache.peek("export-1") == doc(version=12)  # the snapshot, though "older"
        cache.wrote(token, doc(version=31, message="from the old incarnation"))
        assert cache.peek("export-1") is None
        # An answer kept between a restart and the feed noticing it is dropped by the
        # snapshot, not compared with it.
        cache.wrote(cache.token(), doc("export-2", version=5, message="unsure"))
        assert cache.peek("export-2").message == "unsure"  # type: ignore[union-attr]
        cache.apply(batch("e3", 1, doc("export-2", version=1), reset=True))
        assert cache.peek("export-2") is None
        assert cache.peek("export-1") is None  # not in the snapshot: asked again when read

    run(body)


def test_removed_jobs_and_capacity() -> None:
    async def body() -> None:
        cache = live_cache()
        cache.max_entries = 3
        cache.apply(batch("e1", 1, *(doc(f"export-{n}") for n in range(3)), reset=True))
        cache.apply(batch("e1", 2, removed=("export-1",)))
        assert cache.peek("export-1") is None and len(cache) == 2
        cache.apply(batch("e1", 3, doc("export-0", version=2), doc("export-3"), doc("export-4")))
        # The job changed longest ago went first.
        assert cache.peek("export-2") is None and len(cache) == 3

    run(body)


def test_answers_are_rendered_once_per_version() -> None:
    async def body() -> None:
        cache = live_cache()
        cache.apply(batch("e1", 1, doc(version=1), reset=True))
        rendered: list[int] = []

        def render(s: JobStatus) -> tuple[bytes, float | None]:
            rendered.append(s.version)
            return f"v{s.version}".encode(), None

        assert await cache.body("export-1", None, render) == b"v1"
        assert await cache.body("export-1", None, render) == b"v1"
        cache.apply(batch("e1", 2, doc(version=2)))
        assert await cache.body("export-1", None, render) == b"v2"
        assert await cache.body("export-1", "other settings", render) == b"v2"
        assert rendered == [1, 2, 2]
        # An answer that expires (a signed link) is rendered again when it has.
        assert await cache.body("export-1", "k", lambda s: (b"link", -1.0)) == b"link"
        assert await cache.body("export-1", "k", lambda s: (b"renewed", None)) == b"renewed"

    run(body)


# --------------------------------------------------------------------------- the feed loop


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_the_feed_keeps_the_cache_current_and_falls_back_while_it_is_down(
        tmp_path: Path) -> None:
    async def body() -> None:
        book = new_book(tmp_path)
        source = BookSource(book)
        book.create("export-1", CFG, 0)
        cache = StatusCache(source, poll_timeout=0.05, live_window=0.5, min_interval=0.0)
        cache.start()
        try:
            await eventually(lambda: cache.live)
            assert (await cache.get("export-1")).status == JobState.PENDING
            assert source.calls["fetch"] == 0
            book.update("export-1", status=JobState.PROCESSING, message="elsewhere")
            await eventually(lambda: cache.peek("export-1") is not None
                             and cache.peek("export-1").message == "elsewhere")  # type: ignore[union-attr]
            # A job it does not hold yet is asked for, then held.
            book.create("export-2", CFG, 0)
            await cache.get("export-2")
            with pytest.raises(JobNotFoundError):
                await cache.get("export-none")
            # The actor goes away: nothing is served from memory once the feed is late.
            source.down = True
            await eventually(lambda: not cache.live)
            with pytest.raises(ClusterUnavailableError):
                await cache.get("export-1")
            # It restarts as a new incarnation whose versions went back.
            restarted = StatusBook(book.store)
            restarted.update("export-1", message="after the restart")
            source.book, source.down = restarted, False
            await eventually(lambda: cache.live)
            assert cache.epoch == restarted.feed.epoch
            assert (await cache.get("export-1")).message == "after the restart"
        finally:
            cache.stop()

    run(body)


def test_streams_see_every_state_in_order_and_wait_on_memory(tmp_path: Path) -> None:
    async def body() -> None:
        book = new_book(tmp_path)
        source = BookSource(book)
        book.create("export-1", CFG, 0)
        cache = StatusCache(source, poll_timeout=0.05, live_window=0.5, min_interval=0.05)
        cache.start()
        try:
            await eventually(lambda: cache.live)
            first = await cache.get("export-1")
            seen: list[JobStatus | None] = []

            async def follow() -> None:
                async for status in cache.follow(first, keepalive=0.5):
                    seen.append(status)

            task = asyncio.create_task(follow())
            await asyncio.sleep(0.7)
            assert seen == [None]  # a keep-alive, no change
            # Three states between two polls of the feed: none is lost.
            book.update("export-1", status=JobState.PROCESSING, stage="planning")
            book.update("export-1", stage="rendering", bytes_total=10, pixels_per_frame=1)
            book.report_work("export-1", "piece-0", bytes_=5)
            book.update("export-1", status=JobState.COMPLETED, stage="done")
            await asyncio.wait_for(task, 5)
            states = [(s.status.value, s.stage) for s in seen if s is not None]
            assert states == [("processing", "planning"), ("processing", "rendering"),
                              ("completed", "done")]
            versions = [s.version for s in seen if s is not None]
            assert versions == sorted(versions)
            assert source.calls["wait_change"] == 0  # waited on memory, not the actor
        finally:
            cache.stop()

    run(body)


def test_streams_merge_progress_ticks_but_keep_every_state(tmp_path: Path) -> None:
    """Progress every 20 ms for 1.5 s: a stream sends at most one event per
    EVENT_MIN_INTERVAL (the feed alone would bring ~30), yet every state and the last
    progress arrive."""
    async def body() -> None:
        book = new_book(tmp_path)
        source = BookSource(book)
        book.create("export-1", CFG, 0)
        book.update("export-1", status=JobState.PROCESSING, stage="rendering",
                    bytes_total=1000, pixels_per_frame=1)
        cache = StatusCache(source, poll_timeout=0.05, live_window=0.5, min_interval=0.02)
        cache.start()
        try:
            await eventually(lambda: cache.live)
            first = await cache.get("export-1")
            seen: list[JobStatus] = []

            async def follow() -> None:
                async for status in cache.follow(first, keepalive=5.0):
                    if status is not None:
                        seen.append(status)

            task = asyncio.create_task(follow())
            start = time.monotonic()
            for i in range(75):
                book.report_work("export-1", "piece-0", bytes_=10 * (i + 1))  # a running total
                if i == 40:
                    book.update("export-1", stage="assembling")
                await asyncio.sleep(0.02)
            book.update("export-1", status=JobState.COMPLETED, stage="done")
            await asyncio.wait_for(task, 5)
            elapsed = time.monotonic() - start
            assert len(seen) <= elapsed / EVENT_MIN_INTERVAL + 3, (len(seen), elapsed)
            stages = [s.stage for s in seen]
            assert "assembling" in stages and stages[-1] == "done"
            assert seen[-1].bytes_done == 750
            assert [s.version for s in seen] == sorted({s.version for s in seen})
        finally:
            cache.stop()

    run(body)
