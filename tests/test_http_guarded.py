"""The Serve app with a token and CORS configured; and fuzzing from its OpenAPI schema."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import quote

import httpx
import pytest
import ray
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from cluster.coordinator import COORDINATOR_NAME
from cluster.webhooks import verify_signature
from tests.conftest import MediaRoot as Media
from tests.http_support import Api, poll, running_api

TOKEN = "s3cret-token-for-tests"
ORIGIN = "https://editor.example"
SECRET = "webhook-secret"


class Receiver(BaseHTTPRequestHandler):
    """Answers FIRST to the first delivery and 200 afterwards; keeps what it got."""

    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []
    FIRST: ClassVar[int] = 500
    RETRY_AFTER: ClassVar[str | None] = None

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        first = len(self.received) == 1
        self.send_response(self.FIRST if first else 200)
        if first and self.RETRY_AFTER:
            self.send_header("Retry-After", self.RETRY_AFTER)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def api(media_root: Media, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    root = tmp_path_factory.mktemp("guarded-media")
    (root / "sources").mkdir()
    (root / "sources" / "h264_a.mp4").hardlink_to(media_root.sources / "h264_a.mp4")
    with running_api(root, api_token=TOKEN, cors_origins=(ORIGIN,),
                     webhook_secret=SECRET, webhook_allow_private=True) as running:
        yield running


def config(job_id: str) -> dict[str, Any]:
    return {"version": 1, "id": job_id, "projectName": "guarded",
            "sources": [{"filePath": "h264_a.mp4"}],
            "segments": [{"sourceIndex": 0, "startTime": 0.5, "endTime": 2.0}],
            "output": {"format": "mp4", "codec": "copy"}}


ENDPOINTS = [
    ("POST", "/api/export"), ("POST", "/api/export/plan"), ("GET", "/api/export"),
    ("GET", "/api/export/export-x/status"), ("GET", "/api/export/export-x/events"),
    ("GET", "/api/export/export-x/download"), ("HEAD", "/api/export/export-x/download"),
    ("DELETE", "/api/export/export-x"), ("GET", "/api/export/export-x/pieces"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_every_endpoint_requires_the_token(api: Api, method: str, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        r = httpx.request(method, api.base + path, headers=headers, json=config("export-x")
                          if method == "POST" else None, timeout=30)
        assert r.status_code == 401, (method, path, headers, r.status_code)
        if method != "HEAD":
            assert r.json() == {"error": "Missing or invalid API token"}


def test_token_flow_and_signed_download_link(api: Api) -> None:
    with api.client(TOKEN) as client:
        assert client.post("/api/export", json=config("export-tok")).status_code == 200
        final = poll(client, "export-tok")
    url = final["downloadUrl"]
    assert url.startswith("/api/export/export-tok/download?expires=")
    # The editor's plain browser download: no header, the link itself is the credential.
    r = httpx.get(api.base + url, timeout=30)
    assert r.status_code == 200 and len(r.content) > 1000
    tampered = url.replace("export-tok/download", "export-other/download")
    assert httpx.get(api.base + tampered, timeout=30).status_code in (401, 404)
    bad_sig = url[:-4] + ("0000" if not url.endswith("0000") else "1111")
    assert httpx.get(api.base + bad_sig, timeout=30).status_code == 401
    expired = url.split("?")[0] + "?expires=1&sig=" + url.split("sig=")[1]
    r = httpx.get(api.base + expired, timeout=30)
    assert r.status_code == 401 and "expired" in r.json()["error"]


def test_cors_for_the_configured_editor_origin(api: Api) -> None:
    pre = httpx.options(api.base + "/api/export", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"}, timeout=30)
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] == ORIGIN
    other = httpx.options(api.base + "/api/export", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}, timeout=30)
    assert other.headers.get("access-control-allow-origin") != "https://evil.example"


@contextlib.contextmanager
def completed_job_with_hook(api: Api, receiver: type[Receiver], job_id: str) -> Iterator[None]:
    """A receiver on a free port, and a job with it as callbackUrl, run to completion."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = config(job_id)
        cfg["callbackUrl"] = f"http://127.0.0.1:{server.server_port}/hooks/cutfarm"
        with api.client(TOKEN) as client:
            assert client.post("/api/export", json=cfg).status_code == 200
            assert poll(client, job_id)["status"] == "completed"
        yield
    finally:
        server.shutdown()
        server.server_close()


def wait_received(receiver: type[Receiver], count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(receiver.received) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(receiver.received) == count


def recorded_attempts(api: Api, job_id: str, count: int) -> list[dict[str, Any]]:
    """The job's webhookAttempts in status.json once ``count`` are there (or after 10 s)."""
    status_file = api.root / "exports" / job_id / "status.json"
    deadline = time.monotonic() + 10
    attempts: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        attempts = json.loads(status_file.read_text()).get("webhookAttempts", [])
        if len(attempts) == count:
            break
        time.sleep(0.1)
    return attempts


def test_webhook_is_signed_and_retried(api: Api) -> None:
    with completed_job_with_hook(api, Receiver, "export-hook"):
        wait_received(Receiver, 2, timeout=60)
        (h1, b1), (h2, b2) = Receiver.received
        assert b1 == b2 and h1["x-cutfarm-delivery"] == h2["x-cutfarm-delivery"]
        assert h2["x-cutfarm-event"] == "export.completed"
        assert verify_signature(SECRET, h2["x-cutfarm-timestamp"], b2, h2["x-cutfarm-signature"])
        assert not verify_signature("other", h2["x-cutfarm-timestamp"], b2,
                                    h2["x-cutfarm-signature"])
        payload = json.loads(b2)
        assert payload["jobId"] == "export-hook" and payload["status"] == "completed"
        # Standard Webhooks, verified by its own library, not by our code.
        assert Webhook(SECRET.encode()).verify(b2, h2) == payload
        assert h1["webhook-id"] == h2["webhook-id"] == h2["x-cutfarm-delivery"]
        with pytest.raises(WebhookVerificationError):
            Webhook(b"another-secret").verify(b2, h2)
        with pytest.raises(WebhookVerificationError):
            Webhook(SECRET.encode()).verify(b2.replace(b"completed", b"failed"), h2)
        attempts = recorded_attempts(api, "export-hook", 2)
        assert [a["status"] for a in attempts] == [500, 200]
        assert [a["delivered"] for a in attempts] == [False, True]


class SlowReceiver(Receiver):
    """503 with Retry-After to the first delivery (time to kill the coordinator), then 200."""

    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []
    FIRST = 503
    RETRY_AFTER = "6"


def test_webhook_retries_survive_a_coordinator_restart(api: Api) -> None:
    """Issue 12: pending webhook retries died with the coordinator."""
    with completed_job_with_hook(api, SlowReceiver, "export-outbox"):
        wait_received(SlowReceiver, 1, timeout=30)
        # Killed between attempt 1 and its retry, 6 s later: Ray restarts it.
        ray.kill(ray.get_actor(COORDINATOR_NAME, namespace=api.settings.namespace),
                 no_restart=False)
        wait_received(SlowReceiver, 2, timeout=90)
        (h1, b1), (h2, b2) = SlowReceiver.received
        assert b1 == b2 and h1["webhook-id"] == h2["webhook-id"]
        assert Webhook(SECRET.encode()).verify(b2, h2)["jobId"] == "export-outbox"
        attempts = recorded_attempts(api, "export-outbox", 2)
        assert [(a["attempt"], a["status"], a["delivered"], a["final"]) for a in attempts] == [
            (1, 503, False, False), (2, 200, True, True)]
        time.sleep(1)
        assert len(SlowReceiver.received) == 2  # delivered once more, never again


def test_invalid_callback_url_is_refused(api: Api) -> None:
    cfg = config("export-badhook")
    cfg["callbackUrl"] = "ftp://example.com/x"
    with api.client(TOKEN) as client:
        r = client.post("/api/export", json=cfg)
    assert r.status_code == 400 and r.json()["field"] == "callbackUrl"


# --------------------------------------------------------------------------- fuzzing

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
FIELDS = ["version", "id", "sources", "segments", "output", "accuracy", "priority",
          "callbackUrl", "projectName"]


def mutated_configs() -> st.SearchStrategy[Any]:
    """Valid configs with one field replaced by arbitrary JSON, and arbitrary JSON."""
    base = config("export-fuzz")
    seg_fields = ["sourceIndex", "startTime", "endTime", "audioFromSource"]
    top = st.builds(lambda k, v: {**base, k: v}, st.sampled_from(FIELDS), JSON)
    seg = st.builds(
        lambda k, v: {**base, "segments": [{**base["segments"][0], k: v}]},
        st.sampled_from(seg_fields), JSON)
    src = st.builds(lambda v: {**base, "sources": [{"filePath": v}]},
                    st.text(max_size=40) | JSON)
    return top | seg | src | JSON


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=mutated_configs(), path=st.sampled_from(["/api/export/plan", "/api/export"]))
def test_fuzzed_bodies_never_cause_a_server_error(api: Api, body: Any, path: str) -> None:
    r = httpx.post(api.base + path, content=json.dumps(body), timeout=60,
                   headers={"Authorization": f"Bearer {TOKEN}",
                            "Content-Type": "application/json"})
    assert r.status_code < 500, (r.status_code, r.text, body)
    assert "error" in r.json() or r.status_code == 200


def _schema_operations(api: Api) -> list[tuple[str, str, list[str]]]:
    schema = httpx.get(api.base + "/openapi.json", headers={
        "Authorization": f"Bearer {TOKEN}"}, timeout=30).json()
    ops = []
    for path, methods in schema["paths"].items():
        for method, op in methods.items():
            params = [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]
            ops.append((method.upper(), path, params))
    return ops


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_every_operation_in_the_openapi_schema_survives_fuzzing(api: Api,
                                                                 data: st.DataObject) -> None:
    ops = _schema_operations(api)
    assert len(ops) >= 8
    method, path, params = data.draw(st.sampled_from(ops))
    for name in params:
        value = data.draw(st.text(max_size=40) | st.sampled_from(
            ["export-x", "..", "../../etc/passwd", "%2e%2e%2f", "export-" + "a" * 130]))
        path = path.replace("{" + name + "}", quote(value, safe="") or "x")
    query = data.draw(st.dictionaries(st.sampled_from(["status", "expires", "sig"]),
                                      st.text(max_size=12), max_size=2))
    body = data.draw(JSON) if method in ("POST", "PUT") else None
    r = httpx.request(method, api.base + path, params=query, timeout=30,
                      content=json.dumps(body) if body is not None else None,
                      headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code < 500, (method, path, query, body, r.status_code, r.text[:200])
