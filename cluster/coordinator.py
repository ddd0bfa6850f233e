"""The coordinator: one named, detached actor that queues, admits, runs and cancels jobs.

It owns every job's Ray work (never an HTTP replica, whose tasks die with it). A job runs as
an asyncio task inside this async actor: plan (a task), fan out the pieces (tasks Ray places
on any node by resources: every media root is shared or a bucket), start a concat actor
that consumes the pieces in order, await it. The coordinator keeps only references in
memory; the status actor and the job files are the truth, so a restarted coordinator
re-queues every job that was pending or processing.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError, RayTaskError

from render.engine import Prepared
from render.errors import RenderError
from render.plan import EncodePiece, Plan

from .concat import ConcatActor
from .errors import AdmissionError
from .jobs import JobState, JobStatus
from .metrics import Metrics
from .planning import plan_job
from .preflight import estimate_encoded_bytes, estimate_output_bytes
from .priority import WORKER_ENV
from .scheduling import AUDIO_MEMORY, CONCAT_MEMORY, piece_tasks
from .settings import Settings
from .store import open_store
from .tasks import audio_task, encode_task
from .webhooks import RESUME_WINDOW_SECONDS, notify_finished

log = logging.getLogger("cutfarm.coordinator")

COORDINATOR_NAME = "cutfarm-coordinator"
STATUS_NAME = "cutfarm-status"
#: A concat actor that dies (its node, its worker) is replaced this many times.
CONCAT_ATTEMPTS = 3
MESSAGE_INTERVAL = 0.5
RETENTION_CHECK_SECONDS = 600.0
#: Gauges are set again this often: a value set before the node's metrics agent took the
#: metric was seen lost under load, and a gauge that never changes was then never exported.
GAUGE_REFRESH_SECONDS = 5.0
#: A job interrupted by this many coordinator restarts fails instead of running again.
MAX_RESTARTS = 3
#: The stage of a job put back in the queue because the server was stopped while it ran.
INTERRUPTED_STAGE = "interrupted"
INTERRUPTED_MESSAGE = ("Interrupted: the server was stopped while this export ran; it "
                       "starts again when the server is back")
#: A job that runs again from the start: progress, totals and placements from zero.
_RESET: dict[str, Any] = {"reset_work": True}


@dataclass
class _Run:
    job_id: str
    refs: list[Any] = field(default_factory=list)
    concat: Any = None
    task: asyncio.Task[None] | None = None
    reserved_bytes: int = 0
    cancelled: bool = False


def failure_message(exc: BaseException) -> str:
    """The sentence a user sees for a failed job."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, RenderError):
        return str(cause)
    if isinstance(exc, RenderError | AdmissionError):
        return str(exc)
    if isinstance(exc, RayActorError):
        return "the export failed because a worker stopped unexpectedly; please try again"
    if isinstance(exc, RayError):
        return "the export failed because of a cluster error; please try again"
    return f"the export failed unexpectedly ({type(exc).__name__}); please try again"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class Coordinator:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = open_store(settings.export_root)
        self.status: Any = ray.get_actor(STATUS_NAME, namespace=settings.namespace)
        self.queue: list[tuple[int, int, str]] = []
        self.running: dict[str, _Run] = {}
        self.metrics = Metrics()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._gauges: asyncio.Task[None] | None = None
        self._ready: asyncio.Event | None = None
        self._starting: asyncio.Lock | None = None
        #: Set by ``suspend``: the cluster is going away, start nothing new.
        self.suspended = False
        #: Jobs this coordinator found interrupted on start, for the ``serve`` banner.
        self.resumed: list[dict[str, str]] = []
        # A restarted coordinator must pick its jobs up without waiting for a caller: poke
        # ourselves once the actor is ready to take calls.
        me = ray.get_runtime_context().current_actor
        threading.Timer(0.2, lambda: me.start.remote()).start()

    # ------------------------------------------------------------------ public

    async def start(self) -> int:
        """Idempotent: reload queued/running jobs and start the scheduler loop.

        Every other method waits for this to finish, so nothing (a cancel, a submit) can
        interleave with the reload. A reload that fails is retried by the next call.
        """
        if self._ready is not None and self._ready.is_set():
            return len(self.queue) + len(self.running)
        if self._starting is None:
            self._starting = asyncio.Lock()
            self._ready = asyncio.Event()
        async with self._starting:
            assert self._ready is not None
            if self._ready.is_set():
                return len(self.queue)
            await self._reload()
            await self._resume_webhooks()
            self._wake = asyncio.Event()
            self._loop = asyncio.create_task(self._schedule())
            self._sweeper = asyncio.create_task(self._retention())
            self._gauges = asyncio.create_task(self._refresh_gauges())
            self._ready.set()
        self._kick()
        return len(self.queue)

    async def _reload(self) -> None:
        queue: list[tuple[int, int, str]] = []
        for s in await self.status.list.remote([JobState.PENDING, JobState.PROCESSING]):
            if s.status == JobState.PROCESSING and not await self._resume_crashed(s):
                continue
            if s.status == JobState.PENDING and s.stage == INTERRUPTED_STAGE:
                log.warning("resuming export %s: the server was stopped while it ran",
                            s.job_id)
                self.resumed.append({"jobId": s.job_id,
                                     "why": "the server was stopped while it ran"})
                await self.status.update.remote(s.job_id, {
                    "stage": "queued",
                    "message": "Resumed: the server was stopped while this export ran; it "
                               "runs again from the start"})
            heapq.heappush(queue, (-s.priority, s.seq, s.job_id))
        self.queue = queue

    async def _resume_crashed(self, s: JobStatus) -> bool:
        """A job whose coordinator died under it: queue it again, a bounded number of
        times (a job that keeps killing us must not loop). False when it fails instead."""
        await asyncio.to_thread(self.store.remove_outputs, s.job_id)
        if s.attempts + 1 > MAX_RESTARTS:
            log.error("export %s failed: interrupted %d times", s.job_id, MAX_RESTARTS)
            await self.status.update.remote(s.job_id, {
                "status": JobState.FAILED, "stage": "failed", "message": "Export failed",
                "error": f"the export was interrupted {MAX_RESTARTS} times and was "
                         "stopped; please try again"})
            return False
        log.warning("resuming export %s: the service stopped unexpectedly while it ran "
                    "(restart %d of %d)", s.job_id, s.attempts + 1, MAX_RESTARTS)
        self.resumed.append({"jobId": s.job_id,
                             "why": "the service stopped unexpectedly while it ran"})
        await self.status.update.remote(s.job_id, {
            **_RESET, "status": JobState.PENDING, "stage": "queued",
            "message": f"Resumed: the service stopped unexpectedly while this export ran "
                       f"(restart {s.attempts + 1} of {MAX_RESTARTS}); it runs again from "
                       "the start",
            "attempts": s.attempts + 1, "interrupted_at": time.time()})
        return True

    async def _notify(self, job_id: str) -> None:
        await notify_finished(job_id, self.status, self.store, self.settings.webhook_key,
                              allow_private=self.settings.webhook_allow_private)

    async def _resume_webhooks(self) -> None:
        """The outbox: deliveries a previous coordinator left unfinished go on."""
        since = time.time() - RESUME_WINDOW_SECONDS
        for s in await self.status.list.remote([JobState.COMPLETED, JobState.FAILED,
                                                JobState.CANCELLED]):
            if s.finished_at is not None and s.finished_at >= since:
                await self._notify(s.job_id)

    async def resumed_jobs(self) -> list[dict[str, str]]:
        """The jobs found interrupted when this coordinator started, and why."""
        await self.start()
        return list(self.resumed)

    async def suspend(self) -> list[str]:
        """The cluster is about to stop: put every running job back in the queue.

        Their work is stopped and removed, their status says they were interrupted, and
        the next start resumes them. A clean stop is not the job's fault, so it does not
        count against ``MAX_RESTARTS``. Returns the ids of the interrupted jobs.
        """
        await self.start()
        self.suspended = True
        interrupted = []
        for run in list(self.running.values()):
            await self._stop(run)
            status: JobStatus = await self.status.update.remote(run.job_id, {
                **_RESET, "status": JobState.PENDING, "stage": INTERRUPTED_STAGE,
                "message": INTERRUPTED_MESSAGE, "interrupted_at": time.time()})
            if status.status.terminal:
                continue  # it finished just before we stopped it: keep its output
            await asyncio.to_thread(self.store.remove_outputs, run.job_id)
            interrupted.append(run.job_id)
        await self.status.flush.remote()
        return interrupted

    async def configure(self, settings: Settings) -> None:
        """Take new settings (limits, retention, secrets) without a restart."""
        self.settings = settings
        self.store = open_store(settings.export_root)
        self._kick()

    async def submit(self, job_id: str, config: dict[str, Any], priority: int,
                     warnings: list[str] | None = None) -> JobStatus:
        await self.start()
        status: JobStatus
        status, _ = await self.status.create.remote(job_id, config, priority, warnings)
        # Queue by state, not by "created": a retried create (status actor restarted after
        # writing the job) answers created=False for a job nobody has queued yet.
        queued = any(q[2] == job_id for q in self.queue) or job_id in self.running
        if status.status == JobState.PENDING and not queued:
            heapq.heappush(self.queue, (-priority, status.seq, job_id))
            self._kick()
        return status

    async def delete(self, job_id: str) -> tuple[JobStatus, bool]:
        """The editor's DELETE: cancel a pending or running job (its record stays, so
        its status reads "cancelled"); remove a finished job, output and folder. Returns
        the job's status and whether it was removed."""
        await self.start()
        status: JobStatus = await self.status.get.remote(job_id)
        if not status.status.terminal:
            status = await self.cancel(job_id)
            return status, False
        await self._remove(job_id)
        return status, True

    async def _remove(self, job_id: str) -> None:
        # Forget first: the status actor then writes nothing more that could recreate
        # the folder we are about to remove.
        await self.status.forget.remote(job_id)
        await asyncio.to_thread(self.store.remove_job, job_id)

    async def cancel(self, job_id: str) -> JobStatus:
        """Cancel a pending or running job; a finished job is left as it is."""
        await self.start()
        status: JobStatus = await self.status.get.remote(job_id)
        if status.status.terminal:
            return status
        self.queue = [q for q in self.queue if q[2] != job_id]
        heapq.heapify(self.queue)
        run = self.running.get(job_id)
        if run is not None:
            await self._stop(run)
        status = await self.status.update.remote(job_id, {
            "status": JobState.CANCELLED, "stage": "cancelled",
            "message": "Export cancelled"})
        if status.status != JobState.CANCELLED:
            # It finished while we were stopping it: its output stays, and its run (which
            # we stopped) will not send the webhook, so we do.
            await self._notify(job_id)
            return status
        await asyncio.to_thread(self.store.remove_outputs, job_id)
        await self._notify(job_id)
        self._kick()
        return status

    async def queue_state(self) -> dict[str, list[str]]:
        await self.start()
        return {"queued": [q[2] for q in sorted(self.queue)], "running": list(self.running)}

    async def ping(self) -> str:
        return "ok"

    async def sweep(self, now: float | None = None) -> list[str]:
        """Remove finished exports older than the retention age; returns their ids."""
        cutoff = (now or time.time()) - self.settings.retention_hours * 3600
        removed = []
        for s in await self.status.list.remote([JobState.COMPLETED, JobState.FAILED,
                                                JobState.CANCELLED]):
            if s.finished_at is not None and s.finished_at < cutoff:
                await self._remove(s.job_id)
                removed.append(s.job_id)
        if removed:
            log.info("retention removed %d finished exports", len(removed))
        return removed

    async def _retention(self) -> None:
        while True:
            await asyncio.sleep(RETENTION_CHECK_SECONDS)
            try:
                await self.sweep()
            except Exception:  # a failed sweep must not end the loop; the next one retries
                log.exception("retention sweep failed")

    async def _refresh_gauges(self) -> None:
        while True:
            await asyncio.sleep(GAUGE_REFRESH_SECONDS)
            self.metrics.queue_length(len(self.queue))
            with contextlib.suppress(Exception):  # the status actor may be restarting
                await self.status.report_states.remote()

    # ------------------------------------------------------------------ scheduling

    def _kick(self) -> None:
        self.metrics.queue_length(len(self.queue))
        if self._wake is not None:
            self._wake.set()

    async def _schedule(self) -> None:
        assert self._wake is not None
        while True:
            while (self.queue and not self.suspended
                   and len(self.running) < self.settings.max_concurrent_jobs):
                _, _, job_id = heapq.heappop(self.queue)
                run = _Run(job_id)
                self.running[job_id] = run
                run.task = asyncio.create_task(self._run(run))
            self.metrics.queue_length(len(self.queue))
            self._wake.clear()
            await self._wake.wait()

    # ------------------------------------------------------------------ one job

    async def _run(self, run: _Run) -> None:
        job_id = run.job_id
        try:
            await self._execute(run)
        except asyncio.CancelledError:
            if run.cancelled:
                return
            raise
        except BaseException as exc:
            if run.cancelled:
                return
            log.warning("job %s failed: %s", job_id, failure_message(exc), exc_info=exc)
            self._cancel_refs(run)  # no piece of a failed job keeps a CPU busy
            await asyncio.to_thread(self.store.remove_outputs, job_id)
            await self.status.update.remote(job_id, {
                "status": JobState.FAILED, "stage": "failed", "error": failure_message(exc),
                "message": "Export failed"})
        finally:
            await asyncio.to_thread(self.store.remove_work, job_id)
            if run.concat is not None:
                with contextlib.suppress(Exception):
                    ray.kill(run.concat)
            self.running.pop(job_id, None)
            self._kick()
        # Reached only when this coroutine ended the job; cancel() notifies for its own.
        await self._notify(job_id)

    async def _execute(self, run: _Run) -> None:
        job_id = run.job_id
        s = self.settings
        started: JobStatus = await self.status.update.remote(job_id, {
            "status": JobState.PROCESSING, "stage": "planning",
            "message": "Planning the export"})
        if started.status != JobState.PROCESSING:
            return  # cancelled (or otherwise ended) while it waited in the queue
        config = await asyncio.to_thread(self.store.read_config, job_id)
        prep = await plan_job(config, s, job_id)
        if prep.warnings and not set(prep.warnings) <= set(started.warnings):
            await self.status.update.remote(job_id, {
                "warnings": list(dict.fromkeys([*started.warnings, *prep.warnings]))})
        free = await asyncio.to_thread(self.store.free_bytes)
        self._admit(run, prep, free)
        work: str | None = None
        work_path = self.store.work_dir(job_id)
        if work_path is not None:
            # Exports are on a shared folder: pieces go there as files.
            await asyncio.to_thread(work_path.mkdir, parents=True, exist_ok=True)
            work = str(work_path)
        prep_ref = ray.put(prep)
        plan = prep.plan
        fmt = plan.out_format
        await self.status.update.remote(job_id, {
            "stage": "rendering", "bytes_total": plan.copy_bytes,
            "frames_total": plan.encode_frames,
            "samples_total": int(plan.duration * prep.audio.sample_rate) if prep.audio else 0,
            "pixels_per_frame": fmt.width * fmt.height,
            "message": progress_message(plan, set())})
        refs: list[Any] = [None] * len(plan.pieces)  # None: a copy piece the concat reads
        encode_refs: dict[int, Any] = {}
        # Each task gets its own piece cut out of the plan, never the whole plan: the
        # job's dispatch cost grows with its segments, not with segments x pieces.
        for t in piece_tasks(prep, job_id):
            ref = encode_task.options(name=t.name, num_cpus=t.num_cpus, memory=t.memory,
                                      runtime_env=WORKER_ENV).remote(
                prep.encode_job(t.index), job_id, self.status, work)
            refs[t.index] = encode_refs[t.index] = ref
            run.refs.append(ref)
        audio_ref = None
        audio = prep.audio_job()
        if audio is not None:
            audio_ref = audio_task.options(name=f"{job_id}:audio", memory=AUDIO_MEMORY,
                                           runtime_env=WORKER_ENV).remote(
                audio, job_id, self.status)
            run.refs.append(audio_ref)
        messages = asyncio.create_task(self._report_pieces(job_id, plan, encode_refs))
        try:
            size = await self._assemble(run, prep, prep_ref, refs, audio_ref)
        finally:
            messages.cancel()
        await self.status.update.remote(job_id, {
            "status": JobState.COMPLETED, "stage": "done", "message": "Export complete",
            "download_url": f"/api/export/{job_id}/download", "output_bytes": size})

    def _admit(self, run: _Run, prep: Prepared, free_on_disk: int) -> None:
        """Fail early when the output cannot fit beside the other running jobs' outputs.

        Runs on the event loop, which owns ``running``: check and reservation happen with
        no await between them, so two jobs cannot both pass on the same free space.
        Re-encoded pieces wait in the export root until the concat actor consumes them,
        which in the worst case (every piece done first) doubles their share.
        """
        need = estimate_output_bytes(prep) + estimate_encoded_bytes(prep)
        others = sum(r.reserved_bytes for r in self.running.values() if r is not run)
        free = free_on_disk - others - self.settings.disk_headroom_bytes
        if need > free:
            raise AdmissionError(
                f"not enough disk space for this export: it needs about {need / 1e9:.1f} GB "
                f"and {max(free, 0) / 1e9:.1f} GB are free"
            )
        run.reserved_bytes = need

    async def _assemble(self, run: _Run, prep: Prepared, prep_ref: Any, refs: list[Any],
                        audio_ref: Any) -> int:
        job_id = run.job_id
        out = self.store.output_target(job_id, prep.container_format)
        for attempt in range(1, CONCAT_ATTEMPTS + 1):
            run.concat = ConcatActor.options(  # type: ignore[attr-defined]
                name=f"cutfarm-concat-{job_id}", namespace=self.settings.namespace,
                memory=CONCAT_MEMORY, runtime_env=WORKER_ENV,
            ).remote()
            try:
                size: int = await run.concat.assemble.remote(
                    prep_ref, refs, [audio_ref] if audio_ref is not None else [], out,
                    job_id, self.status)
                return size
            except RayActorError:
                if run.cancelled or attempt == CONCAT_ATTEMPTS:
                    raise
                log.warning("concat actor of %s died; attempt %d", job_id, attempt + 1)
                with contextlib.suppress(Exception):
                    ray.kill(run.concat)
            except RayTaskError:
                raise
        raise AssertionError("unreachable")

    async def _report_pieces(self, job_id: str, plan: Plan, refs: dict[int, Any]) -> None:
        """Keep the human message current: 'Re-encoding cut 3 of 12'."""
        if not refs:
            return
        index_of = {ref: i for i, ref in refs.items()}
        last = ""
        while True:
            ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=0,
                                fetch_local=False)
            message = progress_message(plan, {index_of[r] for r in ready})
            if message != last:
                last = message
                fields: dict[str, Any] = {"message": message}
                if len(ready) == len(refs):
                    fields["stage"] = "assembling"
                await self.status.update.remote(job_id, fields)
            if len(ready) == len(refs):
                return
            await asyncio.sleep(MESSAGE_INTERVAL)

    def _cancel_refs(self, run: _Run) -> None:
        for ref in run.refs:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)

    async def _stop(self, run: _Run) -> None:
        """Stop a running job's work: tasks killed, concat actor killed, coroutine ended."""
        run.cancelled = True
        self._cancel_refs(run)
        if run.concat is not None:
            with contextlib.suppress(Exception):
                ray.kill(run.concat)
        if run.task is not None:
            run.task.cancel()
            with contextlib.suppress(BaseException):
                await run.task


def cut_groups(plan: Plan) -> list[list[int]]:
    """Encode piece indices grouped by the cut they serve, in output order.

    A segment's head re-encode belongs to the cut where it starts, its tail to the cut
    where it ends; a whole-segment re-encode to where it starts. In transcode mode every
    chunk is its own group.
    """
    position = {cut.segment: k for k, cut in enumerate(plan.cuts)}
    groups: dict[int, list[int]] = {}
    for i, piece in enumerate(plan.pieces):
        if not isinstance(piece, EncodePiece):
            continue
        key = i if plan.transcode else position[piece.segment] + (piece.reason == "tail")
        groups.setdefault(key, []).append(i)
    return [groups[k] for k in sorted(groups)]


def progress_message(plan: Plan, done: set[int]) -> str:
    """'Re-encoding cut 3 of 12' (the first cut not finished yet), or what else runs."""
    groups = cut_groups(plan)
    if not groups:
        return "Copying video"
    finished = sum(1 for g in groups if all(i in done for i in g))
    if finished == len(groups):
        return "Assembling the output"
    what = "chunk" if plan.transcode else "cut"
    return f"Re-encoding {what} {finished + 1} of {len(groups)}"
