"""Our retry layer on top of botocore's, and the counters the benchmark reads.

botocore's standard/adaptive retry mode already repeats a *request* that failed with a 5xx,
throttling or a connection error, with exponential backoff. It cannot help once the
response headers have arrived and the body breaks off (a reset, a read timeout, an
IncompleteRead half-way through 16 MiB): that is this layer's job, and it resumes from the
first byte not yet received instead of starting the range again. It also gives a request
that failed through all of botocore's attempts a few more, spaced out further, before
calling the store unavailable.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from .errors import (
    ObjectStoreError,
    StoreUnavailableError,
    describe,
    is_transient,
    retry_attempts,
    translate,
)

__all__ = ["DEFAULT_RETRY", "ReadStats", "RetryPolicy", "Stopped", "call_with_retry"]

T = TypeVar("T")


class Stopped(Exception):
    """The work was abandoned (reader closed, generator dropped): quietly end a fetch."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently our layer retries.

    ``attempts`` counts consecutive failures *without progress*: a transfer that keeps
    delivering bytes between resets is never given up on, one that makes no headway fails
    after ``attempts`` tries. Delays are "full jitter" exponential backoff: uniform in
    ``[0, min(max_delay, base_delay * 2**(n-1))]`` so many workers do not retry in step.
    """

    attempts: int = 5
    base_delay: float = 0.25
    max_delay: float = 8.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("RetryPolicy needs attempts >= 1 and non-negative delays")

    def delay(self, failure: int, rng: random.Random) -> float:
        return rng.uniform(0.0, min(self.max_delay, self.base_delay * 2 ** (failure - 1)))


DEFAULT_RETRY = RetryPolicy()
_rng = random.Random()


@dataclass
class ReadStats:
    """What a reader cost, for the benchmark and the job's log. Thread-safe.

    ``bytes_requested`` sums the ranges of every GET sent (retries and resumes included),
    ``bytes_received`` what arrived, ``bytes_delivered`` what callers were handed (the
    plan's bytes for :func:`read_ranges`), ``retries`` our resumes plus botocore's retries.
    """

    requests: int = 0
    bytes_requested: int = 0
    bytes_received: int = 0
    bytes_delivered: int = 0
    retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, *, requests: int = 0, requested: int = 0, received: int = 0,
            delivered: int = 0, retries: int = 0) -> None:
        with self._lock:
            self.requests += requests
            self.bytes_requested += requested
            self.bytes_received += received
            self.bytes_delivered += delivered
            self.retries += retries

    @property
    def overhead(self) -> float:
        """bytes_requested / bytes_delivered (1.0 = nothing wasted; inf if nothing delivered)."""
        if not self.bytes_delivered:
            return float("inf") if self.bytes_requested else 1.0
        return self.bytes_requested / self.bytes_delivered


def backoff(policy: RetryPolicy, failure: int, stop: threading.Event | None) -> None:
    """Sleep before retry number ``failure``; Stopped if ``stop`` is set meanwhile."""
    delay = policy.delay(failure, _rng)
    if stop is None:
        time.sleep(delay)
    elif stop.wait(delay):
        raise Stopped


def give_up(exc: BaseException, url: str, action: str, failures: int) -> ObjectStoreError:
    return StoreUnavailableError(
        f"the object store kept failing while {action} {url} ({describe(exc)}; "
        f"{failures} attempts, each with botocore's own retries); try again later"
    )


def call_with_retry(fn: Callable[[], T], *, url: str, action: str,
                    policy: RetryPolicy = DEFAULT_RETRY, stats: ReadStats | None = None,
                    stop: threading.Event | None = None) -> T:
    """``fn()`` (one idempotent store request), retried on transient errors, translated."""
    failures = 0
    while True:
        try:
            return fn()
        except ObjectStoreError:
            raise
        except Exception as exc:
            ours = translate(exc, url, action)
            if ours is None:
                raise
            if stats is not None:
                stats.add(retries=retry_attempts(exc))
            if not is_transient(exc):
                raise ours from exc
            failures += 1
            if failures >= policy.attempts:
                raise give_up(exc, url, action, failures) from exc
            if stats is not None:
                stats.add(retries=1)
            backoff(policy, failures, stop)
