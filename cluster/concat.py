"""The concat actor: assembles one job's output from its pieces, in order, as they arrive.

It waits for piece k only when the muxer reaches piece k, so assembly overlaps with the
re-encodes still running; copied GOPs are read straight from the source files (every media
root is a folder every node sees, or a bucket). The output is written beside its final path
and renamed into place by the engine's muxer, so a reader never sees a half-written file.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import ray

from render.engine import Prepared
from render.errors import OutputError
from render.handoff import handoff_path
from render.mux import StoredOutput, assemble
from render.objectstore import ObjectRef, S3Location, is_s3_url

from .priority import at_batch_priority
from .tasks import PieceResult, _placement, _Reporter


class _RefPieces:
    """PieceSource over the encode tasks' object refs; waits for each re-encoded piece when
    the muxer reaches it. Copy pieces have no ref: the muxer reads them from the source,
    or from the file the encode piece that read them anyway handed on (``copied``).

    Encoded pieces arrive as files on the shared work dir, or as bytes that this actor
    writes to its own scratch folder. Its own copies are deleted as soon as the muxer has
    consumed them; the work dir's files stay until the job ends (the coordinator removes
    work/), because a concat actor that dies is replaced and the new one needs every piece
    again (the soak run found jobs failing exactly there). The disk check at admission
    reserves room for them.
    """

    def __init__(self, refs: list[Any], work: Path, handoffs: dict[int, tuple[int, int]]
                 ) -> None:
        self.refs = refs
        self.work = work
        self.handoffs = handoffs
        self.files: dict[int, Path] = {}
        self.scratch: set[int] = set()

    def _fetch(self, index: int) -> PieceResult:
        result: PieceResult = ray.get(self.refs[index])
        return result

    def encoded(self, index: int) -> Path:
        path = self.files.get(index)
        if path is None:
            result = self._fetch(index)
            if result.path is not None:
                path = Path(result.path)
                if not path.exists():
                    # Work files live until the job ends: this means someone removed them.
                    raise OutputError(f"re-encoded piece {index} is missing from the job's "
                                      "work folder; please retry")
            else:
                assert result.data is not None
                path = self.work / f"piece-{index:05d}"
                result.data.tofile(path)
                self.scratch.add(index)
            self.files[index] = path
        return path

    def copied(self, index: int) -> tuple[Path, int] | None:
        """Copy piece ``index`` as its encode piece handed it on (render/handoff.py); the
        muxer checks the file is whole, and reads the source when it is not."""
        if index not in self.handoffs:
            return None
        j, first = self.handoffs[index]
        path = self.files.get(index)
        if path is None:
            result = self._fetch(j)
            if result.path is not None:
                path = handoff_path(Path(result.path), index)
            elif index in result.copies:
                path = self.work / f"copy-{index:05d}"
                result.copies[index].tofile(path)
                self.scratch.add(index)
            if path is None:
                return None
            self.files[index] = path
        return path, first

    def release(self, index: int) -> None:
        path = self.files.pop(index, None)
        if path is not None and index in self.scratch:
            self.scratch.discard(index)
            path.unlink(missing_ok=True)


#: Scratch of concat actors writing to a bucket, in this node's temp folder.
NODE_SCRATCH = "cutfarm-concat"
#: A scratch folder this old belongs to an actor that was killed: nobody else removes it.
STALE_SCRATCH_SECONDS = 24 * 3600


def _node_scratch(job_id: str) -> Path:
    """This job's scratch on this node, emptied of what an earlier (killed) actor left."""
    root = Path(tempfile.gettempdir()) / NODE_SCRATCH
    now = time.time()
    with contextlib.suppress(OSError):
        for entry in root.iterdir():
            with contextlib.suppress(OSError):
                if entry.name == job_id or now - entry.stat().st_mtime > STALE_SCRATCH_SECONDS:
                    shutil.rmtree(entry, ignore_errors=True)
    return root / job_id


@ray.remote(num_cpus=0, max_restarts=0, max_task_retries=0)
class ConcatActor:
    def assemble(self, prep: Prepared, refs: list[Any], audio_refs: list[Any], out_path: str,
                 job_id: str, status: Any) -> int:
        """Write the output; returns its size in bytes.

        Refs come wrapped in lists so Ray hands them over unresolved: each is fetched only
        when the muxer reaches it.
        """
        _placement(status, job_id, -2, "concat")
        report = _Reporter(status, job_id, "concat")
        out: Path | StoredOutput
        if is_s3_url(out_path):
            loc = S3Location.parse(out_path)
            kind = "webm" if loc.prefix.endswith(".webm") else "mp4"
            out = StoredOutput(ObjectRef(loc.bucket, loc.prefix), content_type=f"video/{kind}")
            work_root = _node_scratch(job_id)
        else:
            out = Path(out_path)
            out.parent.mkdir(parents=True, exist_ok=True)
            # Inside the job's work/ folder, which the coordinator removes whatever happens
            # (a killed actor never runs this block's cleanup).
            work_root = out.parent / "work"
        work_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="concat-", dir=work_root) as tmp:
            work = Path(tmp)
            audio = None
            if audio_refs:
                assert prep.audio is not None
                apath = work / "audio"
                result: PieceResult = ray.get(audio_refs[0])
                assert result.data is not None
                result.data.tofile(apath)
                audio = (apath, prep.audio)
            pieces = _RefPieces(list(refs), work, prep.handoffs)
            size = at_batch_priority(lambda: assemble(
                prep.plan, prep.sources, pieces, audio, out,
                container_format=prep.container_format, timecode=prep.timecode,
                params=prep.params, on_bytes=lambda n: report.add(bytes_=n)))
        if isinstance(out, StoredOutput):
            shutil.rmtree(work_root, ignore_errors=True)
        report.finish()
        return size

    def ping(self) -> str:
        return "ok"
