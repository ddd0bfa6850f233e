"""The Ray Serve application: ``serve_app.app:app`` (import path for serve run/deploy).

A replica only validates and hands jobs to the detached coordinator, so replicas can come
and go (autoscaling, rolling updates) without touching any export. Settings come from the
environment of the replica, which ``build_app`` sets through the deployment's runtime_env.
"""

from __future__ import annotations

from typing import Any

from ray import serve

from cluster.api import CutfarmCluster
from cluster.settings import Settings, get_settings, to_env

from .api import create_app

#: A download or an events stream holds a request slot for its whole length.
MAX_ONGOING_REQUESTS = 100


class _Holder:
    cluster: CutfarmCluster | None = None


_holder = _Holder()
_settings = get_settings()


def current_cluster() -> CutfarmCluster:
    """The replica's cluster handles. A module-level function on purpose: Serve pickles the
    FastAPI app into the replica, and only a by-name reference reaches the replica's own
    module state (a bound method would carry a stale copy of the holder)."""
    if _holder.cluster is None:
        _holder.cluster = CutfarmCluster.connect(_settings)
    return _holder.cluster


api = create_app(_settings, current_cluster)


@serve.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS, health_check_period_s=10)
@serve.ingress(api)
class ExportAPI:
    def __init__(self) -> None:
        current_cluster()


def build_app(settings: Settings) -> Any:
    """The application for ``settings`` (replicas read them from their environment)."""
    return ExportAPI.options(  # type: ignore[attr-defined]
        ray_actor_options={"runtime_env": {"env_vars": to_env(settings)}},
    ).bind()


app = build_app(_settings)
