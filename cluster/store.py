"""The job directory layout ops know from the old backend, written atomically.

    <export root>/<jobId>/      (default export root: <first folder media root>/exports)
        config.json     the validated config
        status.json     the editor's status shape plus our fields
        output.<ext>    the result (appears only when complete: written elsewhere, renamed)
        work/           pieces while the job runs; removed when it ends

The files are the truth; actors are caches that reload them on start. Every write goes to a
temporary file in the same directory and is renamed over the old one, so a crash leaves
either the old or the new content, never half of one.

The export root may be a bucket (``CUTFARM_EXPORT_ROOT=s3://bucket/prefix``,
:class:`BucketStore`): the same names as keys under ``prefix/<jobId>/``. A PUT is atomic
(S3 never shows half an object), the output is a multipart upload that appears only when
complete, and there is no ``work/``: pieces travel through Ray's object store and the
concat actor's scratch is local to its node. Progress-only status writes are kept to one
every few seconds per job (each is a request, and a billed one); state changes are
written at once.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from render.config import is_valid_job_id
from render.objectstore import ObjectInfo, ObjectNotFoundError, ObjectRef, S3Location, stat
from render.objectstore.objects import (
    abort_uploads,
    delete_prefix,
    exists,
    get_bytes,
    list_children,
    list_objects,
    put_bytes,
)

from .errors import JobNotFoundError
from .jobs import JobState, JobStatus

CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
WORK_DIR = "work"
OUTPUT_FORMATS = ("mp4", "webm")
#: Seconds between two progress-only status writes of one job to a bucket.
BUCKET_PROGRESS_INTERVAL = 5.0


class JobStore:
    """Jobs in a folder (local or shared by every node)."""

    def __init__(self, export_root: Path) -> None:
        self.root = export_root

    def output_target(self, job_id: str, fmt: str) -> str:
        """Where the concat actor writes the output: a path, or an s3:// URL."""
        return str(self.output_path(job_id, fmt))

    def finished_output(self, job_id: str) -> Path | ObjectInfo | None:
        for ext in OUTPUT_FORMATS:
            path = self.job_dir(job_id) / f"output.{ext}"
            if path.is_file():
                return path
        return None

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
        return _damaged_status(folder.name, what, changed)

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


class BucketStore:
    """Jobs under a prefix of a bucket (see the module docstring)."""

    def __init__(self, root: S3Location) -> None:
        self.root = root
        self._written: dict[str, float] = {}
        self._lock = threading.Lock()

    def _ref(self, job_id: str, name: str) -> ObjectRef:
        if not is_valid_job_id(job_id):
            raise JobNotFoundError(f"export {job_id!r} not found")
        return self.root.object(f"{job_id}/{name}")

    def _prefix(self, job_id: str) -> str:
        return self._ref(job_id, "x").key[:-1]

    def work_dir(self, job_id: str) -> None:
        return None

    def output_target(self, job_id: str, fmt: str) -> str:
        return self._ref(job_id, f"output.{fmt}").url

    def finished_output(self, job_id: str) -> Path | ObjectInfo | None:
        for ext in OUTPUT_FORMATS:
            try:
                return stat(self._ref(job_id, f"output.{ext}"))
            except ObjectNotFoundError:
                continue
        return None

    def write_config(self, job_id: str, config: dict[str, Any]) -> None:
        put_bytes(self._ref(job_id, CONFIG_FILE), _dumps(config))

    def read_config(self, job_id: str) -> dict[str, Any]:
        raw = get_bytes(self._ref(job_id, CONFIG_FILE))
        if raw is None:
            raise JobNotFoundError(f"export {job_id!r} not found")
        data: dict[str, Any] = json.loads(raw)
        return data

    def write_status_data(self, job_id: str, data: dict[str, Any], durable: bool) -> None:
        now = time.monotonic()
        with self._lock:
            if not durable and now - self._written.get(job_id, -1e9) < BUCKET_PROGRESS_INTERVAL:
                return
            self._written[job_id] = now
        if not exists(self._ref(job_id, CONFIG_FILE)):
            return  # removed: a late write must not bring the job back
        put_bytes(self._ref(job_id, STATUS_FILE), _dumps(data))

    def read_status(self, job_id: str) -> JobStatus | None:
        raw = get_bytes(self._ref(job_id, STATUS_FILE))
        try:
            return JobStatus.model_validate(json.loads(raw)) if raw is not None else None
        except ValueError:
            return None

    def iter_statuses(self) -> Iterator[tuple[JobStatus, bool]]:
        prefix = self.root.object("x").key[:-1]
        for job_id in sorted(list_children(self.root.bucket, prefix)):
            if not is_valid_job_id(job_id):
                continue
            status = self.read_status(job_id)
            if status is not None:
                yield status, False
                continue
            objects = list_objects(self.root.bucket, self._prefix(job_id))
            what = "is damaged" if any(k.endswith("/" + STATUS_FILE) for k, _, _ in objects) \
                else "is missing"
            changed = max((m.timestamp() for _, _, m in objects), default=time.time())
            yield _damaged_status(job_id, what, changed), True

    def remove_work(self, job_id: str) -> None:
        abort_uploads(self.root.bucket, self._prefix(job_id))

    def remove_outputs(self, job_id: str) -> None:
        prefix = self._prefix(job_id)
        abort_uploads(self.root.bucket, prefix)
        for key, _, _ in list_objects(self.root.bucket, prefix):
            if key.rsplit("/", 1)[-1] not in (CONFIG_FILE, STATUS_FILE):
                delete_prefix(self.root.bucket, key)

    def remove_job(self, job_id: str) -> None:
        delete_prefix(self.root.bucket, self._prefix(job_id))
        with self._lock:
            self._written.pop(job_id, None)

    def free_bytes(self) -> int:
        return 1 << 62  # a bucket has no free space to run out of


Store = JobStore | BucketStore


def open_store(export_root: Path | S3Location) -> Store:
    return BucketStore(export_root) if isinstance(export_root, S3Location) \
        else JobStore(export_root)


def _dumps(data: dict[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False, indent=1).encode("utf-8")


def _damaged_status(job_id: str, what: str, changed: float) -> JobStatus:
    return JobStatus(
        job_id=job_id, status=JobState.FAILED, stage="failed",
        message="Export failed",
        error=f"this export's status file {what}, so its state is unknown; submit it "
              "again (its files are removed with the other old exports)",
        created_at=changed, finished_at=changed, updated_at=changed)


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
