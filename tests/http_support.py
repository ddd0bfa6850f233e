"""A real Serve app on a local Ray, for HTTP tests."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import ray
from ray import serve

from cluster.api import LOCAL_RAY_SYSTEM_CONFIG
from cluster.settings import MediaRoot, Settings
from serve_app.ingress import ingress_environment
from tests.cluster_support import new_namespace


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stable_port() -> int:
    """A free port below the kernel's ephemeral range, for a server that restarts on it.

    A port the kernel handed out (``free_port``) can be taken, while the server is down,
    as the local end of some other process's outgoing connection; then the restart finds
    it busy. Ray's own worker ports are 10002-19999 and direct ingress uses 30000-31000.
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.sample(range(21000, min(low, 30000)), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


@dataclass
class Api:
    base: str
    root: Path
    settings: Settings

    def client(self, token: str | None = None, timeout: float = 60.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=timeout)


#: How HTTP reaches the app (serve_app/ingress.py): "direct", what `cutfarm serve` uses
#: with its own Ray, or "proxy" (Serve's proxy actor, as on an attached cluster).
INGRESS = os.environ.get("CUTFARM_TEST_INGRESS", "direct")


@contextlib.contextmanager
def running_api(root: Path, *, ingress: str = INGRESS, **settings: Any) -> Iterator[Api]:
    """Local Ray + Serve app with ``settings``; everything is torn down afterwards."""
    port = free_port()
    with ingress_environment(ingress, port), _running_api(root, port, ingress,
                                                          **settings) as api:
        yield api


@contextlib.contextmanager
def _running_api(root: Path, port: int, ingress: str, **settings: Any) -> Iterator[Api]:
    from serve_app.app import build_app

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    settings.setdefault("media_roots", (MediaRoot(root),))
    s = Settings(namespace=new_namespace(), port=port, **settings)
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             _system_config=LOCAL_RAY_SYSTEM_CONFIG)
    try:
        proxy_port = free_port() if ingress == "direct" else port
        serve.start(http_options={"host": "127.0.0.1", "port": proxy_port})
        serve.run(build_app(s), name="cutfarm", route_prefix="/", blocking=False)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                headers = {"Authorization": f"Bearer {s.token}"} if s.token else {}
                if httpx.get(f"{base}/api/health", headers=headers, timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the Serve app did not become healthy")
            time.sleep(0.2)
        yield Api(base, root, s)
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()


def poll(client: httpx.Client, job_id: str, timeout: float = 120.0,
         interval: float = 0.3) -> dict[str, Any]:
    """The editor's loop: GET status every few hundred ms until the job ends."""
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"/api/export/{job_id}/status")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        if body["status"] in ("completed", "failed", "cancelled"):
            return body
        assert 0.0 <= body["progress"] <= 1.0
        if time.monotonic() > deadline:
            raise AssertionError(f"{job_id} did not finish: {body}")
        time.sleep(interval)
