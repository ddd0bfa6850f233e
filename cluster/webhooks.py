"""Webhooks: POST a job's final status to its ``callbackUrl`` when the job ends.

An export config may carry ``callbackUrl`` (``ExportConfig.callback_url``). When the job
reaches a terminal state (completed, failed or cancelled) the coordinator calls
``notify_finished``, which delivers in the background; every attempt is recorded in the
job's status (``webhookAttempts``) so users and operators can see why a callback did or did
not arrive.

What a receiver gets::

    POST <callbackUrl>
    Content-Type: application/json
    User-Agent: cutfarm-webhook/1
    X-Cutfarm-Event: export.completed            (or export.failed / export.cancelled)
    X-Cutfarm-Delivery: 6f1c…-uuid                (the same on every retry of this delivery)
    X-Cutfarm-Timestamp: 1767225600               (unix seconds, fresh on every attempt)
    X-Cutfarm-Signature: v1=<hex HMAC-SHA256(secret, b"<timestamp>." + body)>
    webhook-id: 6f1c…-uuid                        (Standard Webhooks: the delivery id)
    webhook-timestamp: 1767225600
    webhook-signature: v1,<base64 HMAC-SHA256(key, b"<id>.<timestamp>." + body)>

    {"event":"export.completed","deliveryId":"6f1c…","jobId":"…","status":"completed",
     "progress":1.0,"message":"Export complete","downloadUrl":"/api/export/…/download",
     "createdAt":…,"startedAt":…,"finishedAt":…,"outputBytes":…}

The body is ``JobStatus.editor_view()`` (the shape the editor already knows from polling)
plus ``event``, ``deliveryId`` and a few timestamps/sizes. ``downloadUrl`` is relative to
the cutfarm API's base URL, as in the status endpoint.

Why it is built this way:

* **Signature over timestamp + body.** HMAC-SHA256 with the cluster's shared secret
  (``Settings.webhook_secret``, ``CUTFARM_WEBHOOK_SECRET``) proves the request came from us
  and that the body was not changed. Including the timestamp in the MAC lets a receiver
  refuse replays of an old, captured request (``verify_signature`` allows 5 minutes of
  skew by default). Receivers must verify the *raw* body bytes before parsing the JSON;
  re-serialised JSON does not match. The ``v1=`` prefix versions the scheme, and
  ``verify_signature`` accepts several comma-separated ``v1=`` values, so the scheme or the
  secret can change later without breaking receivers. Without a configured secret no
  signature header is sent (there is nothing to sign with); such a receiver should treat
  the payload as a hint and read the job's status from the API.
* **Standard Webhooks as well.** The ``webhook-*`` headers follow the Standard Webhooks
  specification, so a receiver can verify with an existing library
  (``standardwebhooks.Webhook(key).verify(body, headers)``) instead of our code. Its key is
  the secret's bytes (``Webhook(secret.encode())``), or, for a secret written in that
  specification's own form ``whsec_<base64>``, the decoded bytes (``Webhook(secret)``).
  The ``X-Cutfarm-*`` headers stay for receivers written against them.
* **One delivery id, fresh timestamp per attempt.** Delivery is at-least-once (a receiver
  may process a request whose response we never saw), so receivers dedupe on
  ``X-Cutfarm-Delivery`` (also in the signed body). Retries can span minutes; a timestamp
  fixed at the first attempt would push later attempts out of the receiver's tolerance
  window, so each attempt is signed anew. The body bytes are identical on every attempt.
* **Retry policy.** Connection errors, timeouts, 5xx and 429 are transient: retried with
  exponential backoff and jitter (so many jobs finishing together do not hammer a
  recovering receiver in lock step), honouring ``Retry-After`` (seconds or HTTP date)
  but never waiting longer than ``max_delay``. Any other 4xx means the receiver rejected
  the request and a retry would get the same answer. Redirects are not followed: a POST
  webhook that redirects is misconfigured, and following one would let a receiver steer
  our requests to a target ``validate_callback_url`` never saw (see SSRF below).
* **Never fails a job.** The job's result is final before the webhook is sent; a
  notification problem must not change it or hold the job's slot. ``deliver`` never
  raises (only ``asyncio.CancelledError`` passes, as it must), and ``notify_finished``
  starts it as a background task and returns at once.
* **Duplicates.** Racing terminal updates (a cancel arriving as the job completes, two
  concurrent cancels) may call ``notify_finished`` twice for one ending; deliveries are
  keyed by (job id, ``finishedAt``) and a job whose status already shows a delivered
  attempt is not notified again.
* **An outbox that survives restarts.** Every attempt is recorded in status.json; the last
  attempt of a delivery (delivered, or given up) carries ``final: true``. A restarted
  coordinator resumes every delivery of a job that ended in the last
  ``RESUME_WINDOW_SECONDS`` and has no final attempt, with the same delivery id and the
  attempt numbers going on, so the total stays bounded.

SSRF: a callback URL makes the cluster send requests to a user-chosen address, which may
be internal (cloud metadata endpoints, admin ports, 127.0.0.1). ``validate_callback_url``
checks the shape (http/https, a host, no credentials, bounded length) and asks
``is_allowed_target(host, allow_private=...)``. The service refuses loopback, private and
link-local targets unless ``CUTFARM_WEBHOOK_ALLOW_PRIVATE`` is set, with the same policy at
submit and again at delivery. It sees host names, not resolved addresses, so a name that
resolves to an internal address needs a resolver-level check (or an egress proxy/firewall).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from .jobs import JobState, JobStatus
from .store import Store

log = logging.getLogger("cutfarm.webhooks")

USER_AGENT = "cutfarm-webhook/1"
SIGNATURE_SCHEME = "v1"
HEADER_EVENT = "X-Cutfarm-Event"
HEADER_DELIVERY = "X-Cutfarm-Delivery"
HEADER_TIMESTAMP = "X-Cutfarm-Timestamp"
HEADER_SIGNATURE = "X-Cutfarm-Signature"
#: Standard Webhooks (https://www.standardwebhooks.com) headers.
STD_ID = "webhook-id"
STD_TIMESTAMP = "webhook-timestamp"
STD_SIGNATURE = "webhook-signature"
#: A restarted coordinator resumes unfinished deliveries of jobs that ended this recently.
RESUME_WINDOW_SECONDS = 24 * 3600.0
#: Same bound as ``ExportConfig.callback_url``.
MAX_URL_LENGTH = 2048
#: How far a receiver lets a signed timestamp be from its own clock, in seconds.
DEFAULT_TOLERANCE = 300.0
#: Longest error text kept in a recorded attempt.
MAX_ERROR_CHARS = 300

EVENTS: dict[JobState, str] = {
    JobState.COMPLETED: "export.completed",
    JobState.FAILED: "export.failed",
    JobState.CANCELLED: "export.cancelled",
}

#: Stores one attempt record: ``{"attempt", "at", "status", "error", "delivered",
#: "deliveryId"}``.
Recorder = Callable[[dict[str, Any]], Awaitable[None]]


# ---------------------------------------------------------------------- request and signature


def event_name(status: JobStatus) -> str:
    """``export.completed`` / ``export.failed`` / ``export.cancelled``; ValueError otherwise."""
    try:
        return EVENTS[status.status]
    except KeyError:
        raise ValueError(
            f"export {status.job_id!r} is {status.status.value}; webhooks are sent only for "
            "finished exports"
        ) from None


def payload(status: JobStatus, delivery_id: str) -> dict[str, Any]:
    """The JSON document sent for a finished job (see the module docstring)."""
    data: dict[str, Any] = {"event": event_name(status), "deliveryId": delivery_id}
    data.update(status.editor_view())
    data["createdAt"] = status.created_at
    data["startedAt"] = status.started_at
    data["finishedAt"] = status.finished_at
    if status.output_bytes is not None:
        data["outputBytes"] = status.output_bytes
    return data


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``b"<timestamp>." + body`` under ``secret``."""
    message = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def standard_key(secret: str) -> bytes:
    """The Standard Webhooks key for ``secret``: ``whsec_<base64>`` decoded, else its bytes."""
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret[len("whsec_"):] + "==", validate=False)
        except ValueError:
            pass
    return secret.encode()


def sign_standard(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>." + body)>`` (Standard Webhooks)."""
    message = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(standard_key(secret), message, hashlib.sha256).digest()
    return f"v1,{base64.b64encode(digest).decode()}"


def build_request(status: JobStatus, secret: str | None, now: float, *,
                  delivery_id: str | None = None) -> tuple[bytes, dict[str, str]]:
    """Body and headers of one delivery attempt for a finished job.

    Pass the same ``delivery_id`` on every retry (a new uuid4 when None): the body is then
    byte-identical across attempts and only the timestamp and signature change.
    """
    delivery = delivery_id or str(uuid.uuid4())
    data = payload(status, delivery)
    body = json.dumps(data, separators=(",", ":")).encode()
    timestamp = str(int(now))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        HEADER_EVENT: data["event"],
        HEADER_DELIVERY: delivery,
        HEADER_TIMESTAMP: timestamp,
        STD_ID: delivery,
        STD_TIMESTAMP: timestamp,
    }
    if secret:
        headers[HEADER_SIGNATURE] = f"{SIGNATURE_SCHEME}={sign(secret, timestamp, body)}"
        headers[STD_SIGNATURE] = sign_standard(secret, delivery, timestamp, body)
    return body, headers


def verify_signature(secret: str, timestamp: str | int, body: bytes, header: str | None,
                     tolerance: float = DEFAULT_TOLERANCE, now: float | None = None) -> bool:
    """Receiver side: True when ``header`` signs ``timestamp`` + ``body`` and is fresh.

    ``timestamp`` and ``header`` are the raw ``X-Cutfarm-Timestamp`` and
    ``X-Cutfarm-Signature`` values and ``body`` the raw request body. False (never an
    exception) for a missing secret or header, a malformed timestamp, a timestamp more
    than ``tolerance`` seconds from ``now`` (either way), or no matching ``v1=`` value.
    Comparison is constant-time.
    """
    if not secret or not header:
        return False
    ts = str(timestamp)
    if not (ts.isascii() and ts.isdigit()):
        return False
    current = time.time() if now is None else now
    if abs(current - int(ts)) > tolerance:
        return False
    expected = sign(secret, ts, body).encode()
    matched = False
    for item in header.split(","):
        scheme, sep, value = item.strip().partition("=")
        if sep and scheme == SIGNATURE_SCHEME:
            # Check every candidate (no early exit) so timing says nothing about which matched.
            matched |= hmac.compare_digest(expected, value.strip().lower().encode())
    return matched


# ---------------------------------------------------------------------- targets


def is_allowed_target(host: str, *, allow_private: bool = True) -> bool:
    """Whether webhooks may go to ``host`` (lowercase name or IP literal, no port).

    With ``allow_private=False`` (the service's default, ``CUTFARM_WEBHOOK_ALLOW_PRIVATE``
    off) loopback, private, link-local (cloud metadata) and other non-global literals, and
    ``localhost``, are refused. Names are not resolved here: a name that resolves to an
    internal address still passes (DNS can change between check and use); deployments that
    take callback URLs from untrusted users should also restrict egress at the network.
    """
    if allow_private:
        return True
    if host in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return False
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return True
    return ip.is_global


def validate_callback_url(url: str, *, allow_private: bool = True) -> str:
    """Return ``url`` if it may be used as a callback URL; ValueError saying why if not."""
    if not isinstance(url, str) or not url:
        raise ValueError("callbackUrl is empty; give an http:// or https:// URL")
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"callbackUrl is {len(url)} characters long; at most "
                         f"{MAX_URL_LENGTH} are allowed")
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise ValueError("callbackUrl must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError("callbackUrl is not a valid URL (check the host and port)") from None
    if parts.scheme.lower() not in ("http", "https"):
        shown = f"{parts.scheme}://" if parts.scheme else "no scheme"
        raise ValueError(f"callbackUrl must start with http:// or https://, not {shown}")
    if "@" in parts.netloc:
        raise ValueError("callbackUrl must not contain a user name or password; authenticate "
                         "the request with the webhook signature (or a token in the path)")
    host = parts.hostname
    if not host:
        raise ValueError("callbackUrl has no host name")
    if port == 0:
        raise ValueError("callbackUrl has an invalid port")
    if not is_allowed_target(host, allow_private=allow_private):
        raise ValueError(f"callbackUrl's host {host!r} is not an allowed webhook target")
    return url


# ---------------------------------------------------------------------- delivery


@dataclass(frozen=True)
class _Outcome:
    status: int | None
    error: str | None
    delivered: bool = False
    retry: bool = False
    retry_after: float | None = None


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (seconds or HTTP date); None if unusable."""
    if not value:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def backoff_delay(attempt: int, base_delay: float, max_delay: float,
                  retry_after: float | None = None,
                  rng: Callable[[], float] = random.random) -> float:
    """Wait before the attempt after ``attempt`` (1-based): exponential, jittered, capped.

    ``base_delay * 2**(attempt-1)`` scaled by a random factor in [0.5, 1), at least
    ``retry_after`` when the receiver gave one, never more than ``max_delay``.
    """
    exponential = min(max_delay, base_delay * 2.0 ** min(max(attempt - 1, 0), 32))
    delay = exponential * (0.5 + rng() / 2)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return max(0.0, min(delay, max_delay))


async def deliver(url: str, status: JobStatus, secret: str | None, record: Recorder, *,
                  attempts: int = 5, base_delay: float = 1.0, max_delay: float = 60.0,
                  timeout: float = 10.0, delivery_id: str | None = None,
                  allow_private: bool = False, first_attempt: int = 1) -> bool:
    """POST ``status`` to ``url`` until a 2xx answer or ``attempts`` tries; True if delivered.

    ``record`` is awaited after every attempt with ``{"attempt": n, "at": unix_seconds,
    "status": http_status_or_None, "error": text_or_None, "delivered": bool,
    "deliveryId": id, "final": bool}``; a URL that fails ``validate_callback_url`` (with
    the same ``allow_private`` policy as at submit) is recorded as one attempt that was not
    sent. ``first_attempt`` > 1 resumes a delivery a restarted coordinator found unfinished:
    numbering goes on and ``attempts`` stays the total. Never raises: failures (of the
    receiver, the network, ``record`` or this code) are recorded and/or logged.
    Cancellation propagates.
    """
    try:
        return await _deliver(url, status, secret, record, attempts=attempts,
                              base_delay=base_delay, max_delay=max_delay, timeout=timeout,
                              delivery_id=delivery_id or str(uuid.uuid4()),
                              allow_private=allow_private, first_attempt=first_attempt)
    except Exception:
        log.exception("webhook for export %s failed unexpectedly", status.job_id)
        return False


async def _deliver(url: str, status: JobStatus, secret: str | None, record: Recorder, *,
                   attempts: int, base_delay: float, max_delay: float, timeout: float,
                   delivery_id: str, allow_private: bool, first_attempt: int) -> bool:
    def entry(n: int, at: float, outcome: _Outcome, final: bool) -> dict[str, Any]:
        return {"attempt": n, "at": round(at, 3), "status": outcome.status,
                "error": outcome.error, "delivered": outcome.delivered,
                "deliveryId": delivery_id, "final": final}

    try:
        validate_callback_url(url, allow_private=allow_private)
    except ValueError as exc:
        await _record(record, entry(first_attempt, time.time(),
                                    _Outcome(None, f"not sent: {exc}"), True), timeout)
        log.warning("webhook for export %s not sent: %s", status.job_id, exc)
        return False
    last = max(1, attempts)
    if first_attempt > last:  # resumed after its last attempt was made, not yet marked
        await _record(record, entry(first_attempt, time.time(),
                                    _Outcome(None, "not sent: every attempt was used"), True),
                      timeout)
        return False
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=client_timeout) as session:
        for n in range(max(1, first_attempt), last + 1):
            started = time.time()
            body, headers = build_request(status, secret, started, delivery_id=delivery_id)
            outcome = await _attempt(session, url, body, headers, timeout)
            final = outcome.delivered or not outcome.retry or n >= last
            await _record(record, entry(n, started, outcome, final), timeout)
            if outcome.delivered:
                log.info("webhook for export %s delivered (attempt %d)", status.job_id, n)
                return True
            if final:
                break
            await asyncio.sleep(backoff_delay(n, base_delay, max_delay, outcome.retry_after))
    log.warning("webhook for export %s not delivered: %s", status.job_id, outcome.error)
    return False


async def _attempt(session: aiohttp.ClientSession, url: str, body: bytes,
                   headers: dict[str, str], timeout: float) -> _Outcome:
    """One POST, classified; never raises except CancelledError."""
    try:
        async with session.post(url, data=body, headers=headers,
                                allow_redirects=False) as resp:
            code = resp.status
            if 200 <= code < 300:
                return _Outcome(code, None, delivered=True)
            error = f"HTTP {code} {resp.reason or ''}".strip()
            if 300 <= code < 400:
                return _Outcome(code, f"{error} (redirects are not followed)")
            if code >= 500 or code == 429:
                wait = parse_retry_after(resp.headers.get("Retry-After"), time.time())
                return _Outcome(code, error, retry=True, retry_after=wait)
            return _Outcome(code, error)
    except TimeoutError:  # includes aiohttp's ServerTimeoutError
        return _Outcome(None, f"timed out after {timeout:g} s", retry=True)
    except aiohttp.InvalidURL as exc:
        return _Outcome(None, _describe(exc))
    except (aiohttp.ClientError, OSError) as exc:
        return _Outcome(None, _describe(exc), retry=True)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    described = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return described[:MAX_ERROR_CHARS]


async def _record(record: Recorder, attempt: dict[str, Any], timeout: float) -> None:
    """Store one attempt; a failing or stuck store is logged, not fatal to the delivery."""
    try:
        await asyncio.wait_for(record(attempt), timeout)
    except Exception:
        log.warning("could not record webhook attempt %s", attempt, exc_info=True)


# ---------------------------------------------------------------------- background delivery

#: Deliveries in flight. The event loop keeps only weak references to tasks: without this
#: set a pending delivery could be garbage-collected mid-retry.
_tasks: set[asyncio.Task[bool]] = set()
#: Recently started deliveries, by (job id, finishedAt): racing terminal updates notify once.
_started: OrderedDict[tuple[str, float | None], None] = OrderedDict()
_STARTED_MAX = 10_000


def spawn(url: str | None, status: JobStatus, secret: str | None, record: Recorder,
          **options: Any) -> asyncio.Task[bool] | None:
    """Start ``deliver`` as a background task in the running loop; None if nothing to send.

    Nothing is sent without a URL, for a job that has not finished, or when a delivery for
    this ending of this job (same job id and ``finishedAt``) was already started here.
    ``options`` go to ``deliver`` (attempts, base_delay, max_delay, timeout).
    """
    if not url or not status.status.terminal:
        return None
    key = (status.job_id, status.finished_at)
    if key in _started:
        return None
    _started[key] = None
    while len(_started) > _STARTED_MAX:
        _started.popitem(last=False)
    task = asyncio.get_running_loop().create_task(
        deliver(url, status, secret, record, **options), name=f"webhook:{status.job_id}")
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task


async def notify_finished(job_id: str, status_actor: Any, store: Store,
                          secret: str | None, **options: Any) -> asyncio.Task[bool] | None:
    """The coordinator's hook, awaited right after a job's terminal status update.

    Reads the job's current status from ``status_actor`` and its ``callbackUrl`` from the
    job's config.json, and starts a background delivery whose attempts are recorded with
    ``status_actor.add_webhook_attempt.remote(job_id, attempt)``. Returns the delivery task
    (None when nothing is sent: no callback URL, not terminal, already delivered, given up
    or started). A delivery with attempts but none final is resumed where it stopped.
    Quick, and never raises except CancelledError.
    """
    try:
        final: JobStatus = await status_actor.get.remote(job_id)
        done = final.webhook_attempts
        if not final.status.terminal or any(a.get("delivered") or a.get("final")
                                            for a in done):
            return None
        url = store.read_config(job_id).get("callbackUrl")
        if not url:
            return None

        async def record(attempt: dict[str, Any]) -> None:
            await status_actor.add_webhook_attempt.remote(job_id, attempt)

        if done:  # an unfinished delivery (the coordinator restarted): go on with it
            options = {**options, "first_attempt": len(done) + 1,
                       "delivery_id": str(done[-1].get("deliveryId") or uuid.uuid4())}
        return spawn(str(url), final, secret, record, **options)
    except Exception:
        log.warning("could not start the webhook for export %s", job_id, exc_info=True)
        return None
