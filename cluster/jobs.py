"""Jobs and their statuses as typed data, shared by ``cluster/`` and ``serve_app/``.

``JobStatus`` is the truth about one export. ``editor_view()`` gives exactly the fields the
editor reads (``jobId``, ``status``, ``progress``, ``message``, and ``error`` or
``downloadUrl``); everything else is our addition and the editor ignores it.
"""

from __future__ import annotations

import hashlib
import json
import time
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class JobState(StrEnum):
    """Where a job is in its life. Terminal states never change again."""

    #: Accepted and queued; waits for a free slot (cluster-wide limit, priority order).
    PENDING = "pending"
    #: Planning, re-encoding pieces or assembling the output.
    PROCESSING = "processing"
    #: The output file is in place and can be downloaded.
    COMPLETED = "completed"
    #: Stopped by an error; ``error`` says why in a sentence for the user.
    FAILED = "failed"
    #: Stopped by the user; its pieces and output were removed.
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED)


class PiecePlacement(BaseModel):
    """Where one piece of a job ran (for operators and locality tests). Kept beside the
    status, not in it: the document every poll returns must not grow with the work."""

    model_config = ConfigDict(frozen=True)

    index: int
    kind: str  # "encode", "audio", "concat"
    node_id: str
    attempt: int = 1


class JobStatus(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    job_id: str = Field(alias="jobId")
    status: JobState = JobState.PENDING
    progress: float = 0.0
    message: str = "Export job created"
    stage: str = "queued"
    error: str | None = None
    download_url: str | None = Field(default=None, alias="downloadUrl")
    priority: int = 0
    seq: int = 0  # arrival order, for the queue
    created_at: float = Field(default_factory=time.time, alias="createdAt")
    started_at: float | None = Field(default=None, alias="startedAt")
    finished_at: float | None = Field(default=None, alias="finishedAt")
    updated_at: float = Field(default_factory=time.time, alias="updatedAt")
    eta_seconds: float | None = Field(default=None, alias="etaSeconds")
    bytes_done: int = Field(default=0, alias="bytesDone")
    bytes_total: int = Field(default=0, alias="bytesTotal")
    frames_done: int = Field(default=0, alias="framesDone")
    frames_total: int = Field(default=0, alias="framesTotal")
    samples_done: int = Field(default=0, alias="samplesDone")
    samples_total: int = Field(default=0, alias="samplesTotal")
    pixels_per_frame: int = Field(default=0, alias="pixelsPerFrame")
    output_bytes: int | None = Field(default=None, alias="outputBytes")
    config_hash: str = Field(default="", alias="configHash")
    attempts: int = 0
    #: When the server last stopped (or crashed) while this job ran; it was then re-queued.
    interrupted_at: float | None = Field(default=None, alias="interruptedAt")
    #: Config fields we kept but did not act on (typos, fields of later schema versions).
    warnings: list[str] = Field(default_factory=list)
    webhook_attempts: list[dict[str, Any]] = Field(default_factory=list, alias="webhookAttempts")
    version: int = 0  # bumps on every change; lets watchers wait for the next one

    def editor_view(self) -> dict[str, Any]:
        view: dict[str, Any] = {
            "jobId": self.job_id,
            "status": self.status.value,
            "progress": round(self.progress, 4),
            "message": self.message,
        }
        if self.error is not None:
            view["error"] = self.error
        if self.download_url is not None:
            view["downloadUrl"] = self.download_url
        return view

    def to_file(self) -> dict[str, Any]:
        """status.json: the editor's shape first, then our fields."""
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        return {**self.editor_view(), **data}


def config_hash(config: dict[str, Any]) -> str:
    """Identity of a submitted config, ignoring the editor's status field."""
    clean = {k: v for k, v in config.items() if k != "status"}
    blob = json.dumps(clean, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()
