"""Many byte ranges (the samples of a GOP) fetched by a few large GETs.

A copy piece needs thousands of samples that lie close together but not back to back
(audio chunks sit between the video ones). One GET per sample would be slow; one GET over
the whole span would fetch the audio too. :func:`plan_requests` merges neighbouring ranges
into one request while the bytes merged in but not asked for (the gaps) stay within
``waste_ratio`` of the bytes asked for and each gap within ``max_gap``; a request never
exceeds ``max_request`` (a range larger than that is split). So, retries aside,

    bytes requested <= (1 + waste_ratio) * bytes asked for.

:func:`read_pinned_ranges` then runs the requests with up to ``read_ahead`` of them in
flight beyond the one being consumed, yielding each range's bytes in the caller's order;
memory stays below ``(read_ahead + 1) * max_request``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from .fetch import PinnedObject

__all__ = [
    "DEFAULT_MAX_GAP",
    "DEFAULT_MAX_REQUEST",
    "DEFAULT_WASTE_RATIO",
    "RangeRequest",
    "plan_requests",
    "read_pinned_ranges",
]

MiB = 1 << 20
DEFAULT_MAX_GAP = 1 * MiB
DEFAULT_MAX_REQUEST = 16 * MiB
DEFAULT_WASTE_RATIO = 0.03


@dataclass
class RangeRequest:
    """One GET ``[start, end)`` and what it carries: (range index, offset, size) pieces."""

    start: int
    end: int
    pieces: list[tuple[int, int, int]] = field(default_factory=list)
    useful: int = 0  # bytes of [start, end) that some range asked for

    @property
    def size(self) -> int:
        return self.end - self.start

    def absorbs(self, offset: int, size: int, max_gap: int, max_request: int,
                waste_ratio: float) -> bool:
        """Whether ``[offset, offset + size)`` may join this request (and then joins it)."""
        if offset < self.start:
            return False  # backwards: the yield order would need it earlier
        end = max(self.end, offset + size)
        if end - self.start > max_request or offset - self.end > max_gap:
            return False
        useful = self.useful + max(0, offset + size - max(offset, self.end))
        if (end - self.start) - useful > waste_ratio * useful:
            return False
        self.end, self.useful = end, useful
        return True


def _split(ranges: Iterable[tuple[int, int]], max_request: int,
           ) -> Iterator[tuple[int, int, int]]:
    """(range index, offset, size), ranges larger than a request cut into request-sized bits."""
    for index, (offset, size) in enumerate(ranges):
        if offset < 0 or size < 0:
            raise ValueError(f"range {index} ({offset}, {size}) is negative")
        if size == 0:
            yield index, offset, 0
        for at in range(offset, offset + size, max_request):
            yield index, at, min(max_request, offset + size - at)


def plan_requests(
    ranges: Iterable[tuple[int, int]],
    *,
    max_gap: int = DEFAULT_MAX_GAP,
    max_request: int = DEFAULT_MAX_REQUEST,
    waste_ratio: float = DEFAULT_WASTE_RATIO,
) -> list[RangeRequest]:
    """The GETs that fetch ``(offset, size)`` ranges, merged greedily in the given order.

    Empty ranges ride along with the request before them (or the first one).
    """
    if max_request <= 0 or max_gap < 0 or waste_ratio < 0:
        raise ValueError("max_request must be positive, max_gap and waste_ratio >= 0")
    requests: list[RangeRequest] = []
    empties: list[int] = []
    for index, offset, size in _split(ranges, max_request):
        if size == 0:
            if requests:
                requests[-1].pieces.append((index, offset, 0))
            else:
                empties.append(index)
            continue
        current = requests[-1] if requests else None
        if current is None or not current.absorbs(offset, size, max_gap, max_request,
                                                  waste_ratio):
            current = RangeRequest(offset, offset + size, useful=size)
            requests.append(current)
        current.pieces.append((index, offset, size))
    if empties:
        if not requests:
            requests.append(RangeRequest(0, 0))
        requests[0].pieces[:0] = [(index, 0, 0) for index in empties]
    return requests


def read_pinned_ranges(
    obj: PinnedObject,
    ranges: Iterable[tuple[int, int]],
    *,
    max_gap: int = DEFAULT_MAX_GAP,
    max_request: int = DEFAULT_MAX_REQUEST,
    waste_ratio: float = DEFAULT_WASTE_RATIO,
    read_ahead: int = 3,
) -> Iterator[bytes]:
    """Yield the bytes of each range, in order. Leaving the loop early stops the fetches."""
    if read_ahead < 0:
        raise ValueError("read_ahead must be >= 0")
    ranges = list(ranges)
    for index, (offset, size) in enumerate(ranges):
        if offset + size > obj.info.size:
            raise ValueError(f"range {index} ({offset}, {size}) runs past the end of "
                             f"{obj.url} ({obj.info.size} bytes)")
    requests = plan_requests(ranges, max_gap=max_gap, max_request=max_request,
                             waste_ratio=waste_ratio)
    return _deliver(obj, requests, read_ahead)


def _deliver(obj: PinnedObject, requests: list[RangeRequest], read_ahead: int,
             ) -> Iterator[bytes]:
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=read_ahead + 1, thread_name_prefix="s3-ranges")
    futures: dict[int, Future[bytearray]] = {}
    parts: list[bytes] = []  # pieces of a range split over several requests
    try:
        for i, request in enumerate(requests):
            for j in range(i, min(len(requests), i + read_ahead + 1)):
                if j not in futures and requests[j].size:
                    futures[j] = pool.submit(obj.fetch, requests[j].start, requests[j].size,
                                             stop)
            data = futures.pop(i).result() if request.size else bytearray()
            view = memoryview(data)
            for n, (index, offset, size) in enumerate(request.pieces):
                parts.append(bytes(view[offset - request.start:offset - request.start + size]))
                if _range_ends(requests, i, n, index):
                    whole = parts[0] if len(parts) == 1 else b"".join(parts)
                    parts.clear()
                    obj.stats.add(delivered=len(whole))
                    yield whole
            view.release()
    finally:
        stop.set()
        for future in futures.values():
            future.cancel()
        pool.shutdown(wait=False, cancel_futures=True)


def _range_ends(requests: list[RangeRequest], i: int, n: int, index: int) -> bool:
    """Whether piece ``n`` of request ``i`` is the last piece of range ``index``."""
    pieces = requests[i].pieces
    if n + 1 < len(pieces):
        return pieces[n + 1][0] != index
    # Every request carries at least one piece: only the next one's first can continue it.
    return i + 1 == len(requests) or requests[i + 1].pieces[0][0] != index
