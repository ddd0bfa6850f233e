"""Prometheus metrics through ``ray.util.metrics`` (exported as ``ray_cutfarm_*`` by each
node's metrics agent). Tags are low-cardinality on purpose: states, never job ids."""

from __future__ import annotations

from collections.abc import Mapping

from ray.util import metrics

from .jobs import JobState

DURATION_BUCKETS = [10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0]


class Metrics:
    def __init__(self) -> None:
        self.jobs = metrics.Gauge("cutfarm_jobs", description="Export jobs by state.",
                                  tag_keys=("state",))
        self.bytes_copied = metrics.Counter(
            "cutfarm_bytes_copied", description="Video bytes stream-copied into outputs.")
        self.frames_reencoded = metrics.Counter(
            "cutfarm_frames_reencoded", description="Video frames re-encoded.")
        self.duration = metrics.Histogram(
            "cutfarm_job_duration_seconds", description="Wall time from start to end of a job.",
            boundaries=DURATION_BUCKETS, tag_keys=("state",))
        self.queue = metrics.Gauge("cutfarm_queue_length",
                                   description="Jobs waiting for a processing slot.")

    def job_states(self, counts: Mapping[JobState, int]) -> None:
        for state, n in counts.items():
            self.jobs.set(n, tags={"state": state.value})

    def work(self, bytes_: int, frames: int) -> None:
        if bytes_:
            self.bytes_copied.inc(bytes_)
        if frames:
            self.frames_reencoded.inc(frames)

    def job_finished(self, state: JobState, seconds: float) -> None:
        self.duration.observe(seconds, tags={"state": state.value})

    def queue_length(self, n: int) -> None:
        self.queue.set(n)
