"""The object store's exceptions, and the one place botocore's are translated into them.

See the package docstring for the tree. Messages name the object (``s3://bucket/key``) and
what went wrong in words an operator can act on; they are built from our own text plus the
store's error *code*, never from a botocore message, an endpoint URL with its query string,
a presigned URL or anything from the credential chain.
"""

from __future__ import annotations

import http.client
from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
    SSLError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from urllib3.exceptions import HTTPError as Urllib3HTTPError

from render.errors import MediaError, RenderError, SourceNotFoundError

__all__ = [
    "InvalidLocationError",
    "ObjectAccessError",
    "ObjectChangedError",
    "ObjectNotFoundError",
    "ObjectStoreError",
    "StoreUnavailableError",
    "describe",
    "is_transient",
    "object_changed",
    "retry_attempts",
    "translate",
]


class ObjectStoreError(RenderError):
    """Base of everything the object store layer raises on purpose."""


class InvalidLocationError(ObjectStoreError, ValueError):
    """A media root or object key that is not a usable ``s3://bucket/prefix``."""


class ObjectNotFoundError(ObjectStoreError, SourceNotFoundError):
    """The object (or its bucket) does not exist: to the engine, a missing source."""


class ObjectChangedError(ObjectStoreError, MediaError):
    """The object's ETag is no longer the one pinned when it was opened."""


class ObjectAccessError(ObjectStoreError):
    """The store refused our credentials, or there are none: an operator's problem."""


class StoreUnavailableError(ObjectStoreError):
    """Transient failures (5xx, throttling, resets, timeouts) outlasted every retry."""


# Error codes S3 and the S3-compatible stores (MinIO, R2, Ceph) answer with.
_NOT_FOUND = frozenset({"NoSuchKey", "NotFound", "404", "NoSuchBucket", "NoSuchVersion"})
_CHANGED = frozenset({"PreconditionFailed", "412"})
_ACCESS = frozenset({
    "AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
    "InvalidToken", "TokenRefreshRequired", "AllAccessDisabled", "AccountProblem",
    "InvalidSecurity",
})
_TRANSIENT = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestLimitExceeded", "TooManyRequests", "BandwidthLimitExceeded", "RequestTimeout",
    "RequestTimeoutException", "InternalError", "ServiceUnavailable", "PriorRequestNotComplete",
    "EC2ThrottledException", "ProvisionedThroughputExceededException", "XMinioServerNotInitialized",
})
# Connection-level failures: the request may not have reached the store, or its answer was cut.
_NETWORK: tuple[type[BaseException], ...] = (
    HTTPClientError,  # ConnectionClosedError, ReadTimeoutError, ResponseStreamingError
    IncompleteReadError,
    BotoConnectionError,  # EndpointConnectionError, ConnectTimeoutError, ProxyConnectionError
    Urllib3HTTPError,
    http.client.HTTPException,  # IncompleteRead from a raw http.client read
    ConnectionError,  # ConnectionResetError, BrokenPipeError, ...
    TimeoutError,
)


def _code_status(exc: ClientError) -> tuple[str, int]:
    response: dict[str, Any] = exc.response or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def retry_attempts(exc: BaseException) -> int:
    """How many retries botocore already made before raising ``exc`` (0 if unknown)."""
    if isinstance(exc, ClientError):
        meta = (exc.response or {}).get("ResponseMetadata", {})
        return int(meta.get("RetryAttempts", 0) or 0)
    return 0


def is_transient(exc: BaseException) -> bool:
    """Worth another try: throttling, 5xx, a connection that broke or timed out."""
    if isinstance(exc, ClientError):
        code, status = _code_status(exc)
        return code in _TRANSIENT or status >= 500 or status == 429
    if isinstance(exc, SSLError):
        return False  # a certificate problem does not heal by retrying
    return isinstance(exc, _NETWORK)


def describe(exc: BaseException) -> str:
    """A short, secret-free name for what went wrong: '503 SlowDown', 'ReadTimeoutError'."""
    if isinstance(exc, ClientError):
        code, status = _code_status(exc)
        return f"{status} {code}".strip() if status else code or "error"
    return type(exc).__name__


def translate(exc: BaseException, url: str, action: str) -> ObjectStoreError | None:
    """Our exception for a botocore/network one, or None for anything we do not know.

    ``action`` completes "while ... s3://bucket/key", e.g. "reading" or "uploading".
    """
    if isinstance(exc, ObjectStoreError):
        return exc
    if isinstance(exc, ClientError):
        return _client_error(exc, url, action)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
        return ObjectAccessError(
            f"no usable credentials for {url}: configure them through boto3's standard chain "
            "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or an instance/IRSA role)"
        )
    if isinstance(exc, ProfileNotFound):
        return ObjectAccessError(
            f"the AWS profile configured for {url} does not exist in the AWS config files"
        )
    if isinstance(exc, SSLError):
        return StoreUnavailableError(
            f"TLS failed while {action} {url}: check the endpoint's certificate "
            "(AWS_CA_BUNDLE) and URL"
        )
    if is_transient(exc):
        return StoreUnavailableError(
            f"the object store did not answer while {action} {url} ({describe(exc)})"
        )
    if isinstance(exc, BotoCoreError):
        return ObjectStoreError(f"the object store client failed while {action} {url} "
                                f"({describe(exc)})")
    return None


def object_changed(url: str) -> ObjectChangedError:
    return ObjectChangedError(
        f"{url} changed while this job was using it (its ETag is no longer the one seen "
        "when the job opened it); parts of two versions must not be mixed: run the export "
        "again once the new version has finished uploading"
    )


def _client_error(exc: ClientError, url: str, action: str) -> ObjectStoreError:
    code, status = _code_status(exc)
    if code in _CHANGED or status == 412:
        return object_changed(url)
    if code == "NoSuchBucket":
        bucket = url.removeprefix("s3://").split("/", 1)[0]
        return ObjectNotFoundError(f"the bucket {bucket!r} of {url} does not exist")
    if code in _NOT_FOUND or status == 404:
        return ObjectNotFoundError(f"{url} does not exist")
    if code == "RequestTimeTooSkewed":
        return ObjectAccessError(
            f"the object store refused {url}: this machine's clock is too far off (sync it)"
        )
    if code in _ACCESS or status == 403:
        return ObjectAccessError(
            f"the object store refused access to {url} ({code or status}); check the "
            "server's credentials and the bucket's policy"
        )
    if code == "InvalidObjectState":
        return ObjectAccessError(
            f"{url} is archived (e.g. in Glacier); restore it before using it as a source"
        )
    if is_transient(exc):
        return StoreUnavailableError(
            f"the object store did not answer while {action} {url} ({describe(exc)})"
        )
    return ObjectStoreError(
        f"the object store refused {action} {url} ({describe(exc)})"
    )
