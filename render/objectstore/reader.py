"""RangedReader: a seekable, read-only binary file over one S3 object version.

What PyAV (``av.open(reader)``), the MP4 index reader and the sample readers need from a
source file, served from ranged GETs. Reads go through a small LRU page cache:

* a read after a seek (box headers, a sample's first NAL units, PyAV probing) fetches only
  ``min_fetch`` bytes (64 KiB) -- the page holding it, or the whole span asked for;
* each further sequential miss doubles the GET size, up to ``block_size`` (8 MiB), so
  reading a moov or a run of samples costs a handful of requests, not one per read;
* once a stream reaches ``block_size``, up to ``read_ahead`` blocks past the read position
  are fetched by a small thread pool while the caller works, so streaming runs near
  network speed; a seek elsewhere drops them (their transfer is stopped);
* a single read of ``block_size`` or more goes straight from the store to the caller.

Memory per reader is bounded by ``cache_size + read_ahead * block_size`` (plus one read in
progress): 32 MiB with the defaults. A reader is a file object: use it from one thread at
a time (``clone()`` gives another over the same pinned version, sharing the counters).
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from .client import ObjectInfo, S3Client, s3_client, stat
from .fetch import PinnedObject
from .location import ObjectRef
from .ranges import DEFAULT_MAX_GAP, DEFAULT_MAX_REQUEST, DEFAULT_WASTE_RATIO, read_pinned_ranges
from .retry import DEFAULT_RETRY, ReadStats, RetryPolicy, Stopped

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["DEFAULT_BLOCK_SIZE", "DEFAULT_CACHE_SIZE", "DEFAULT_MIN_FETCH", "RangedReader"]

MiB = 1 << 20
DEFAULT_BLOCK_SIZE = 8 * MiB
DEFAULT_MIN_FETCH = 64 * 1024
DEFAULT_CACHE_SIZE = 16 * MiB
DEFAULT_READ_AHEAD = 2


@dataclass
class _Run:
    """A read-ahead fetch of ``count`` pages from ``first``, in flight or done."""

    first: int
    count: int
    future: Future[bytearray]
    stop: threading.Event

    def covers(self, page: int) -> bool:
        return self.first <= page < self.first + self.count


def _check_sizes(block_size: int, min_fetch: int, cache_size: int, read_ahead: int) -> None:
    if min_fetch <= 0 or block_size % min_fetch or block_size < min_fetch:
        raise ValueError("block_size must be a positive multiple of min_fetch")
    if cache_size < 2 * block_size:
        raise ValueError("cache_size must hold at least two blocks")
    if read_ahead < 0:
        raise ValueError("read_ahead must be >= 0")


class RangedReader(io.RawIOBase, BinaryIO):
    """Read-only, seekable file over one S3 object, pinned to the ETag seen at open.

    A ``typing.BinaryIO`` too, so it type-checks wherever the engine takes an open file.

    ``target`` is an ObjectRef (HEAD now, pin what it answers) or an ObjectInfo from an
    earlier HEAD (no request: every worker of a job pins the version its probe saw).
    ``read``/``readinto`` return everything asked for up to the end of the object, never
    less; a version change raises ObjectChangedError, a store that stays down
    StoreUnavailableError, after the retries described in :mod:`render.objectstore`.
    """

    def __init__(
        self,
        target: ObjectRef | ObjectInfo,
        *,
        client: S3Client | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
        min_fetch: int = DEFAULT_MIN_FETCH,
        cache_size: int = DEFAULT_CACHE_SIZE,
        read_ahead: int = DEFAULT_READ_AHEAD,
        retry: RetryPolicy = DEFAULT_RETRY,
        stats: ReadStats | None = None,
    ) -> None:
        super().__init__()
        # First, so that close() (also called by __del__ if the HEAD below fails) works.
        self._pages: OrderedDict[int, bytes] = OrderedDict()
        self._pending: dict[int, _Run] = {}
        self._executor: ThreadPoolExecutor | None = None
        _check_sizes(block_size, min_fetch, cache_size, read_ahead)
        s3 = client if client is not None else s3_client()
        stats = stats if stats is not None else ReadStats()
        info = target if isinstance(target, ObjectInfo) else stat(
            target, client=s3, retry=retry, stats=stats)
        self._obj = PinnedObject(info, s3, retry=retry, stats=stats)
        self._settings = (block_size, min_fetch, cache_size, read_ahead)
        self._page = min_fetch
        self._block_pages = block_size // min_fetch
        self._max_pages = cache_size // min_fetch
        self._read_ahead = read_ahead
        self._n_pages = -(-info.size // min_fetch)
        self._pos = 0
        self._last_page = -2  # page of the previous read's last byte; -2: none yet
        self._window = 1  # pages per GET on the next sequential miss

    # -- what callers see --------------------------------------------------------------

    @property
    def info(self) -> ObjectInfo:
        return self._obj.info

    @property
    def name(self) -> str:
        """The object's file name (what messages about the source call it)."""
        return self._obj.info.ref.name

    @property
    def mode(self) -> str:
        return "rb"

    @property
    def size(self) -> int:
        return self._obj.info.size

    @property
    def url(self) -> str:
        return self._obj.url

    @property
    def stats(self) -> ReadStats:
        return self._obj.stats

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def write(self, data: object, /) -> int:
        raise io.UnsupportedOperation(f"{self.url} is opened read-only")

    def tell(self) -> int:
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET, /) -> int:
        self._check_open()
        self._pos = seek_position(self._pos, offset, whence, self.size)
        return self._pos

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        self._check_open()
        dest = memoryview(buffer).cast("B")
        n = max(0, min(len(dest), self.size - self._pos))
        if n:
            self._read_at(self._pos, dest[:n])
            self._pos += n
            self.stats.add(delivered=n)
        return n

    def read(self, size: int | None = -1, /) -> bytes:
        self._check_open()
        left = max(0, self.size - self._pos)
        n = left if size is None or size < 0 else min(size, left)
        buf = bytearray(n)
        self.readinto(buf)
        return bytes(buf)

    def readall(self) -> bytes:
        return self.read(-1)

    def close(self) -> None:
        if not self.closed:
            self._drop_pending()
            if self._executor is not None:
                # Running fetches see their stop event at the next chunk and end by themselves.
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None
            self._pages.clear()
        super().close()

    def clone(self) -> RangedReader:
        """Another reader of the same pinned version (no request), sharing the counters."""
        block_size, min_fetch, cache_size, read_ahead = self._settings
        return RangedReader(self.info, client=self._obj.client, block_size=block_size,
                            min_fetch=min_fetch, cache_size=cache_size, read_ahead=read_ahead,
                            retry=self._obj.retry, stats=self.stats)

    def read_ranges(
        self,
        ranges: Iterable[tuple[int, int]],
        *,
        max_gap: int = DEFAULT_MAX_GAP,
        max_request: int = DEFAULT_MAX_REQUEST,
        waste_ratio: float = DEFAULT_WASTE_RATIO,
        read_ahead: int = 3,
    ) -> Iterator[bytes]:
        """The bytes of each ``(offset, size)`` in order, by coalesced GETs (see ranges.py).

        Independent of the file position and the page cache; counted in ``stats``.
        """
        self._check_open()
        return read_pinned_ranges(self._obj, ranges, max_gap=max_gap, max_request=max_request,
                                  waste_ratio=waste_ratio, read_ahead=read_ahead)

    # -- the page cache ------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"I/O operation on closed reader of {self.url}")

    def _read_at(self, pos: int, dest: memoryview) -> None:
        n = len(dest)
        first, last = pos // self._page, (pos + n - 1) // self._page
        sequential = first in (self._last_page, self._last_page + 1)
        if not sequential:
            self._window = 1
            self._drop_pending()
        if n >= self._block_pages * self._page:
            self._obj.fetch_into(pos, dest)  # as large as a block: not worth caching
            self._window = self._block_pages
        else:
            self._copy_pages(pos, dest, first, last, sequential)
        moved = last != self._last_page
        self._last_page = last
        if moved and self._window >= self._block_pages:
            self._prefetch(last + 1)

    def _copy_pages(self, pos: int, dest: memoryview, first: int, last: int,
                    sequential: bool) -> None:
        done = 0
        page = first
        while done < len(dest):
            data = self._get_page(page, last, sequential)
            off = pos + done - page * self._page
            k = min(len(data) - off, len(dest) - done)
            dest[done:done + k] = data[off:off + k]
            done += k
            page += 1

    def _get_page(self, page: int, need_last: int, sequential: bool) -> bytes:
        data = self._pages.get(page)
        if data is not None:
            self._pages.move_to_end(page)
            return data
        run = self._pending_run(page)
        if run is None or not self._harvest(run):
            if sequential:
                self._window = min(self._window * 2, self._block_pages)
            self._fetch_run(page, need_last)
        return self._pages[page]

    def _pending_run(self, page: int) -> _Run | None:
        return next((run for run in self._pending.values() if run.covers(page)), None)

    def _taken(self, page: int) -> bool:
        return page in self._pages or self._pending_run(page) is not None

    def _trim(self, first: int, last: int) -> int:
        """``last``, or the page before the first one after ``first`` that is already had."""
        return next((p - 1 for p in range(first + 1, last + 1) if self._taken(p)), last)

    def _byte_span(self, first: int, last: int) -> tuple[int, int]:
        start = first * self._page
        return start, min(self.size, (last + 1) * self._page) - start

    def _fetch_run(self, first: int, need_last: int) -> None:
        last = min(max(need_last, first + self._window - 1), self._n_pages - 1)
        last = self._trim(first, last)
        self._insert(first, self._obj.fetch(*self._byte_span(first, last)))

    def _insert(self, first: int, data: bytearray) -> None:
        view = memoryview(data)
        for i in range(0, len(data), self._page):
            page = first + i // self._page
            self._pages[page] = bytes(view[i:i + self._page])
            self._pages.move_to_end(page)
        while len(self._pages) > self._max_pages:
            self._pages.popitem(last=False)

    def _harvest(self, run: _Run) -> bool:
        """Wait for a read-ahead run and cache it; False if it was stopped meanwhile."""
        del self._pending[run.first]
        try:
            data = run.future.result()
        except Stopped:
            return False
        self._insert(run.first, data)
        return True

    def _prefetch(self, page: int) -> None:
        """Keep up to ``read_ahead`` block-sized runs in flight ahead of ``page``."""
        horizon = min(self._n_pages, page + self._read_ahead * self._block_pages)
        while len(self._pending) < self._read_ahead and page < horizon:
            run = self._pending_run(page)
            if run is not None:
                page = run.first + run.count
            elif page in self._pages:
                page += 1
            else:
                # Whole blocks even past the horizon: runs cut to fit it would be tiny GETs.
                last = self._trim(page, min(page + self._block_pages, self._n_pages) - 1)
                self._submit(page, last)
                page = last + 1

    def _submit(self, first: int, last: int) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self._read_ahead,
                                                thread_name_prefix="s3-read-ahead")
        stop = threading.Event()
        start, length = self._byte_span(first, last)
        future = self._executor.submit(self._obj.fetch, start, length, stop)
        self._pending[first] = _Run(first, last - first + 1, future, stop)

    def _drop_pending(self) -> None:
        for run in self._pending.values():
            run.stop.set()
            run.future.cancel()
        self._pending.clear()


def seek_position(pos: int, offset: int, whence: int, end: int) -> int:
    """Where ``seek(offset, whence)`` lands for a stream at ``pos`` of length ``end``."""
    base = {io.SEEK_SET: 0, io.SEEK_CUR: pos, io.SEEK_END: end}.get(whence)
    if base is None:
        raise ValueError(f"invalid whence ({whence})")
    if base + offset < 0:
        raise ValueError(f"negative seek position {base + offset}")
    return base + offset
