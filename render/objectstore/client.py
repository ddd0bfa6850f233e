"""One S3 client per process, configured only the way boto3 is configured everywhere else.

Endpoint, region, credentials and addressing style come from boto3's standard chain: the
environment (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...),
the profile named by ``AWS_PROFILE`` in the shared config files (``endpoint_url``,
``s3 = addressing_style = path`` for MinIO behind a host name), or an instance/IRSA role.
botocore >= 1.31 resolves the endpoint variables itself; this module adds nothing to that
chain, so a deployment configures the store exactly as for the AWS CLI.

What we do set: botocore's retry mode (``standard`` unless the configuration asks for
``adaptive``; 5 attempts unless it sets ``max_attempts``), timeouts, and a connection pool
large enough for the read-ahead threads. A botocore client is thread-safe once made; making
one is not cheap and a boto3 Session is not thread-safe, hence one cached client per
process, made under a lock (a forked child makes its own).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ProfileNotFound

from .errors import ObjectAccessError, ObjectNotFoundError, ObjectStoreError
from .location import ObjectRef, S3Location
from .retry import DEFAULT_RETRY, ReadStats, RetryPolicy, call_with_retry

__all__ = ["ObjectInfo", "S3Client", "clear_clients", "find_source", "new_client", "s3_client",
           "stat"]

#: A boto3 S3 client (no type stubs are installed for boto3: it is ``Any`` to mypy).
S3Client = Any

DEFAULT_MAX_ATTEMPTS = 5
_RETRY_MODES = ("standard", "adaptive")

_clients: dict[tuple[int, str | None], S3Client] = {}
_clients_lock = threading.Lock()


def _retries(session: botocore.session.Session) -> dict[str, Any]:
    """botocore's retry settings: the configured ones, else standard mode, 5 attempts.

    The legacy mode (botocore's default when nothing is configured) knows fewer transient
    errors and has no retry quota; AWS recommends standard, so legacy is replaced. An
    explicit standard or adaptive mode and an explicit ``max_attempts`` are kept.
    """
    mode = session.get_config_variable("retry_mode")
    attempts = session.get_config_variable("max_attempts")
    return {
        "mode": mode if mode in _RETRY_MODES else "standard",
        # Config's "max_attempts" counts retries only; AWS_MAX_ATTEMPTS counts all attempts.
        "total_max_attempts": int(attempts) if attempts else DEFAULT_MAX_ATTEMPTS,
    }


def new_client(*, profile: str | None = None, connect_timeout: float = 10.0,
               read_timeout: float = 60.0, max_pool_connections: int = 32) -> S3Client:
    """A fresh S3 client from boto3's standard configuration (uncached; see s3_client).

    The keyword arguments tune the transport only; where the store is and who we are
    comes from the environment and the shared config files, never from here.
    """
    try:
        core = botocore.session.Session(profile=profile)
        session = boto3.session.Session(botocore_session=core)
        config = Config(
            retries=_retries(core),
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max_pool_connections,
            tcp_keepalive=True,
            # Presigned URLs too: SigV2 is refused by newer AWS regions and by R2.
            signature_version="s3v4",
        )
        return session.client("s3", config=config)
    except ProfileNotFound as exc:
        raise ObjectAccessError(
            f"the AWS profile {profile or os.environ.get('AWS_PROFILE')!r} is not in the "
            "shared AWS config files"
        ) from exc
    except BotoCoreError as exc:
        raise ObjectStoreError(
            f"cannot configure the object store client ({type(exc).__name__})"
        ) from exc


def s3_client(profile: str | None = None) -> S3Client:
    """The process's shared client (made on first use; thread-safe to use)."""
    key = (os.getpid(), profile)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = new_client(profile=profile)
        return client


def clear_clients() -> None:
    """Forget cached clients: the next s3_client() reads the configuration again."""
    with _clients_lock:
        _clients.clear()


@dataclass(frozen=True)
class ObjectInfo:
    """An object as seen once: what a reader pins (size and ETag) for the whole job.

    Picklable, so a job can HEAD a source once when probing and hand the same pin to
    every worker: all of them then read the same version or fail with ObjectChangedError.
    """

    ref: ObjectRef
    size: int
    etag: str
    last_modified: datetime | None = None
    version_id: str | None = None

    @property
    def url(self) -> str:
        return self.ref.url


def stat(obj: ObjectRef, *, client: S3Client | None = None,
         retry: RetryPolicy = DEFAULT_RETRY, stats: ReadStats | None = None) -> ObjectInfo:
    """HEAD the object: its size and ETag (ObjectNotFoundError if it is not there)."""
    s3 = client if client is not None else s3_client()

    def head() -> dict[str, Any]:
        if stats is not None:
            stats.add(requests=1)
        response: dict[str, Any] = s3.head_object(Bucket=obj.bucket, Key=obj.key)
        return response

    try:
        response = call_with_retry(head, url=obj.url, action="checking", policy=retry,
                                   stats=stats)
    except ObjectNotFoundError:
        _check_bucket(s3, obj, retry)  # a HEAD's 404 has no body to say which is missing
        raise
    return ObjectInfo(
        ref=obj,
        size=int(response["ContentLength"]),
        etag=str(response["ETag"]),
        last_modified=response.get("LastModified"),
        version_id=response.get("VersionId"),
    )


def _check_bucket(s3: S3Client, obj: ObjectRef, retry: RetryPolicy) -> None:
    """ObjectNotFoundError naming the bucket if it is the bucket that is missing."""
    try:
        call_with_retry(lambda: s3.head_bucket(Bucket=obj.bucket), url=obj.url,
                        action="checking the bucket of", policy=retry)
    except ObjectNotFoundError as exc:
        raise ObjectNotFoundError(
            f"the bucket {obj.bucket!r} of {obj.url} does not exist") from exc
    except ObjectStoreError:
        pass  # e.g. no ListBucket permission: the object's own 404 is all we know


def find_source(file_path: str, roots: Sequence[S3Location], *, field: str = "filePath",
                client: S3Client | None = None) -> ObjectInfo:
    """The first ``<root>/sources/<file_path>`` that exists, like render.paths.resolve_source.

    ConfigError for a name that would leave ``sources/``; ObjectNotFoundError (a
    SourceNotFoundError) saying where we looked, and where the file is if it sits one
    folder too high (``<root>/<name>``), when no root has it; any other ObjectStoreError
    (access refused, store down) with ``field`` named.
    """
    candidates = [root.resolve(file_path, field=field) for root in roots]
    for ref in candidates:
        try:
            return stat(ref, client=client)
        except ObjectNotFoundError:
            continue
        except ObjectStoreError as exc:  # refused, unreachable: say which field it is
            raise type(exc)(f"{field}: {exc}", field=field) from exc
    looked = " or ".join(root.sources_url for root in roots)
    text = f"{field}: source file {file_path!r} was not found in {looked}"
    for root in roots:
        misplaced = root.misplaced(file_path)
        if misplaced is None:
            continue
        try:
            stat(misplaced, client=client)
        except ObjectNotFoundError:
            continue
        text += f"; it is in {root.url}/ itself: move it into {root.sources_url}"
        break
    raise ObjectNotFoundError(text, field=field)
