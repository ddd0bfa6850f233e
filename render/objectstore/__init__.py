"""Camera files in S3 (or any S3-compatible store), read by byte ranges; exports written back.

A media root can be a bucket (``CUTFARM_MEDIA_ROOTS=s3://bucket/prefix``). This package is
the engine's only door to it: plain boto3 + the standard library, no Ray, no web layer.

Why ranged GETs
    Sources are tens of GB; an export uses a few percent of each. Nothing is ever
    downloaded whole: the MP4 index needs the top-level box headers and the moov, a copy
    piece the bytes of its GOPs, a re-encode piece the samples it decodes. Small reads
    after a seek cost one small GET (64 KiB); sequential reads grow into 8 MiB GETs with
    read-ahead (:class:`RangedReader`); known lists of ranges -- the samples of a piece --
    are merged into a few large GETs that waste at most 3 % on gaps
    (:func:`read_ranges`); every reader counts requests and bytes for the benchmark
    (:class:`ReadStats`).

Why ETag pinning
    A camera file re-uploaded while a job runs must not give the job half of each version.
    A reader pins the ETag of its first HEAD (or the :class:`ObjectInfo` a probe handed
    it, so every worker of a job pins the same one) and sends ``If-Match`` with every GET;
    the store answers 412 once the object changed, and the job fails with
    :class:`ObjectChangedError` naming the object.

Memory bounds
    A RangedReader holds at most ``cache_size + read_ahead * block_size`` (32 MiB by
    default); :func:`read_ranges` at most ``(read_ahead + 1) * max_request`` (64 MiB);
    a :class:`MultipartWriter` ``head_size + (uploads_in_flight + 1) * part_size`` (64 MiB).

What is retried
    botocore (standard mode, or adaptive if configured) retries failed *requests*: 5xx,
    throttling (503 SlowDown, 429), connection errors, with backoff. Our layer adds what it
    cannot do: a body that breaks off mid-transfer (reset, read timeout, IncompleteRead) is
    resumed from the first byte not received, and a request that failed through botocore's
    attempts gets a few more, with exponential backoff and full jitter (:class:`RetryPolicy`;
    only failures without progress count). 403, 404, 412 and other 4xx are never retried.

Configuration and secrets
    The client comes from boto3's standard chain only (:func:`s3_client`): endpoint from
    ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` or a profile's ``endpoint_url`` (MinIO,
    R2, Ceph, a local test server), credentials from the environment, a profile, or an
    instance/IRSA role. Messages name objects as ``s3://bucket/key`` and carry the
    store's error code; never credentials, endpoint query strings or presigned URLs.

Exceptions (all RenderErrors, so the engine's callers handle them as they do the rest)::

    render.errors.RenderError
    └── ObjectStoreError            the store failed or refused; names the object
        ├── InvalidLocationError    (also ValueError) not a valid s3://bucket/prefix or key
        ├── ObjectNotFoundError     (also SourceNotFoundError) no such object or bucket
        ├── ObjectChangedError      (also MediaError) the pinned ETag no longer matches
        ├── ObjectAccessError       403, bad or missing credentials, archived object
        └── StoreUnavailableError   transient failures outlasted every retry; TLS failure

An editor's file name that would leave ``sources/`` raises :class:`render.errors.ConfigError`
exactly as for a local media root (:meth:`S3Location.resolve`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from .client import (
    ObjectInfo,
    S3Client,
    clear_clients,
    find_source,
    new_client,
    s3_client,
    stat,
)
from .errors import (
    InvalidLocationError,
    ObjectAccessError,
    ObjectChangedError,
    ObjectNotFoundError,
    ObjectStoreError,
    StoreUnavailableError,
)
from .fetch import PinnedObject
from .location import ObjectRef, S3Location, is_s3_url
from .presign import content_disposition, presigned_get
from .ranges import (
    DEFAULT_MAX_GAP,
    DEFAULT_MAX_REQUEST,
    DEFAULT_WASTE_RATIO,
    RangeRequest,
    plan_requests,
    read_pinned_ranges,
)
from .reader import RangedReader
from .retry import DEFAULT_RETRY, ReadStats, RetryPolicy
from .writer import MIN_PART_SIZE, MultipartWriter

__all__ = [
    "DEFAULT_RETRY",
    "MIN_PART_SIZE",
    "InvalidLocationError",
    "MultipartWriter",
    "ObjectAccessError",
    "ObjectChangedError",
    "ObjectInfo",
    "ObjectNotFoundError",
    "ObjectRef",
    "ObjectStoreError",
    "RangeRequest",
    "RangedReader",
    "ReadStats",
    "RetryPolicy",
    "S3Client",
    "S3Location",
    "StoreUnavailableError",
    "clear_clients",
    "content_disposition",
    "find_source",
    "is_s3_url",
    "new_client",
    "plan_requests",
    "presigned_get",
    "read_ranges",
    "s3_client",
    "stat",
]


def read_ranges(
    target: ObjectRef | ObjectInfo,
    ranges: Iterable[tuple[int, int]],
    *,
    client: S3Client | None = None,
    stats: ReadStats | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
    max_gap: int = DEFAULT_MAX_GAP,
    max_request: int = DEFAULT_MAX_REQUEST,
    waste_ratio: float = DEFAULT_WASTE_RATIO,
    read_ahead: int = 3,
) -> Iterator[bytes]:
    """The bytes of each ``(offset, size)`` of one object, in order, by coalesced GETs.

    ``target`` as for RangedReader: an ObjectInfo pins its ETag without a request.
    ``stats`` (if given) receives requests, bytes requested and bytes delivered.
    """
    s3 = client if client is not None else s3_client()
    stats = stats if stats is not None else ReadStats()
    info = target if isinstance(target, ObjectInfo) else stat(
        target, client=s3, retry=retry, stats=stats)
    pinned = PinnedObject(info, s3, retry=retry, stats=stats)
    return read_pinned_ranges(pinned, ranges, max_gap=max_gap, max_request=max_request,
                              waste_ratio=waste_ratio, read_ahead=read_ahead)
