"""The concat actor: assembles one job's output from its pieces, in order, as they arrive.

It waits for piece k only when the muxer reaches piece k, so assembly overlaps with the
re-encodes still running; copied GOPs on volumes it can read are read straight from the
source files. The output is written beside its final path and renamed into place by the
engine's muxer, so a reader never sees a half-written file.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import ray

from render.engine import Prepared
from render.mux import assemble

from .tasks import PieceResult, _placement, _Reporter


class _RefPieces:
    """PieceSource over Ray object refs; fetches each piece once, when the muxer needs it."""

    def __init__(self, refs: list[Any], work: Path) -> None:
        self.refs = refs
        self.work = work
        self.files: dict[int, Path] = {}

    def _fetch(self, index: int) -> PieceResult:
        ref = self.refs[index]
        result: PieceResult = ray.get(ref)
        self.refs[index] = None  # let the object store free it once we are done
        return result

    def encoded(self, index: int) -> Path:
        path = self.files.get(index)
        if path is None:
            path = self.work / f"piece-{index:05d}"
            self._fetch(index).data.tofile(path)
            self.files[index] = path
        return path

    def copied(self, index: int) -> bytes | None:
        if self.refs[index] is None:
            return None
        return self._fetch(index).data.tobytes()


@ray.remote(num_cpus=0, max_restarts=0, max_task_retries=0)
class ConcatActor:
    def assemble(self, prep: Prepared, refs: list[Any], audio_refs: list[Any], out_path: str,
                 job_id: str, status: Any) -> int:
        """Write the output; returns its size in bytes.

        Refs come wrapped in lists so Ray hands them over unresolved: each is fetched only
        when the muxer reaches it.
        """
        _placement(status, job_id, -2, "concat")
        report = _Reporter(status, job_id)
        out = Path(out_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".cutfarm-concat-", dir=out.parent) as tmp:
            work = Path(tmp)
            audio = None
            if audio_refs:
                assert prep.audio is not None
                apath = work / "audio"
                result: PieceResult = ray.get(audio_refs[0])
                result.data.tofile(apath)
                audio = (apath, prep.audio)
            assemble(prep.plan, prep.sources, _RefPieces(list(refs), work), audio, out,
                     container_format=prep.container_format,
                     on_bytes=lambda n: report.add(bytes_=n))
        report.flush()
        return out.stat().st_size

    def ping(self) -> str:
        return "ok"
