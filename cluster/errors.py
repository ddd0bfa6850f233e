"""The cluster's exception tree.

    ClusterError
    ├── JobNotFoundError       no job with that id (or an id that is not a valid job id)
    ├── JobConflictError       the id exists with a different config
    ├── AdmissionError         the job cannot start: not enough disk, or the queue is full
    └── ClusterUnavailableError Ray or our actors cannot be reached

Job failures caused by the media or the config are the engine's ``render.errors`` (kept as
they are, so the HTTP layer maps them once); Ray's own errors are translated here with
``raise ... from exc``.
"""

from __future__ import annotations


class ClusterError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class JobNotFoundError(ClusterError):
    pass


class JobConflictError(ClusterError):
    pass


class AdmissionError(ClusterError):
    pass


class ClusterUnavailableError(ClusterError):
    pass
