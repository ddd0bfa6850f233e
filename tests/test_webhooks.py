"""Webhook delivery (cluster/webhooks.py) against a real HTTP receiver on 127.0.0.1.

The receiver is ``http.server`` in a thread; each test scripts its answers and reads back
what arrived (headers, raw body, arrival time). Coroutines are driven with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from cluster import webhooks
from cluster.jobs import JobState, JobStatus
from cluster.store import JobStore
from cluster.webhooks import (
    HEADER_DELIVERY,
    HEADER_EVENT,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    backoff_delay,
    build_request,
    deliver,
    notify_finished,
    parse_retry_after,
    validate_callback_url,
    verify_signature,
)

SECRET = "s3cret-for-tests"
#: The receivers here listen on 127.0.0.1, which the service refuses unless allowed.
FAST: dict[str, Any] = {"base_delay": 0.01, "max_delay": 0.05, "timeout": 2.0,
                        "allow_private": True}


def finished(state: JobState = JobState.COMPLETED, job_id: str = "job-1") -> JobStatus:
    status = JobStatus(job_id=job_id, status=state, progress=1.0, message="Export complete",
                       created_at=1000.0, started_at=1001.0, finished_at=1010.5)
    if state == JobState.COMPLETED:
        status.download_url = f"/api/export/{job_id}/download"
        status.output_bytes = 123456
    elif state == JobState.FAILED:
        status.error = "source 0 is missing"
        status.message = "Export failed"
    return status


# ---------------------------------------------------------------------- the receiver


@dataclass
class Received:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to stall before answering


class Receiver:
    """Records requests; answers from ``script`` in order, then 200 for the rest."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.script: list[Reply] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.requests.append(Received(time.monotonic(), self.path,
                                                      dict(self.headers.items()), body))
                    reply = receiver.script.pop(0) if receiver.script else Reply()
                if reply.delay:
                    receiver.stop.wait(reply.delay)
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the client gave up (timeout test)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.01,),
                                       daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/cutfarm?k=1"

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


class Recorder:
    def __init__(self) -> None:
        self.attempts: list[dict[str, Any]] = []

    async def __call__(self, attempt: dict[str, Any]) -> None:
        self.attempts.append(attempt)


def run_deliver(url: str, status: JobStatus | None = None, secret: str | None = SECRET,
                **options: Any) -> tuple[bool, list[dict[str, Any]]]:
    rec = Recorder()
    opts = {**FAST, **options}
    ok = asyncio.run(deliver(url, status or finished(), secret, rec, **opts))
    return ok, rec.attempts


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# ---------------------------------------------------------------------- request and signature


def test_request_body_headers_and_signature() -> None:
    now = 1_767_225_600.7
    body, headers = build_request(finished(), SECRET, now)
    data = json.loads(body)
    assert data["event"] == "export.completed"
    assert data["jobId"] == "job-1"
    assert data["status"] == "completed"
    assert data["downloadUrl"] == "/api/export/job-1/download"
    assert data["finishedAt"] == 1010.5
    assert data["outputBytes"] == 123456
    assert data["deliveryId"] == headers[HEADER_DELIVERY]
    uuid.UUID(headers[HEADER_DELIVERY])
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == "cutfarm-webhook/1"
    assert headers[HEADER_EVENT] == "export.completed"
    assert headers[HEADER_TIMESTAMP] == "1767225600"
    scheme, _, digest = headers[HEADER_SIGNATURE].partition("=")
    assert scheme == "v1"
    assert len(digest) == 64
    int(digest, 16)
    assert verify_signature(SECRET, headers[HEADER_TIMESTAMP], body,
                            headers[HEADER_SIGNATURE], now=now + 10)


def test_events_for_each_terminal_state_and_none_for_running() -> None:
    failed, h = build_request(finished(JobState.FAILED), SECRET, 0.0)
    assert json.loads(failed)["event"] == h[HEADER_EVENT] == "export.failed"
    assert json.loads(failed)["error"] == "source 0 is missing"
    assert "outputBytes" not in json.loads(failed)
    cancelled, h = build_request(finished(JobState.CANCELLED), SECRET, 0.0)
    assert json.loads(cancelled)["event"] == h[HEADER_EVENT] == "export.cancelled"
    with pytest.raises(ValueError, match="only for finished"):
        build_request(JobStatus(job_id="j", status=JobState.PROCESSING), SECRET, 0.0)


def test_same_delivery_id_gives_identical_body() -> None:
    b1, h1 = build_request(finished(), SECRET, 100.0, delivery_id="d-1")
    b2, h2 = build_request(finished(), SECRET, 200.0, delivery_id="d-1")
    assert b1 == b2
    assert h1[HEADER_SIGNATURE] != h2[HEADER_SIGNATURE]  # the timestamp is signed


def test_verify_signature_rejects_tampering_and_stale_timestamps() -> None:
    now = 5_000_000.0
    body, h = build_request(finished(), SECRET, now)
    ts, sig = h[HEADER_TIMESTAMP], h[HEADER_SIGNATURE]
    assert verify_signature(SECRET, ts, body, sig, now=now)
    assert verify_signature(SECRET, int(ts), body, sig, now=now)
    assert not verify_signature(SECRET, ts, body.replace(b"completed", b"c0mpleted"), sig,
                                now=now)
    assert not verify_signature(SECRET, ts, body + b" ", sig, now=now)
    assert not verify_signature("other-secret", ts, body, sig, now=now)
    assert not verify_signature(SECRET, str(int(ts) + 1), body, sig, now=now)  # ts is signed
    assert not verify_signature(SECRET, ts, body, sig, now=now + 301)  # too old
    assert not verify_signature(SECRET, ts, body, sig, now=now - 301)  # from the future
    assert verify_signature(SECRET, ts, body, sig, now=now + 299)
    assert verify_signature(SECRET, ts, body, sig, tolerance=1000, now=now + 900)
    assert not verify_signature(SECRET, ts, body, None, now=now)
    assert not verify_signature(SECRET, ts, body, "", now=now)
    assert not verify_signature(SECRET, ts, body, sig.replace("v1=", "v0="), now=now)
    assert not verify_signature(SECRET, ts, body, sig[:-2], now=now)
    assert not verify_signature(SECRET, "12ab", body, sig, now=now)
    assert not verify_signature(SECRET, "", body, sig, now=now)
    assert not verify_signature("", ts, body, sig, now=now)
    assert not verify_signature(SECRET, ts, body, "v1=é", now=now)
    # Several values (rotation): any one matching is enough.
    assert verify_signature(SECRET, ts, body, f"v1={'0' * 64}, {sig}", now=now)
    assert verify_signature(SECRET, ts, body, f"{sig},v1={'0' * 64}", now=now)


def test_no_secret_no_signature_header(receiver: Receiver) -> None:
    _, headers = build_request(finished(), None, 100.0)
    assert HEADER_SIGNATURE not in headers
    assert headers[HEADER_TIMESTAMP] == "100"
    ok, attempts = run_deliver(receiver.url, secret=None)
    assert ok
    assert len(receiver.requests) == 1
    assert HEADER_SIGNATURE not in receiver.requests[0].headers
    assert attempts[0]["delivered"] is True


# ---------------------------------------------------------------------- delivery


def test_500_then_200_delivers_on_attempt_2(receiver: Receiver) -> None:
    receiver.script = [Reply(500)]
    before = time.time()
    ok, attempts = run_deliver(receiver.url)
    assert ok
    assert [(a["attempt"], a["status"], a["delivered"]) for a in attempts] == [
        (1, 500, False), (2, 200, True)]
    assert attempts[0]["error"].startswith("HTTP 500")
    assert attempts[1]["error"] is None
    assert all(before - 1 <= a["at"] <= time.time() for a in attempts)
    assert len(receiver.requests) == 2
    first, second = receiver.requests
    assert first.path == second.path == "/hooks/cutfarm?k=1"
    assert first.body == second.body
    delivery = first.headers[HEADER_DELIVERY]
    assert second.headers[HEADER_DELIVERY] == delivery
    assert {a["deliveryId"] for a in attempts} == {delivery}
    assert json.loads(first.body)["deliveryId"] == delivery
    for req in receiver.requests:
        assert req.headers["Content-Type"] == "application/json"
        assert req.headers["User-Agent"] == "cutfarm-webhook/1"
        assert req.headers[HEADER_EVENT] == "export.completed"
        assert verify_signature(SECRET, req.headers[HEADER_TIMESTAMP], req.body,
                                req.headers[HEADER_SIGNATURE])
        assert not verify_signature("wrong", req.headers[HEADER_TIMESTAMP], req.body,
                                    req.headers[HEADER_SIGNATURE])


def test_400_is_not_retried(receiver: Receiver) -> None:
    receiver.script = [Reply(400), Reply(200)]
    ok, attempts = run_deliver(receiver.url)
    assert not ok
    assert len(receiver.requests) == 1
    assert attempts == [{"attempt": 1, "at": attempts[0]["at"], "status": 400,
                         "error": "HTTP 400 Bad Request", "delivered": False,
                         "deliveryId": receiver.requests[0].headers[HEADER_DELIVERY],
                         "final": True}]


def test_redirect_is_not_followed(receiver: Receiver) -> None:
    receiver.script = [Reply(302, {"Location": "/elsewhere"})]
    ok, attempts = run_deliver(receiver.url)
    assert not ok
    assert [r.path for r in receiver.requests] == ["/hooks/cutfarm?k=1"]
    assert attempts[0]["status"] == 302
    assert "not followed" in attempts[0]["error"]


def test_5xx_until_the_limit(receiver: Receiver) -> None:
    receiver.script = [Reply(503)] * 10
    ok, attempts = run_deliver(receiver.url, attempts=3)
    assert not ok
    assert len(receiver.requests) == 3
    assert [a["status"] for a in attempts] == [503, 503, 503]
    assert [a["final"] for a in attempts] == [False, False, True]


def test_connection_refused_retries_up_to_the_limit() -> None:
    start = time.monotonic()
    ok, attempts = run_deliver(f"http://127.0.0.1:{closed_port()}/hook", attempts=4,
                               base_delay=0.01, max_delay=0.02)
    assert not ok
    assert [a["attempt"] for a in attempts] == [1, 2, 3, 4]
    for a in attempts:
        assert a["status"] is None
        assert a["delivered"] is False
        assert "connect" in a["error"].lower()
    assert time.monotonic() - start < 3


def test_timeout_is_retried(receiver: Receiver) -> None:
    receiver.script = [Reply(200, delay=2.0)]
    ok, attempts = run_deliver(receiver.url, timeout=0.2)
    assert ok
    assert attempts[0]["status"] is None
    assert attempts[0]["error"] == "timed out after 0.2 s"
    assert (attempts[1]["status"], attempts[1]["delivered"]) == (200, True)


def test_retry_after_is_honoured(receiver: Receiver) -> None:
    receiver.script = [Reply(429, {"Retry-After": "1"})]
    ok, attempts = run_deliver(receiver.url, base_delay=0.01, max_delay=5.0)
    assert ok
    assert [a["status"] for a in attempts] == [429, 200]
    gap = receiver.requests[1].at - receiver.requests[0].at
    assert 0.95 <= gap < 3.0


def test_retry_after_is_capped_by_max_delay(receiver: Receiver) -> None:
    receiver.script = [Reply(503, {"Retry-After": "30"})]
    ok, attempts = run_deliver(receiver.url, base_delay=0.01, max_delay=0.3)
    assert ok
    assert [a["status"] for a in attempts] == [503, 200]
    gap = receiver.requests[1].at - receiver.requests[0].at
    assert 0.25 <= gap < 2.0


def test_a_failing_recorder_does_not_stop_delivery(receiver: Receiver) -> None:
    receiver.script = [Reply(500)]
    calls = []

    async def broken(attempt: dict[str, Any]) -> None:
        calls.append(attempt)
        raise RuntimeError("status actor is gone")

    ok = asyncio.run(deliver(receiver.url, finished(), SECRET, broken, **FAST))
    assert ok
    assert len(calls) == 2
    assert len(receiver.requests) == 2


def test_invalid_url_is_recorded_and_never_raises() -> None:
    ok, attempts = run_deliver("ftp://example.com/hook")
    assert not ok
    assert len(attempts) == 1
    assert attempts[0]["status"] is None
    assert attempts[0]["error"].startswith("not sent: callbackUrl must start with http")


def test_unfinished_job_is_not_sent_and_never_raises(receiver: Receiver) -> None:
    ok, _ = run_deliver(receiver.url, JobStatus(job_id="j", status=JobState.PROCESSING))
    assert not ok
    assert receiver.requests == []


# ---------------------------------------------------------------------- URLs and targets


@pytest.mark.parametrize(("url", "why"), [
    ("ftp://example.com/hook", "http:// or https://"),
    ("http://user:pw@example.com/", "user name or password"),
    ("http://user@example.com/", "user name or password"),
    ("", "empty"),
    ("http:///x", "no host"),
    ("example.com/hook", "no scheme"),
    ("javascript:alert(1)", "http:// or https://"),
    ("http://example.com:99999/", "port"),
    ("http://example.com:0/", "port"),
    ("http://[::1/", "not a valid URL"),
    ("http://example.com/a b", "spaces"),
    ("http://example.com/\nx", "control"),
    ("https://example.com/" + "a" * 2100, "at most 2048"),
])
def test_validate_callback_url_rejects(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        validate_callback_url(url)


@pytest.mark.parametrize("url", [
    "https://hooks.example.com/cutfarm?token=abc",
    "http://127.0.0.1:8080/h",
    "HTTPS://Example.COM",
    "http://[::1]:9000/x",
])
def test_validate_callback_url_accepts(url: str) -> None:
    assert validate_callback_url(url) == url


def test_private_targets_are_refused_unless_allowed() -> None:
    for url in ("http://127.0.0.1/x", "http://localhost:8080/x", "http://10.1.2.3/x",
                "http://169.254.169.254/latest", "http://[::1]/x", "http://192.168.0.5/x"):
        with pytest.raises(ValueError, match="not an allowed webhook target"):
            validate_callback_url(url, allow_private=False)
        assert validate_callback_url(url, allow_private=True) == url
    assert validate_callback_url("https://hooks.example.com/x", allow_private=False)
    assert validate_callback_url("http://93.184.216.34/x", allow_private=False)


def test_is_allowed_target_is_consulted(receiver: Receiver,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def only_example(host: str, *, allow_private: bool = True) -> bool:
        seen.append(host)
        return host.endswith(".example.com")

    monkeypatch.setattr(webhooks, "is_allowed_target", only_example)
    assert validate_callback_url("https://hooks.example.com/x")
    with pytest.raises(ValueError, match="not an allowed webhook target"):
        validate_callback_url(receiver.url)
    ok, attempts = run_deliver(receiver.url)
    assert not ok
    assert receiver.requests == []
    assert "not an allowed webhook target" in attempts[0]["error"]
    assert seen[-1] == "127.0.0.1"


# ---------------------------------------------------------------------- backoff


def test_backoff_delay_is_exponential_jittered_and_capped() -> None:
    assert backoff_delay(1, 1.0, 60.0, rng=lambda: 0.0) == 0.5
    assert backoff_delay(1, 1.0, 60.0, rng=lambda: 0.999) == pytest.approx(0.9995)
    assert backoff_delay(4, 1.0, 60.0, rng=lambda: 0.0) == 4.0
    assert backoff_delay(20, 1.0, 60.0, rng=lambda: 0.999) <= 60.0
    assert backoff_delay(5000, 1.0, 60.0) <= 60.0
    assert backoff_delay(1, 1.0, 60.0, retry_after=7.0) == 7.0
    assert backoff_delay(1, 1.0, 60.0, retry_after=600.0) == 60.0
    assert backoff_delay(3, 1.0, 60.0, retry_after=0.0, rng=lambda: 0.0) == 2.0
    delays = {backoff_delay(3, 1.0, 60.0) for _ in range(20)}
    assert len(delays) > 1 and all(2.0 <= d < 4.0 for d in delays)


def test_parse_retry_after() -> None:
    now = 1_445_412_480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(" 3 ", now) == 3.0
    assert parse_retry_after(formatdate(now + 90, usegmt=True), now) == pytest.approx(90.0)
    assert parse_retry_after(formatdate(now - 90, usegmt=True), now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("-5", now) is None
    assert parse_retry_after(None, now) is None


# ---------------------------------------------------------------------- the coordinator's hook


class _Method:
    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def remote(self, *args: Any) -> Any:
        async def call() -> Any:
            return self.fn(*args)
        return call()


class FakeStatusActor:
    """The two StatusActor methods ``notify_finished`` uses, without Ray."""

    def __init__(self, status: JobStatus) -> None:
        self.status = status
        self.get = _Method(lambda job_id: self.status)
        self.add_webhook_attempt = _Method(
            lambda job_id, attempt: self.status.webhook_attempts.append(attempt))


def test_notify_finished_delivers_records_and_dedupes(receiver: Receiver,
                                                      tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    job_id = f"job-{uuid.uuid4().hex[:8]}"
    store.write_config(job_id, {"id": job_id, "callbackUrl": receiver.url})
    actor = FakeStatusActor(finished(JobState.CANCELLED, job_id))
    receiver.script = [Reply(502)]

    async def scenario() -> None:
        task = await notify_finished(job_id, actor, store, SECRET, **FAST)
        assert task is not None
        # Racing terminal updates notify again: same ending, no second delivery.
        assert await notify_finished(job_id, actor, store, SECRET, **FAST) is None
        assert await task is True

    asyncio.run(scenario())
    assert [(a["status"], a["delivered"]) for a in actor.status.webhook_attempts] == [
        (502, False), (200, True)]
    assert len(receiver.requests) == 2
    assert receiver.requests[0].headers[HEADER_EVENT] == "export.cancelled"

    async def again() -> None:
        # A restarted coordinator sees the delivered attempt in the status: no resend.
        webhooks._started.clear()
        assert await notify_finished(job_id, actor, store, SECRET, **FAST) is None

    asyncio.run(again())
    assert len(receiver.requests) == 2


def test_notify_finished_sends_nothing_without_url_or_end(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    store.write_config("job-nourl", {"id": "job-nourl"})
    store.write_config("job-running", {"id": "job-running",
                                       "callbackUrl": "http://127.0.0.1:9/x"})
    running = JobStatus(job_id="job-running", status=JobState.PROCESSING)

    async def scenario() -> None:
        assert await notify_finished("job-nourl", FakeStatusActor(
            finished(job_id="job-nourl")), store, SECRET) is None
        assert await notify_finished("job-running", FakeStatusActor(running), store,
                                     SECRET) is None
        # A missing job (config gone) is logged, not raised.
        assert await notify_finished("job-gone", FakeStatusActor(
            finished(job_id="job-gone")), store, SECRET) is None

    asyncio.run(scenario())


def test_standard_webhooks_headers_verify_with_the_reference_library() -> None:
    body, headers = build_request(finished(), SECRET, time.time())
    assert Webhook(SECRET.encode()).verify(body, headers)["jobId"] == "job-1"
    # A secret written in the specification's own form is used as that form says.
    std = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
    body, headers = build_request(finished(), std, time.time())
    assert Webhook(std).verify(body, headers)["status"] == "completed"
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET.encode()).verify(body, headers)


def test_the_delivery_time_check_uses_the_submit_policy(receiver: Receiver) -> None:
    """Issue 12: at delivery the URL was re-checked with the permissive default."""
    ok, attempts = run_deliver(receiver.url, allow_private=False)
    assert not ok and receiver.requests == []
    assert "not an allowed webhook target" in attempts[0]["error"] and attempts[0]["final"]


def test_an_unfinished_delivery_is_resumed_where_it_stopped(receiver: Receiver,
                                                             tmp_path: Path) -> None:
    """The outbox: a coordinator that died between attempts left one non-final attempt."""
    store = JobStore(tmp_path)
    job_id = f"job-{uuid.uuid4().hex[:8]}"
    store.write_config(job_id, {"id": job_id, "callbackUrl": receiver.url})
    status = finished(JobState.COMPLETED, job_id)
    status.webhook_attempts.append({"attempt": 1, "status": 503, "delivered": False,
                                    "deliveryId": "d-1", "final": False})
    actor = FakeStatusActor(status)

    async def scenario() -> None:
        webhooks._started.clear()
        task = await notify_finished(job_id, actor, store, SECRET, **FAST)
        assert task is not None and await task is True

    asyncio.run(scenario())
    assert [(a["attempt"], a["deliveryId"], a["final"]) for a in status.webhook_attempts] == [
        (1, "d-1", False), (2, "d-1", True)]
    assert receiver.requests[0].headers[HEADER_DELIVERY] == "d-1"

    async def again() -> None:  # final now: a later restart sends nothing
        webhooks._started.clear()
        assert await notify_finished(job_id, actor, store, SECRET, **FAST) is None

    asyncio.run(again())
    assert len(receiver.requests) == 1
