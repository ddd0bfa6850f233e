"""Error kinds to HTTP answers, in one place.

The editor shows ``error`` verbatim, so every answer carries one sentence; a 400 starts with
"Invalid config: " as the editor's own server did. ``field`` (our addition) names the config
field when there is one.

    render.ConfigError, render.MediaError      400  the config or its media is unusable
    cluster.JobNotFoundError                    404
    cluster.JobConflictError                    409  same id, different config
    BodyTooLarge                                413
    cluster.AdmissionError                      507  not enough disk for the export
    cluster.ClusterUnavailableError, RayError   503  Ray or our actors are restarting
    render.objectstore.StoreUnavailableError    503  the object store outlasted our retries
    any other RenderError / ClusterError        500

Not an HTTP answer: ``ServeRefusedError``, raised by ``cutfarm serve`` when it must not start
(port taken, export root or Ray cluster already served); the CLI prints it and exits 2.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse
from ray.exceptions import RayError

from cluster.errors import (
    AdmissionError,
    ClusterError,
    ClusterUnavailableError,
    JobConflictError,
    JobNotFoundError,
)
from render.errors import ConfigError, MediaError, RenderError
from render.objectstore import StoreUnavailableError

NOT_FOUND = "Export not found or not completed"


class ServeRefusedError(Exception):
    """``cutfarm serve`` will not start here; the message says why and what to do."""


class HTTPProblem(Exception):
    """An answer decided in the web layer itself (auth, size, not found)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def problem_response(exc: Exception) -> JSONResponse:
    status, body = _map(exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


def _map(exc: Exception) -> tuple[int, dict[str, str]]:
    if isinstance(exc, HTTPProblem):
        return exc.status, {"error": exc.message}
    if isinstance(exc, ConfigError | MediaError):
        body = {"error": f"Invalid config: {exc}"}
        if exc.field:
            body["field"] = exc.field
        return 400, body
    if isinstance(exc, JobNotFoundError):
        return 404, {"error": str(exc)}
    if isinstance(exc, JobConflictError):
        return 409, {"error": str(exc)}
    if isinstance(exc, AdmissionError):
        return 507, {"error": str(exc)}
    if isinstance(exc, ClusterUnavailableError | StoreUnavailableError):
        body = {"error": str(exc)}
        if isinstance(exc, RenderError) and exc.field:
            body["field"] = exc.field
        return 503, body
    if isinstance(exc, RenderError | ClusterError):
        body = {"error": str(exc)}
        if isinstance(exc, RenderError) and exc.field:
            body["field"] = exc.field
        return 500, body
    if isinstance(exc, RayError):
        return 503, {"error": "The export service is busy or restarting; please try again"}
    return 500, {"error": "Internal error; the export service logged the details"}
