"""The job directory layout ops know from the old backend, written atomically.

    <first media root>/exports/<jobId>/
        config.json     the validated config
        status.json     the editor's status shape plus our fields
        output.<ext>    the result (appears only when complete: written elsewhere, renamed)
        work/           pieces while the job runs; removed when it ends

The files are the truth; actors are caches that reload them on start. Every write goes to a
temporary file in the same directory and is renamed over the old one, so a crash leaves
either the old or the new content, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from render.config import is_valid_job_id

from .errors import JobNotFoundError
from .jobs import JobState, JobStatus

CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
WORK_DIR = "work"


class JobStore:
    def __init__(self, export_root: Path) -> None:
        self.root = export_root

    def job_dir(self, job_id: str) -> Path:
        if not is_valid_job_id(job_id):
            # Ids become directory names: never let one reach the file system unchecked.
            raise JobNotFoundError(f"export {job_id!r} not found")
        return self.root / job_id

    def work_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / WORK_DIR

    def output_path(self, job_id: str, fmt: str) -> Path:
        return self.job_dir(job_id) / f"output.{fmt}"

    def write_config(self, job_id: str, config: dict[str, Any]) -> None:
        _atomic_write(self.job_dir(job_id) / CONFIG_FILE, config)

    def read_config(self, job_id: str) -> dict[str, Any]:
        path = self.job_dir(job_id) / CONFIG_FILE
        try:
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise JobNotFoundError(f"export {job_id!r} not found") from exc
        return data

    def write_status_data(self, job_id: str, data: dict[str, Any], durable: bool) -> None:
        """A status document (``JobStatus.to_file()``, possibly taken earlier); nothing when
        the job's folder is gone (a late write must not bring a deleted job back).

        ``durable=False`` skips fsync: progress ticks need atomicity, not power-loss
        safety, and an fsync per tick on network storage would stall the status actor."""
        d = self.job_dir(job_id)
        if d.is_dir():
            _atomic_write(d / STATUS_FILE, data, durable=durable)

    def read_status(self, job_id: str) -> JobStatus | None:
        path = self.job_dir(job_id) / STATUS_FILE
        try:
            return JobStatus.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except (FileNotFoundError, ValueError):
            return None

    def iter_statuses(self) -> Iterator[tuple[JobStatus, bool]]:
        """Every job folder's status, and whether it had to be repaired.

        A folder whose status.json is missing or unreadable (a crash mid-write on a
        filesystem without atomic rename, a hand edit) is not skipped: it would vanish from
        every list while its files stay forever. It comes back as a failed job that says
        so, finished when the folder last changed, so the retention sweep removes it.
        """
        if not self.root.is_dir():
            return
        for entry in sorted(self.root.iterdir()):
            if entry.is_dir() and is_valid_job_id(entry.name):
                status = self.read_status(entry.name)
                if status is not None:
                    yield status, False
                else:
                    yield self._damaged(entry), True

    @staticmethod
    def _damaged(folder: Path) -> JobStatus:
        path = folder / STATUS_FILE
        what = "is damaged" if path.exists() else "is missing"
        changed = max((p.stat().st_mtime for p in folder.iterdir()),
                      default=folder.stat().st_mtime)
        return JobStatus(
            job_id=folder.name, status=JobState.FAILED, stage="failed",
            message="Export failed",
            error=f"this export's status file {what}, so its state is unknown; submit it "
                  "again (its files are removed with the other old exports)",
            created_at=changed, finished_at=changed, updated_at=changed)

    def remove_work(self, job_id: str) -> None:
        shutil.rmtree(self.work_dir(job_id), ignore_errors=True)

    def remove_outputs(self, job_id: str) -> None:
        """Pieces, partial and final outputs: everything but config and status."""
        d = self.job_dir(job_id)
        self.remove_work(job_id)
        if d.is_dir():
            for entry in d.iterdir():
                if entry.name not in (CONFIG_FILE, STATUS_FILE):
                    if entry.is_dir():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)

    def remove_job(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def free_bytes(self) -> int:
        self.root.mkdir(parents=True, exist_ok=True)
        return shutil.disk_usage(self.root).free


def _atomic_write(path: Path, data: dict[str, Any], *, durable: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, ensure_ascii=False, indent=1)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
