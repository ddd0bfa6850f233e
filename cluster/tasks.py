"""Ray tasks: thin wrappers that run engine steps where the scheduler puts them.

Each task does one engine step and returns plain data. Encoded pieces travel back through
the object store as numpy byte arrays (read zero-copy by the concat actor), never as
``bytes``, which Ray copies per reader. Progress goes to the status actor in batches, fire
and forget, so a slow status actor never slows the encoders.

Retries: worker or node death is retried by Ray (``max_retries``); the engine's own errors
(bad media) are not (``retry_exceptions=False``): they fail the job once, with their message.

Priority (cluster/priority.py): encoding and audio run in a thread at nice 19
(``at_batch_priority``), so the API and the actors that answer it are served first. Load
benchmark, 10 jobs running, 50 status/s and 20 event streams on 2 cores: status p50 87-220
ms before, 35-39 ms after (two runs each).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import ray

from render.audio import render_audio
from render.config import parse_config
from render.encode import encode_piece
from render.engine import prepare_with, probe_source
from render.errors import RenderError
from render.handoff import handoff_path
from render.media import SourceInfo
from render.paths import media_location
from render.piecejob import AudioJob, EncodeJob
from render.probecache import ProbeCache

from .jobs import PiecePlacement
from .preflight import Preflight, summarize
from .priority import at_batch_priority

Bytes = npt.NDArray[np.uint8]
#: How often a task reports progress to the status actor (it answers every poll too).
REPORT_INTERVAL = 1.0
#: How long a finishing task waits for its last totals to reach the status actor.
FINAL_REPORT_SECONDS = 10.0
TASK_RETRIES = 3
PROBE_MEMORY = 256 << 20


@dataclass(frozen=True)
class PieceResult:
    """A finished piece: its bytes in the object store, or a file on the shared work dir."""

    index: int
    data: Bytes | None
    node_id: str
    path: str | None = None
    #: Copy pieces this piece hands on (render/handoff.py): files beside ``path`` on the
    #: work dir, or their bytes here.
    copies: dict[int, Bytes] = field(default_factory=dict)


class _Reporter:
    """Sends this piece's running totals to the status actor every REPORT_INTERVAL.

    Totals, not increments, under a name of its own: the status actor keeps the largest
    total per name, so a retried call or a retried task never counts work twice.
    """

    def __init__(self, status: Any, job_id: str, name: str) -> None:
        self.status = status
        self.job_id = job_id
        self.name = name
        self.frames = 0
        self.samples = 0
        self.bytes = 0
        self.sent = (0, 0, 0)
        self.last = time.monotonic()

    def add(self, *, frames: int = 0, samples: int = 0, bytes_: int = 0) -> None:
        self.frames += frames
        self.samples += samples
        self.bytes += bytes_
        if time.monotonic() - self.last >= REPORT_INTERVAL:
            self.flush()

    def flush(self) -> Any:
        """Send the totals if they changed; the call's ref, or None."""
        totals = (self.bytes, self.frames, self.samples)
        ref = None
        if self.status is not None and totals != self.sent:
            ref = self.status.report_work.remote(self.job_id, self.name, *totals)
            self.sent = totals
        self.last = time.monotonic()
        return ref

    def finish(self) -> None:
        """Send the last totals and wait for them to land.

        Calls from different processes reach the status actor in no set order: without the
        wait, the coordinator's "completed" (sent once this task returns) can overtake them,
        and a terminal job takes no more work, so the job would end short of its totals.
        A status actor that is down costs the wait, never the piece.
        """
        ref = self.flush()
        if ref is not None:
            with contextlib.suppress(ray.exceptions.RayError):
                ray.get(ref, timeout=FINAL_REPORT_SECONDS)


def _node() -> str:
    return str(ray.get_runtime_context().get_node_id())


def _placement(status: Any, job_id: str, index: int, kind: str) -> None:
    if status is not None:
        status.add_placement.remote(job_id, PiecePlacement(index=index, kind=kind,
                                                           node_id=_node()))


# Zero CPUs: probing reads only the sources' indexes, and a preflight (an HTTP request
# waiting on it) must not queue behind a busy cluster's re-encodes. The memory bound keeps
# a flood of preflights from starting unbounded workers; OOM kills are retried once only.
@ray.remote(num_cpus=0, memory=PROBE_MEMORY, max_retries=1, retry_exceptions=False)
def probe_task(config: dict[str, Any], roots: list[str]) -> dict[int, SourceInfo | RenderError]:
    """Resolve and probe every used source (when the prober actor is gone, see planning.py).

    Returns per source its info or the engine's error.
    """
    return probe_here(config, roots)


#: The name of the probe actor (every root is a folder every node sees, or a bucket).
PROBER_NAME = "cutfarm-prober"


#: Probes one prober runs at a time (they wait on disk and network more than on the CPU).
PROBER_CONCURRENCY = 4


@ray.remote(num_cpus=0, memory=PROBE_MEMORY, max_restarts=-1, max_task_retries=0)
class Prober:
    """Probes the sources of preflights and jobs, in a process that is already up: a task
    needs an idle worker, and while exports run there often is none, so a submit waited
    ~1-2 s for a worker to start (the load benchmark's submit p99). Started with
    ``max_concurrency=PROBER_CONCURRENCY`` (planning.prober).

    It keeps its probes for the next preflight or job on the same file versions
    (render/probecache.py): a job's start reuses its preflight's.
    """

    def __init__(self) -> None:
        self.cache = ProbeCache()

    def probe(self, config: dict[str, Any], roots: list[str]
              ) -> dict[int, SourceInfo | RenderError]:
        return probe_here(config, roots, self.cache)

    def preflight(self, config: dict[str, Any], roots: list[str],
                  options: dict[str, Any]) -> Preflight | RenderError:
        """Probe and plan here and answer with the summary alone (cluster/preflight.py),
        or the engine's error (as a value, like ``probe``'s). ``options``: prepare_with's
        keyword arguments."""
        try:
            found = found_sources(self.probe(config, roots))
            return summarize(prepare_with(parse_config(config), found, **options))
        except RenderError as exc:
            return exc

    def cache_stats(self) -> tuple[int, int]:
        """(hits, misses) of its probe cache."""
        return self.cache.hits, self.cache.misses


def probe_here(config: dict[str, Any], roots: list[str], cache: ProbeCache | None = None
               ) -> dict[int, SourceInfo | RenderError]:
    """Each used source's info, or the engine's error for it (``found_sources`` turns it
    into the infos or raises)."""
    cfg = parse_config(config)
    out: dict[int, SourceInfo | RenderError] = {}
    for i in sorted({s.source_index for s in cfg.segments}):
        try:
            out[i] = probe_source(cfg, i, [media_location(r) for r in roots], cache=cache)
        except RenderError as exc:
            out[i] = exc
    return out


def found_sources(result: dict[int, SourceInfo | RenderError]) -> dict[int, SourceInfo]:
    """Every source's info; raises the engine's error for the first one that failed."""
    out: dict[int, SourceInfo] = {}
    for i in sorted(result):
        answer = result[i]
        if isinstance(answer, RenderError):
            raise answer
        out[i] = answer
    return out


@ray.remote(max_retries=TASK_RETRIES, retry_exceptions=False)
def encode_task(job: EncodeJob, job_id: str, status: Any,
                work_dir: str | None = None) -> PieceResult:
    """Re-encode one piece. ``job`` is that piece alone (``Prepared.encode_job``), never
    the whole plan. With a shared ``work_dir`` the piece is written there (no object-store
    copy); otherwise its bytes travel back through the object store."""
    index = job.index
    _placement(status, job_id, index, "encode")
    report = _Reporter(status, job_id, f"piece-{index}")
    # x264/x265 default to every core of the node; hold them to the CPUs Ray gave us, or a
    # node's scheduled load would bear no relation to its real load.
    cpus = ray.get_runtime_context().get_assigned_resources().get(  # type: ignore[no-untyped-call]
        "CPU", 1.0)
    threads = max(1, round(cpus))
    if work_dir is not None:
        target = Path(work_dir) / f"piece-{index:05d}"
        at_batch_priority(lambda: encode_piece(job, target, threads=threads,
                                               on_frame=lambda: report.add(frames=1)))
        report.finish()
        return PieceResult(index, None, _node(), str(target))
    with tempfile.TemporaryDirectory(prefix="cutfarm-piece-") as tmp:
        out = Path(tmp) / "piece"
        path = at_batch_priority(lambda: encode_piece(
            job, out, threads=threads, on_frame=lambda: report.add(frames=1)))
        data = np.fromfile(path, dtype=np.uint8)
        copies = {i: np.fromfile(handoff_path(out, i), dtype=np.uint8) for i in job.hand_on}
    report.finish()
    return PieceResult(index, data, _node(), copies=copies)


@ray.remote(num_cpus=1, max_retries=TASK_RETRIES, retry_exceptions=False)
def audio_task(job: AudioJob, job_id: str, status: Any) -> PieceResult:
    _placement(status, job_id, -1, "audio")
    report = _Reporter(status, job_id, "audio")
    with tempfile.TemporaryDirectory(prefix="cutfarm-audio-") as tmp:
        out = Path(tmp) / "audio"
        at_batch_priority(lambda: render_audio(
            job, out, on_samples=lambda n: report.add(samples=n)))
        data = np.fromfile(out, dtype=np.uint8)
    report.finish()
    return PieceResult(-1, data, _node())
