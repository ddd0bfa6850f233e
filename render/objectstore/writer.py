"""MultipartWriter: a file an export is written into, appearing in the bucket only when done.

S3 objects cannot be patched, but the parts of a multipart upload can be uploaded in any
order and only ``CompleteMultipartUpload`` makes the object exist. The MP4 muxer writes
the media front to back and, at the end, seeks back to fill the moov space it reserved
at the start (and the mdat size). So the writer holds the first ``head_size`` bytes in
memory -- part 1, rewritable at any time -- streams everything after it as parts 2, 3, ...
of ``part_size`` bytes while the export runs, and uploads part 1 last, from ``complete()``.

Writes may go anywhere in the head, anywhere not yet uploaded, or past the end (the muxer
skips its reservation: the gap reads as zeros, as in a file); a write into bytes already
uploaded is refused. An object that never grew
past the head and one part is sent with a single PUT (no multipart upload at all).
Leaving without ``complete()`` -- an exception, a cancel, ``close()`` -- aborts the upload,
so no half-written object or orphaned parts are left (a bucket lifecycle rule for
incomplete multipart uploads is the backstop for a process killed outright). Memory:
``head_size + (uploads_in_flight + 1) * part_size``.
"""

from __future__ import annotations

import contextlib
import io
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from .client import ObjectInfo, S3Client, s3_client
from .errors import ObjectStoreError
from .location import ObjectRef
from .reader import seek_position
from .retry import DEFAULT_RETRY, RetryPolicy, call_with_retry

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = ["MIN_PART_SIZE", "MultipartWriter"]

MiB = 1 << 20
MIN_PART_SIZE = 5 * MiB  # S3's minimum for every part but the last
MAX_PARTS = 10_000
DEFAULT_PART_SIZE = 16 * MiB
_ZEROS = bytes(1 << 20)
_CHECKSUMS = ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumCRC64NVME", "ChecksumSHA1",
              "ChecksumSHA256")


class MultipartWriter(io.RawIOBase):
    """Write-only, seekable (within limits) file that becomes ``obj`` on ``complete()``."""

    def __init__(
        self,
        obj: ObjectRef,
        *,
        client: S3Client | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        head_size: int | None = None,
        content_type: str | None = None,
        content_disposition: str | None = None,
        uploads_in_flight: int = 2,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        super().__init__()
        self._done = True  # until set up: close() (also from __del__) has nothing to abort
        head_size = part_size if head_size is None else head_size
        if part_size < MIN_PART_SIZE or head_size < MIN_PART_SIZE:
            raise ValueError(f"part_size and head_size must be at least {MIN_PART_SIZE} bytes")
        if uploads_in_flight < 1:
            raise ValueError("uploads_in_flight must be >= 1")
        self.obj = obj
        self._s3 = client if client is not None else s3_client()
        self._part_size = part_size
        self._head_size = head_size
        self._retry = retry
        self._extra: dict[str, str] = {}
        if content_type:
            self._extra["ContentType"] = content_type
        if content_disposition:
            self._extra["ContentDisposition"] = content_disposition
        self._head = bytearray()
        self._tail = bytearray()
        self._tail_start = head_size  # object offset of _tail[0]
        self._end = 0
        self._pos = 0
        self._upload_id: str | None = None
        self._checksum = False  # the upload was created with a checksum algorithm
        self._next_part = 2
        self._parts: dict[int, dict[str, Any]] = {}
        self._in_flight: deque[Future[dict[str, Any]]] = deque()
        self._pool: ThreadPoolExecutor | None = None
        self._max_in_flight = uploads_in_flight
        #: Part numbers in the order their uploads were started (part 1 comes last).
        self.part_order: list[int] = []
        self._done = False

    @property
    def url(self) -> str:
        return self.obj.url

    @property
    def size(self) -> int:
        """Bytes written so far (the object's size once completed)."""
        return self._end

    def readable(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET, /) -> int:
        self._check_open()
        self._pos = seek_position(self._pos, offset, whence, self._end)
        return self._pos

    def write(self, data: ReadableBuffer, /) -> int:
        self._check_open()
        view = memoryview(data).cast("B")
        target = self._pos
        while self._end < target:  # a seek past the end leaves zeros, as in a file
            self._pos = self._end
            self._write_at_pos(memoryview(_ZEROS)[:min(len(_ZEROS), target - self._end)])
        self._write_at_pos(view)
        return len(view)

    def _write_at_pos(self, view: memoryview) -> None:
        at, i = self._pos, 0
        while i < len(view):
            k = self._write_some(at, view[i:])
            at += k
            i += k
        self._pos = at
        self._end = max(self._end, at)
        self._ship_full_parts()

    def _write_some(self, at: int, view: memoryview) -> int:
        if at < self._head_size:
            k = min(len(view), self._head_size - at)
            self._head[at:at + k] = view[:k]
            return k
        if at < self._tail_start:
            raise io.UnsupportedOperation(
                f"bytes {at}.. of {self.url} are already uploaded; only the first "
                f"{self._head_size} bytes (the head, uploaded last) can be written again")
        rel = at - self._tail_start
        self._tail[rel:rel + len(view)] = view
        return len(view)

    def complete(self) -> ObjectInfo:
        """Upload what is left, part 1 last, and make the object appear; its ETag and size.

        On failure the upload is aborted (nothing appears) and the error raised.
        """
        self._check_open()
        try:
            etag = self._complete()
        except BaseException:
            self._abort_quietly()
            raise
        self._done = True
        return ObjectInfo(ref=self.obj, size=self._end, etag=etag)

    def abort(self) -> None:
        """Drop the upload and its parts; the object does not appear. Idempotent."""
        if self._done:
            return
        self._done = True
        for future in self._in_flight:
            future.cancel()
        # A part still uploading would outlive an abort sent now and leave storage behind.
        for future in self._in_flight:
            with contextlib.suppress(Exception):
                future.result()
        self._in_flight.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            self._call("aborting the upload of", lambda: self._s3.abort_multipart_upload(
                Bucket=self.obj.bucket, Key=self.obj.key, UploadId=upload_id))

    def close(self) -> None:
        if not self.closed:
            self._abort_quietly()
        super().close()

    # -- internals -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed or self._done:
            raise ValueError(f"the writer of {self.url} is closed, completed or aborted")

    def _abort_quietly(self) -> None:
        # The error being raised matters more than a failed cleanup; the lifecycle rule
        # for incomplete uploads collects what an abort could not.
        with contextlib.suppress(ObjectStoreError):
            self.abort()

    def _call(self, action: str, fn: Any) -> Any:
        return call_with_retry(fn, url=self.url, action=action, policy=self._retry)

    def _ship_full_parts(self) -> None:
        while len(self._tail) >= self._part_size:
            part = bytes(self._tail[:self._part_size])
            del self._tail[:self._part_size]
            self._tail_start += self._part_size
            self._start_part(part)

    def _start_part(self, data: bytes) -> None:
        if self._next_part > MAX_PARTS:
            raise ObjectStoreError(
                f"{self.url} would need more than {MAX_PARTS} parts of {self._part_size} "
                "bytes; use a larger part_size")
        if self._upload_id is None:
            self._create_upload()
        while len(self._in_flight) >= self._max_in_flight:
            self._collect(self._in_flight.popleft())
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self._max_in_flight,
                                            thread_name_prefix="s3-upload")
        number = self._next_part
        self._next_part += 1
        self.part_order.append(number)
        self._in_flight.append(self._pool.submit(self._upload_part, number, data))

    def _create_upload(self) -> None:
        response = self._call("starting the upload of", lambda: self._s3.create_multipart_upload(
            Bucket=self.obj.bucket, Key=self.obj.key, **self._extra))
        self._upload_id = str(response["UploadId"])
        self._checksum = bool(response.get("ChecksumAlgorithm"))

    def _upload_part(self, number: int, data: bytes) -> dict[str, Any]:
        response = self._call("uploading a part of", lambda: self._s3.upload_part(
            Bucket=self.obj.bucket, Key=self.obj.key, UploadId=self._upload_id,
            PartNumber=number, Body=data))
        part: dict[str, Any] = {"PartNumber": number, "ETag": response["ETag"]}
        if self._checksum:  # completing such an upload must repeat each part's checksum
            part.update({k: response[k] for k in _CHECKSUMS if response.get(k)})
        return part

    def _collect(self, future: Future[dict[str, Any]]) -> None:
        part = future.result()
        self._parts[part["PartNumber"]] = part

    def _complete(self) -> str:
        if self._upload_id is None:
            body = bytes(self._head) + bytes(self._tail)
            response = self._call("uploading", lambda: self._s3.put_object(
                Bucket=self.obj.bucket, Key=self.obj.key, Body=body, **self._extra))
            return str(response["ETag"])
        if self._tail:
            self._start_part(bytes(self._tail))
            self._tail.clear()
        while self._in_flight:
            self._collect(self._in_flight.popleft())
        self.part_order.append(1)
        self._parts[1] = self._upload_part(1, bytes(self._head))
        parts = [self._parts[n] for n in sorted(self._parts)]
        upload_id = self._upload_id
        response = self._call(
            "completing the upload of",
            lambda: self._s3.complete_multipart_upload(
                Bucket=self.obj.bucket, Key=self.obj.key, UploadId=upload_id,
                MultipartUpload={"Parts": parts}))
        self._upload_id = None
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        return str(response["ETag"])

