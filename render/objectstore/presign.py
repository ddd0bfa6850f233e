"""Presigned GET URLs for finished exports, downloading under the name the user chose.

The URL is signed locally (no request); whoever holds it can download the object until
it expires, so it is handed to the client that asked and never logged or put in an error.
``ResponseContentDisposition`` makes the store answer with our Content-Disposition, so a
browser saves ``Épisode 12.mp4`` rather than the object's key.
"""

from __future__ import annotations

import unicodedata
from datetime import timedelta
from urllib.parse import quote

from botocore.exceptions import BotoCoreError, ClientError

from .client import S3Client, s3_client
from .errors import ObjectStoreError, translate
from .location import ObjectRef

__all__ = ["MAX_PRESIGN_SECONDS", "content_disposition", "presigned_get"]

MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # SigV4's limit
# RFC 5987 attr-char: what may stay unencoded in filename*.
_ATTR_CHARS = "!#$&+-.^_`|~"


def content_disposition(filename: str, disposition: str = "attachment") -> str:
    """RFC 6266: an ASCII ``filename`` fallback and the exact name in ``filename*``."""
    if not filename:
        raise ValueError("filename must not be empty")
    decomposed = unicodedata.normalize("NFKD", filename)
    ascii_name = "".join(c for c in decomposed if not unicodedata.combining(c))
    fallback = "".join(
        c if 32 <= ord(c) < 127 and c not in '"\\/%' else "_" for c in ascii_name
    )
    encoded = quote(filename, safe=_ATTR_CHARS)
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


def presigned_get(
    obj: ObjectRef,
    *,
    expires: int | timedelta = 3600,
    filename: str | None = None,
    client: S3Client | None = None,
) -> str:
    """A URL that downloads ``obj`` for ``expires`` (seconds, at most 7 days).

    With ``filename`` the download carries ``Content-Disposition: attachment`` with it.
    """
    seconds = int(expires.total_seconds()) if isinstance(expires, timedelta) else int(expires)
    if not 0 < seconds <= MAX_PRESIGN_SECONDS:
        raise ValueError(f"expires must be between 1 s and {MAX_PRESIGN_SECONDS} s")
    params = {"Bucket": obj.bucket, "Key": obj.key}
    if filename is not None:
        params["ResponseContentDisposition"] = content_disposition(filename)
    s3 = client if client is not None else s3_client()
    try:
        url: str = s3.generate_presigned_url("get_object", Params=params, ExpiresIn=seconds)
    except (BotoCoreError, ClientError) as exc:
        ours = translate(exc, obj.url, "signing a download of")
        raise (ours or ObjectStoreError(f"cannot sign a download of {obj.url}")) from exc
    return url
