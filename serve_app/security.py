"""Bearer token, download links that need no header, and a bounded request body.

The editor downloads with ``window.location.href = downloadUrl``: a plain browser GET that
cannot carry an Authorization header. When a token is configured, ``downloadUrl`` therefore
carries a short-lived signature for that one job (never the token itself).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import quote

from .errors import HTTPProblem

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DOWNLOAD_LINK_SECONDS = 24 * 3600


def check_bearer(token: str | None, authorization: str | None) -> None:
    if token is None:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                             token.encode()):
        raise HTTPProblem(401, "Missing or invalid API token")


#: Download links are signed with a key derived from the token, never the token itself: a
#: link (which browsers keep in history) then gives nothing towards the token.
_LINK_KEY_LABEL = b"cutfarm download links v1"


def _link_key(token: str) -> bytes:
    return hmac.new(token.encode(), _LINK_KEY_LABEL, hashlib.sha256).digest()


def _signature(token: str, job_id: str, expires: int) -> str:
    msg = f"download:{job_id}:{expires}".encode()
    return hmac.new(_link_key(token), msg, hashlib.sha256).hexdigest()


def download_url(job_id: str, token: str | None, now: float | None = None) -> str:
    url = f"/api/export/{quote(job_id)}/download"
    if token is None:
        return url
    expires = int((now or time.time()) + DOWNLOAD_LINK_SECONDS)
    return f"{url}?expires={expires}&sig={_signature(token, job_id, expires)}"


def check_download(token: str | None, job_id: str, authorization: str | None,
                   expires: str | None, sig: str | None) -> None:
    if token is None:
        return
    if expires and sig:
        try:
            exp = int(expires)
        except ValueError:
            raise HTTPProblem(401, "Invalid download link") from None
        if exp < time.time():
            raise HTTPProblem(401, "This download link has expired; fetch the status again")
        if hmac.compare_digest(sig.encode(), _signature(token, job_id, exp).encode()):
            return
        raise HTTPProblem(401, "Invalid download link")
    check_bearer(token, authorization)


class BodyLimit:
    """ASGI middleware: refuse bodies over ``limit`` bytes, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._refuse(send)
                return
        seen = 0
        limit = self.limit

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = (b'{"error": "Request body is too large (limit %d bytes)"}' % self.limit)
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass
