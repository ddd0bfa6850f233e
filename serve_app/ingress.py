"""How HTTP reaches the API replica: through Serve's proxy, or straight into it.

Ray Serve normally answers HTTP in a proxy actor (uvicorn) that forwards every request to
a replica over Ray: two Python processes, and two serialisations, per request. Measured on
a 2-core machine that is about 5 ms of proxy CPU plus 4 ms of replica CPU for one status
poll, so 200 polls a second would need both cores while exports run.

Serve's *direct ingress* (``RAY_SERVE_ENABLE_DIRECT_INGRESS``, Ray 2.60, experimental) lets
the ingress replica run the HTTP server itself: the same FastAPI app, the same Serve
deployment and health checks, no proxy hop (about 2 ms of CPU per request in all). Serve
gives each ingress replica a port from ``[MIN_HTTP_PORT, MAX_HTTP_PORT)``; a range of one
port makes the one API replica on this node answer on the public port, while Serve's own
proxy (still started) listens on an internal port nobody is told about.

The flags are read when each Ray process starts, so they are set in the environment before
``cutfarm serve`` starts its local Ray; a cluster started elsewhere needs them on every
``ray start`` (the README says how). One API replica per node in this mode: a second one
would find no free port in the range.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from collections.abc import Iterator
from typing import Any

DIRECT_FLAG = "RAY_SERVE_ENABLE_DIRECT_INGRESS"

#: Run the API's handlers on the replica's own event loop. By default Serve runs user code
#: on a second loop in a thread of its own, so every request crosses threads twice; while
#: exports hold both cores, each crossing waits for the other thread to be scheduled
#: (measure_status.py, 10 exports, 200 polls/s: p99 683 ms with two loops; 31-412 ms, p50
#: 1.8-3.6 ms against 7.7 ms, with one). Our handlers never block their loop (slow work
#: goes to threads), which is what this mode asks of them.
REPLICA_LOOP_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}


def direct_ingress_env(port: int) -> dict[str, str]:
    """Environment that makes the API replica itself listen on ``port``."""
    return {
        DIRECT_FLAG: "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + 1),
        # Serve keeps a stopping replica answering for 30 s so that load balancers notice;
        # with one replica on its own port nobody needs that, and `serve` should stop fast.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
        **REPLICA_LOOP_ENV,
    }


@contextlib.contextmanager
def ingress_environment(mode: str, port: int) -> Iterator[None]:
    """Set (then restore) the environment for ``mode`` ("proxy" or "direct")."""
    wanted = direct_ingress_env(port) if mode == "direct" else {}
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def allow_rebind_over_time_wait() -> None:
    """Make the direct-ingress listener bind like every other server: with SO_REUSEADDR.

    Serve 2.60 binds the replica's listener without it. Connections the server closed (an
    idle browser tab's keep-alive when ``serve`` stops) then sit in TIME_WAIT on the public
    port for 60 s, and a restart within that minute cannot bind: the replica fails, Serve
    marks the port blocked, and the API never comes up. Serve's helper sets SO_REUSEADDR
    together with SO_REUSEPORT; the port range of one port already keeps a second replica off
    it, and ``serve`` refuses a port that something is listening on before starting.

    Called in the replica before Serve starts the listener; a Serve without the helper
    (another version) is left as it is.
    """
    try:
        from ray.serve._private import replica
    except ImportError:  # pragma: no cover - another Ray layout
        return
    original = getattr(replica, "start_asgi_http_server", None)
    if original is None or getattr(original, "_cutfarm_rebind", False):
        return
    if "enable_so_reuseport" not in inspect.signature(original).parameters:
        return

    @functools.wraps(original)
    async def start_with_reuse(*args: Any, **kwargs: Any) -> Any:
        kwargs["enable_so_reuseport"] = True
        return await original(*args, **kwargs)

    start_with_reuse._cutfarm_rebind = True  # type: ignore[attr-defined]
    setattr(replica, "start_asgi_http_server", start_with_reuse)  # noqa: B010
