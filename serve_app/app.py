"""The Ray Serve application: ``serve_app.app:app`` (import path for serve run/deploy).

A replica only validates and hands jobs to the detached coordinator, so replicas can come
and go (autoscaling, rolling updates) without touching any export. The FastAPI app is built
inside each replica (``__serve_build_asgi_app__``) from the settings the deployment was bound
with, so middlewares (body limit, CORS) and the token always match the replica's settings.
"""

from __future__ import annotations

import os
from typing import Any

from ray import serve

from cluster.api import CutfarmCluster
from cluster.priority import CONTROL_PLANE_ENV
from cluster.settings import Settings, get_settings

from .api import create_app
from .ingress import DIRECT_FLAG, allow_rebind_over_time_wait

#: A download or an events stream holds a request slot for its whole length.
MAX_ONGOING_REQUESTS = 100


# Nice 0 (cluster/priority.py): the replica answers users while media work runs beside it.
@serve.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS, health_check_period_s=10,
                  ray_actor_options={"runtime_env": CONTROL_PLANE_ENV})
@serve.ingress()
class ExportAPI:
    def __init__(self, settings: Settings) -> None:
        if os.environ.get(DIRECT_FLAG) == "1":
            allow_rebind_over_time_wait()
        self.settings = settings
        self.cluster = CutfarmCluster.connect(settings)

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(self.settings, lambda: self.cluster)


def build_app(settings: Settings) -> Any:
    """The application for ``settings``."""
    return ExportAPI.options(  # type: ignore[attr-defined]
        logging_config={"enable_access_log": settings.access_log}).bind(settings)


#: For ``serve run serve_app.app:app`` and Serve config files: settings from the environment.
app = build_app(get_settings())
