"""Ranged GETs of one pinned object version, resumed from the failed offset.

Every GET carries ``Range`` and ``If-Match: <ETag pinned at open>``: a store that still
has that version answers 206, one whose object was replaced answers 412, which becomes
ObjectChangedError. The response's own ETag and Content-Range are checked too, so a store
that ignores ``If-Match`` or ``Range`` is caught instead of silently mixing versions or
handing over the wrong bytes.
"""

from __future__ import annotations

import threading
from typing import Any

from .client import ObjectInfo, S3Client
from .errors import ObjectStoreError, is_transient, object_changed, retry_attempts, translate
from .retry import DEFAULT_RETRY, ReadStats, RetryPolicy, Stopped, backoff, give_up

__all__ = ["PinnedObject"]

# Bytes per body read: small enough that a broken connection loses little (we resume at the
# last whole chunk) and a close is noticed quickly, large enough to cost nothing in calls.
_CHUNK = 256 * 1024


class PinnedObject:
    """Fetches byte ranges of one object version; thread-safe (one client, shared stats)."""

    def __init__(self, info: ObjectInfo, client: S3Client, *,
                 retry: RetryPolicy = DEFAULT_RETRY, stats: ReadStats | None = None) -> None:
        self.info = info
        self.client = client
        self.retry = retry
        self.stats = stats if stats is not None else ReadStats()

    @property
    def url(self) -> str:
        return self.info.url

    def fetch(self, start: int, length: int, stop: threading.Event | None = None) -> bytearray:
        """Bytes ``[start, start + length)``, which must lie inside the object."""
        buf = bytearray(length)
        self.fetch_into(start, memoryview(buf), stop)
        return buf

    def fetch_into(self, start: int, dest: memoryview, stop: threading.Event | None = None) -> None:
        """Fill ``dest`` with the bytes from ``start`` on, resuming after transient failures.

        Raises Stopped (quietly) when ``stop`` is set, ObjectStoreError subclasses otherwise.
        """
        total = len(dest)
        if start < 0 or start + total > self.info.size:
            raise ValueError(f"range {start}+{total} is outside {self.url} "
                             f"({self.info.size} bytes)")
        got = 0
        failures = 0
        progress_at_failure = -1
        while got < total:
            try:
                got = self._transfer(start, dest, got, stop)
                continue
            except _Partial as partial:
                got, exc = partial.got, partial.cause
            except (ObjectStoreError, Stopped):
                raise
            except Exception as caught:
                exc = caught
            # Only failures without progress count: a long transfer over a flaky link that
            # keeps moving is never given up on.
            failures = failures + 1 if got == progress_at_failure else 1
            progress_at_failure = got
            self._after_failure(exc, failures, stop)

    def _after_failure(self, exc: BaseException, failures: int,
                      stop: threading.Event | None) -> None:
        """Raise ours for a permanent or exhausted failure; else back off before the next."""
        ours = translate(exc, self.url, "reading")
        if ours is None:
            raise exc
        self.stats.add(retries=retry_attempts(exc))
        if not is_transient(exc):
            raise ours from exc
        if failures >= self.retry.attempts:
            raise give_up(exc, self.url, "reading", failures) from exc
        self.stats.add(retries=1)
        backoff(self.retry, failures, stop)

    def _transfer(self, start: int, dest: memoryview, got: int,
                  stop: threading.Event | None) -> int:
        """One GET of ``[start + got, start + len(dest))`` into ``dest[got:]``.

        Returns the new ``got``. A failure while the body streams raises _Partial with the
        bytes that did arrive (they stay in ``dest``), so the next GET starts after them.
        """
        first, last = start + got, start + len(dest) - 1
        body = self._open(first, last)
        try:
            while got < len(dest):
                if stop is not None and stop.is_set():
                    raise Stopped
                try:
                    n = body.readinto(dest[got:got + _CHUNK])
                except Exception as exc:
                    raise _Partial(got, exc) from exc
                if not n:
                    raise _Partial(got, _ShortBody(f"body ended {len(dest) - got} bytes early"))
                got += n
                self.stats.add(received=n)
        finally:
            body.close()
        return got

    def _open(self, first: int, last: int) -> Any:
        """Send the GET; its streaming body, after checking the answer is what we asked for."""
        try:
            response: dict[str, Any] = self.client.get_object(
                Bucket=self.info.ref.bucket,
                Key=self.info.ref.key,
                Range=f"bytes={first}-{last}",
                IfMatch=self.info.etag,
            )
        except Exception as exc:
            self.stats.add(requests=1 + retry_attempts(exc))
            raise
        # Attempts botocore retried (a 503 before the body) transferred nothing: they count
        # as requests and retries, the range once, as the bytes the store was asked for.
        extra = retry_attempts_of(response)
        self.stats.add(requests=1 + extra, requested=last - first + 1, retries=extra)
        body = response["Body"]
        try:
            self._check(response, first, last)
        except ObjectStoreError:
            body.close()
            raise
        return body

    def _check(self, response: dict[str, Any], first: int, last: int) -> None:
        etag = response.get("ETag")
        if etag is not None and etag.strip('"') != self.info.etag.strip('"'):
            # The store ignored If-Match (some S3-compatible ones do): same verdict.
            raise object_changed(self.url)
        content_range = str(response.get("ContentRange") or "")
        whole = first == 0 and last == self.info.size - 1
        if not content_range.startswith(f"bytes {first}-{last}/") and not (
            whole and not content_range
        ):
            raise ObjectStoreError(
                f"the object store answered a ranged GET of {self.url} with the wrong bytes "
                f"(asked for {first}-{last}, got {content_range or 'the whole object'}); "
                "it must support HTTP Range requests"
            )


def retry_attempts_of(response: dict[str, Any]) -> int:
    return int(response.get("ResponseMetadata", {}).get("RetryAttempts", 0) or 0)


class _ShortBody(ConnectionError):
    """The body ended before the range did (a transient failure, like a reset)."""


class _Partial(Exception):
    """A body read failed after ``got`` bytes."""

    def __init__(self, got: int, cause: BaseException) -> None:
        super().__init__(got)
        self.got = got
        self.cause = cause


