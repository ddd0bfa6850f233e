"""``cutfarm serve``: one API per Ray cluster and per export root, and a clean stop.

    port free? -> lock <export root>/.cutfarm-serve.lock -> Ray (attach or start)
      -> refuse if that cluster already runs a cutfarm app -> Serve app -> banner
      -> wait for SIGTERM / SIGINT
      -> we started Ray: running exports go back to the queue marked "interrupted" (the
         next start resumes them and says so), then Serve and Ray stop with every process
         they started
      -> we attached to a cluster: only our app is removed; the cluster's exports go on

A second ``serve`` must never disturb a running one: it used to attach to the first's Ray,
redeploy the app over it, print a port Serve ignored, and on exit shut Serve down for both.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from cluster.settings import Settings
from render.objectstore import S3Location

from .errors import ServeRefusedError
from .ingress import ingress_environment

log = logging.getLogger("cutfarm.serve")

APP_NAME = "cutfarm"
LOCK_FILE = ".cutfarm-serve.lock"


@dataclass(frozen=True)
class Serving:
    """What a running ``serve`` is: written into its lock file for the next one to read."""

    pid: int
    url: str
    ray_address: str

    def describe(self) -> str:
        return f"{self.url} (pid {self.pid}, Ray at {self.ray_address})"


def check_port_free(host: str, port: int, patience: float = 5.0) -> None:
    """Refuse early when something already listens where the API should.

    A ``serve`` stopped a moment ago may still be letting its port go (its API replica is
    among the last processes to end), so a busy port is tried again for ``patience`` s.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ServeRefusedError(f"--host {host!r} is not an address of this machine") \
            from exc
    family, _, _, _, address = infos[0]
    deadline = time.monotonic() + patience
    while True:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(address)
                return
            except OSError as exc:
                if time.monotonic() >= deadline:
                    raise ServeRefusedError(
                        f"port {port} on {host} is already in use (another cutfarm serve or "
                        "another program); stop it or choose another one with --port") from exc
        time.sleep(0.25)


@contextlib.contextmanager
def serve_lock(export_root: Path | S3Location) -> Iterator[TextIO]:
    """Hold the export root for this process; refuse when another ``serve`` holds it.

    Two services on one export root would both resume its unfinished jobs. The lock is an
    flock, so it is released by the kernel however this process ends. A bucket cannot be
    flocked: its lock is a file in this machine's temp folder, named for the URL, so it
    keeps a second ``serve`` on this machine off the bucket, not one on another machine.
    """
    if isinstance(export_root, S3Location):
        digest = hashlib.sha256(export_root.url.encode()).hexdigest()[:20]
        folder = Path(tempfile.gettempdir()) / "cutfarm-locks" / digest
        shown = export_root.url
    else:
        folder, shown = export_root, str(export_root.parent)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fh = path.open("a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = _read_holder(fh.read())
            where = holder.describe() if holder else "by another process"
            raise ServeRefusedError(
                f"cutfarm is already serving {shown} at {where}; stop it, or "
                "give this one its own --media-root (and --port)") from None
        yield fh
    finally:
        fh.close()


def record_serving(fh: TextIO, serving: Serving) -> None:
    fh.seek(0)
    fh.truncate()
    fh.write(json.dumps(serving.__dict__))
    fh.flush()


def _read_holder(text: str) -> Serving | None:
    try:
        data = json.loads(text)
        return Serving(int(data["pid"]), str(data["url"]), str(data["ray_address"]))
    except (ValueError, KeyError, TypeError):
        return None


def check_no_cutfarm_app(ray_address: str) -> None:
    """Refuse to deploy over a cutfarm app another ``serve`` runs on this cluster."""
    from ray import serve

    apps = serve.status().applications
    if APP_NAME in apps:
        where = _published_url() or serving_url_or("its configured port")
        raise ServeRefusedError(
            f"a cutfarm API is already running on the Ray cluster at {ray_address} "
            f"(Serve app {APP_NAME!r}, {where}); stop it, "
            "or start an independent one with --ray-address local --port PORT "
            "--media-root DIR")


_URL_KEY = b"cutfarm-api-url"


def _publish_url(url: str) -> None:
    """Where this API answers, for a second `serve` to name (with direct ingress the Serve
    proxy's own address is not it)."""
    from ray.experimental import internal_kv

    with contextlib.suppress(Exception):
        internal_kv._internal_kv_put(_URL_KEY, url.encode(), overwrite=True)


def _published_url() -> str | None:
    from ray.experimental import internal_kv

    try:
        raw = internal_kv._internal_kv_get(_URL_KEY)
    except Exception:  # a private API: if it moves, the message only gets vaguer
        return None
    return raw.decode() if isinstance(raw, bytes) else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_direct_ingress(url: str, address: str, timeout: float = 60.0) -> None:
    """The API replica must answer on the public port itself, or serving makes no sense."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/health", timeout=5):
                return
        except urllib.error.HTTPError:
            return  # it answered (a token may be required): the replica listens
        except OSError:
            if time.monotonic() > deadline:
                raise ServeRefusedError(
                    f"nothing answers at {url}: the Ray cluster at {address} was not started "
                    "with Serve's direct ingress (RAY_SERVE_ENABLE_DIRECT_INGRESS=1 and "
                    "RAY_SERVE_DIRECT_INGRESS_MIN/MAX_HTTP_PORT on every `ray start`); "
                    "start it so, or set CUTFARM_INGRESS=proxy") from None
            time.sleep(0.3)


def serving_url_or(default: str) -> str:
    """Where this cluster's Serve proxy really listens (Serve keeps its first options)."""
    try:
        from ray.serve.context import _get_global_client

        client = _get_global_client(raise_if_no_controller_running=False)
        if client is None:
            return default
        http = client.http_config
        return f"http://{http.host}:{http.port}"
    except Exception:  # a private API: if it moves, the message only gets vaguer
        return default


def dashboard_login_hint(env: Mapping[str, str], home: Path) -> str:
    """How to authenticate to the dashboard of a cluster with Ray token auth on."""
    if env.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return "no login (RAY_AUTH_MODE=disabled)"
    if env.get("RAY_AUTH_TOKEN"):
        return "log in with the token in RAY_AUTH_TOKEN"
    path = env.get("RAY_AUTH_TOKEN_PATH") or str(home / ".ray" / "auth_token")
    return f"log in with the token in {path}; `ray get-auth-token` prints it"


class StopSignal:
    """SIGTERM and SIGINT both mean: stop cleanly. Installed after Ray starts, so they
    replace the handler Ray's core worker installs, which dumps stacks and aborts."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.name = ""

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.event.is_set():
            print("cutfarm: still stopping; it takes a few seconds", file=sys.stderr,
                  flush=True)
            return
        self.name = signal.Signals(signum).name
        self.event.set()

    def wait(self) -> None:
        while not self.event.wait(0.5):
            pass


def run(settings: Settings, out: TextIO = sys.stdout) -> int:
    """The whole life of ``cutfarm serve``; returns the exit code."""
    import ray
    from ray import serve

    from cluster.api import CutfarmCluster, ensure_ray

    from .app import build_app

    check_port_free(settings.host, settings.port)
    for root in settings.media_roots:
        if root.folder is not None:
            (root.folder / "sources").mkdir(parents=True, exist_ok=True)
            break  # the first folder is where a new user puts their files
    with serve_lock(settings.export_root) as lock:
        # Ray's processes read the ingress flags when they start: set before Ray is.
        with ingress_environment("proxy" if settings.ingress == "proxy" else "direct",
                                 settings.port):
            started_here = ensure_ray(settings)
        direct = settings.ingress == "direct" or (settings.ingress == "auto" and started_here)
        stop = StopSignal()
        stop.install()
        address = ray.get_runtime_context().gcs_address
        deployed = False
        try:
            if not started_here:
                check_no_cutfarm_app(address)
            url = f"http://{settings.host}:{settings.port}"
            if direct:
                # The API replica answers on the public port; Serve's proxy gets a port of
                # its own that nobody is told about.
                serve.start(http_options={"host": settings.host, "port": free_port()})
            else:
                serve.start(http_options={"host": settings.host, "port": settings.port})
                actual = serving_url_or(url)
                if actual != url and not direct:
                    raise ServeRefusedError(
                        f"the Ray cluster at {address} already serves HTTP at {actual} and "
                        f"cannot also listen at {url}; use --port {actual.rsplit(':', 1)[1]} "
                        "or --ray-address local")
            deployed = True
            serve.run(build_app(settings), name=APP_NAME, route_prefix="/", blocking=False)
            if direct:
                wait_direct_ingress(url, address)
            _publish_url(url)
            record_serving(lock, Serving(os.getpid(), url, address))
            cluster = CutfarmCluster.connect(settings)
            resumed = ray.get(cluster.coordinator.resumed_jobs.remote())
            _banner(out, settings, url, address, resumed)
            stop.wait()
            print(f"cutfarm: {stop.name or 'stop'} received; stopping", file=sys.stderr,
                  flush=True)
            if started_here:
                _suspend(cluster, out)
        finally:
            if deployed:
                _stop_serving(started_here)
            ray.shutdown()  # stops a cluster we started; only disconnects from another
    return 0


def _banner(out: TextIO, settings: Settings, url: str, address: str,
            resumed: list[dict[str, Any]]) -> None:
    import ray

    dashboard = ray.get_runtime_context().worker.node.address_info.get("webui_url") or ""
    roots = [r.path for r in settings.media_roots]
    lines = [f"cutfarm is serving {roots[0]} (sources in {roots[0]}/sources)",
             *(f"  also       {root}/sources" for root in roots[1:]),
             f"  exports    {settings.export_root}",
             f"  API        {url}/api/export",
             f"  API docs   {url}/docs",
             f"  Ray        {address}"]
    if dashboard:
        hint = dashboard_login_hint(os.environ, Path.home())
        lines.append(f"  dashboard  http://{dashboard}  ({hint})")
    if settings.api_token:
        lines.append("  token      required (Authorization: Bearer ...)")
    for job in resumed:
        lines.append(f"  resuming   {job['jobId']}: {job['why']}")
    lines.append("Press Ctrl-C (or send SIGTERM) to stop.")
    print("\n".join(lines), file=out, flush=True)


def _suspend(cluster: Any, out: TextIO) -> None:
    """Running exports go back to the queue, marked, before the cluster goes away."""
    import ray

    try:
        ids = ray.get(cluster.coordinator.suspend.remote(), timeout=30)
    except Exception as exc:  # the stop goes on: the next start still finds the jobs
        print(f"cutfarm: could not mark running exports as interrupted ({exc}); the next "
              "start resumes them anyway", file=sys.stderr)
        return
    for job_id in ids:
        print(f"  interrupted {job_id}: it resumes when cutfarm serve starts again",
              file=out, flush=True)


def _stop_serving(started_here: bool) -> None:
    from ray import serve

    with contextlib.suppress(Exception):
        if started_here:
            serve.shutdown()  # type: ignore[no-untyped-call]
        else:
            # Not ours to stop: only our app goes; other apps and the exports stay.
            serve.delete(APP_NAME)
