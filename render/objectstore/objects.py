"""Whole small objects and key prefixes: what a job store keeps beside an export.

``status.json`` and ``config.json`` are a few KB: one PUT writes one atomically (S3 never
shows half an object), one GET reads it. A job is a key prefix; listing its siblings
(``CommonPrefixes``) lists the jobs, and removing a job removes every object under its
prefix and aborts any multipart upload still open there. Every call retries and
translates errors like the rest of this package.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from .client import S3Client, s3_client
from .errors import ObjectNotFoundError
from .location import ObjectRef
from .retry import DEFAULT_RETRY, RetryPolicy, call_with_retry


def put_bytes(obj: ObjectRef, data: bytes, *, content_type: str = "application/json",
              client: S3Client | None = None, retry: RetryPolicy = DEFAULT_RETRY) -> None:
    s3 = client if client is not None else s3_client()
    call_with_retry(lambda: s3.put_object(Bucket=obj.bucket, Key=obj.key, Body=data,
                                          ContentType=content_type),
                    url=obj.url, action="writing", policy=retry)


def get_bytes(obj: ObjectRef, *, client: S3Client | None = None,
              retry: RetryPolicy = DEFAULT_RETRY) -> bytes | None:
    """The object's bytes; None when there is no such object."""
    s3 = client if client is not None else s3_client()

    def get() -> bytes:
        body: bytes = s3.get_object(Bucket=obj.bucket, Key=obj.key)["Body"].read()
        return body

    try:
        return call_with_retry(get, url=obj.url, action="reading", policy=retry)
    except ObjectNotFoundError:
        return None


def exists(obj: ObjectRef, *, client: S3Client | None = None,
           retry: RetryPolicy = DEFAULT_RETRY) -> bool:
    s3 = client if client is not None else s3_client()
    try:
        call_with_retry(lambda: s3.head_object(Bucket=obj.bucket, Key=obj.key),
                        url=obj.url, action="checking", policy=retry)
    except ObjectNotFoundError:
        return False
    return True


def _pages(s3: S3Client, url: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
    token: str | None = None
    while True:
        extra = {"ContinuationToken": token} if token else {}

        def list_page(extra: dict[str, Any] = extra) -> dict[str, Any]:
            page: dict[str, Any] = s3.list_objects_v2(**kwargs, **extra)
            return page

        page = call_with_retry(list_page, url=url, action="listing", policy=DEFAULT_RETRY)
        yield page
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            return


def list_children(bucket: str, prefix: str, *, client: S3Client | None = None) -> list[str]:
    """Names of the "folders" directly under ``prefix`` (which ends with '/')."""
    s3 = client if client is not None else s3_client()
    url = f"s3://{bucket}/{prefix}"
    names: list[str] = []
    for page in _pages(s3, url, Bucket=bucket, Prefix=prefix, Delimiter="/"):
        for entry in page.get("CommonPrefixes", []):
            names.append(str(entry["Prefix"])[len(prefix):].rstrip("/"))
    return names


def list_objects(bucket: str, prefix: str, *, client: S3Client | None = None
                 ) -> list[tuple[str, int, datetime]]:
    """(key, size, last modified) of every object under ``prefix``."""
    s3 = client if client is not None else s3_client()
    url = f"s3://{bucket}/{prefix}"
    return [(str(o["Key"]), int(o["Size"]), o["LastModified"])
            for page in _pages(s3, url, Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])]


def delete_prefix(bucket: str, prefix: str, *, client: S3Client | None = None) -> int:
    """Remove every object under ``prefix`` and abort its open uploads; objects removed."""
    s3 = client if client is not None else s3_client()
    url = f"s3://{bucket}/{prefix}"
    abort_uploads(bucket, prefix, client=s3)
    keys = [key for key, _, _ in list_objects(bucket, prefix, client=s3)]
    for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
        batch: Any = {"Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True}

        def delete(batch: Any = batch) -> Any:
            return s3.delete_objects(Bucket=bucket, Delete=batch)

        call_with_retry(delete, url=url, action="removing", policy=DEFAULT_RETRY)
    return len(keys)


def abort_uploads(bucket: str, prefix: str, *, client: S3Client | None = None) -> int:
    """Abort every multipart upload open under ``prefix`` (parts of a crashed writer)."""
    s3 = client if client is not None else s3_client()
    url = f"s3://{bucket}/{prefix}"
    page: dict[str, Any] = call_with_retry(
        lambda: s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix), url=url,
        action="listing the uploads of", policy=DEFAULT_RETRY)
    uploads = page.get("Uploads", [])
    for up in uploads:

        def abort(up: Any = up) -> Any:
            return s3.abort_multipart_upload(Bucket=bucket, Key=up["Key"],
                                             UploadId=up["UploadId"])

        call_with_retry(abort, url=url, action="aborting an upload under",
                        policy=DEFAULT_RETRY)
    return len(uploads)
