"""One export, in process: probe, plan, re-encode pieces, audio, assemble.

This is the engine's whole pipeline on one machine. The cluster runs the same steps
(``prepare``, ``encode_piece``, ``render_audio``, ``assemble``) as separate tasks, each
given only its own part of the plan (``Prepared.encode_job``, ``Prepared.audio_job``); this
module strings them together with a small thread pool, honest progress and cancellation.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property
from pathlib import Path

from . import timecode
from .audio import AudioTarget, choose_target, layout_warnings, render_audio
from .bitstream import TrackParams, fallback_warning, prepare_track
from .config import ExportConfig
from .encode import (
    EncoderSettings,
    encode_piece,
    header_record,
    matched_settings,
    transcode_settings,
)
from .errors import CancelledError, ConfigError, RenderError
from .handoff import handoff_path, handoffs
from .media import SourceInfo, VideoFormat
from .mux import LocalPieces, StoredOutput, assemble
from .paths import MediaLocation, locate_source
from .piecefile import ChannelClosed, PacketChannel, PieceHeader
from .piecejob import AudioJob, EncodeJob, audio_job, encode_job
from .plan import (
    DEFAULT_MAX_PIECE_FRAMES,
    EncodePiece,
    Plan,
    PlannedSource,
    build_plan,
    output_rate,
)
from .probe import probe
from .probecache import ProbeCache

#: Rough costs that turn bytes and frames into one progress scale (seconds of work):
#: copying runs near disk speed; encoding costs per pixel. Only the ratio matters.
COPY_BYTES_PER_SECOND = 200e6
ENCODE_PIXELS_PER_SECOND = 40e6
AUDIO_SAMPLES_PER_SECOND = 5e6


@dataclass(frozen=True)
class Prepared:
    """A planned export: what every worker needs, all plain data."""

    config: ExportConfig
    sources: dict[int, SourceInfo]
    plan: Plan
    settings: dict[int, EncoderSettings]  # per piece index (encode pieces only)
    audio: AudioTarget | None
    container_format: str
    #: What the export changes that the user did not ask for (downmixed audio, turned
    #: pictures), one sentence each; shown with the job, never silently applied.
    warnings: tuple[str, ...] = ()
    #: SMPTE timecode of the export's first frame, when its source has one.
    timecode: str | None = None
    #: How the video track carries its parameter sets (render/bitstream.py); None: VP9,
    #: or planned by the muxer from the encoded pieces.
    params: TrackParams | None = None
    #: Copy piece -> (the encode piece that hands its samples on, the first one it hands
    #: on), see render/handoff.py.
    handoffs: dict[int, tuple[int, int]] = field(default_factory=dict)

    def encode_job(self, index: int) -> EncodeJob:
        """Encode piece ``index``, cut out of the plan for one worker (render/piecejob.py)."""
        return encode_job(self.plan, self.sources, self.settings[index],
                          self._handed_on.get(index, {}), index)

    @cached_property
    def _handed_on(self) -> dict[int, dict[int, int]]:
        """Encode piece -> {copy piece: first sample handed on}: ``handoffs`` inverted, so
        cutting out every piece's job costs the job's size once, not once per piece."""
        out: dict[int, dict[int, int]] = {}
        for i, (j, first) in self.handoffs.items():
            out.setdefault(j, {})[i] = first
        return out

    def audio_job(self) -> AudioJob | None:
        if self.audio is None:
            return None
        return audio_job(self.plan.audio, self.sources, self.audio)


@dataclass
class Progress:
    """Work done against the planned totals; ``fraction`` weighs them by expected cost."""

    bytes_total: int
    frames_total: int
    samples_total: int
    pixels_per_frame: int
    bytes_done: int = 0
    frames_done: int = 0
    samples_done: int = 0
    stage: str = "planning"
    message: str = ""
    started: float = field(default_factory=time.monotonic)

    def _cost(self, b: int, f: int, s: int) -> float:
        return (b / COPY_BYTES_PER_SECOND + f * self.pixels_per_frame / ENCODE_PIXELS_PER_SECOND
                + s / AUDIO_SAMPLES_PER_SECOND)

    @property
    def fraction(self) -> float:
        total = self._cost(self.bytes_total, self.frames_total, self.samples_total)
        if total <= 0:
            return 0.0
        done = self._cost(self.bytes_done, self.frames_done, self.samples_done)
        return max(0.0, min(1.0, done / total))

    @property
    def eta_seconds(self) -> float | None:
        f = self.fraction
        elapsed = time.monotonic() - self.started
        if f <= 0.02 or elapsed < 0.5:
            return None
        return elapsed * (1 - f) / f


ProgressCallback = Callable[[Progress], None]


class _Tracker:
    """Thread-safe counters; calls back at most every ``interval`` seconds."""

    def __init__(self, progress: Progress, callback: ProgressCallback | None,
                 interval: float = 0.25) -> None:
        self.p = progress
        self.cb = callback
        self.lock = threading.Lock()
        self.emit_lock = threading.Lock()
        self.interval = interval
        self.last = 0.0

    def add(self, *, bytes_: int = 0, frames: int = 0, samples: int = 0) -> None:
        with self.lock:
            self.p.bytes_done += bytes_
            self.p.frames_done += frames
            self.p.samples_done += samples
        self._maybe_emit()

    def stage(self, stage: str, message: str) -> None:
        with self.lock:
            self.p.stage, self.p.message = stage, message
        self._maybe_emit(force=True)

    def _maybe_emit(self, force: bool = False) -> None:
        if self.cb is None:
            return
        # One callback at a time: encoder threads report concurrently, and a caller must
        # never see progress go backwards because two reports crossed.
        with self.emit_lock:
            now = time.monotonic()
            if force or now - self.last >= self.interval:
                self.last = now
                self.cb(self.p)


def probe_sources(config: ExportConfig, media_roots: Sequence[MediaLocation]
                  ) -> dict[int, SourceInfo]:
    """Probe every source a segment uses (others are never opened)."""
    used = sorted({s.source_index for s in config.segments})
    return {i: probe_source(config, i, media_roots) for i in used}


def probe_source(config: ExportConfig, i: int, media_roots: Sequence[MediaLocation], *,
                 cache: ProbeCache | None = None) -> SourceInfo:
    """Source ``i`` resolved in the roots and probed (through ``cache``, if given)."""
    fld = f"sources[{i}].filePath"
    try:
        file = locate_source(config.sources[i].file_path, media_roots, field=fld)
        return cache.probe(file) if cache is not None else probe(file)
    except RenderError as exc:
        exc.field = exc.field or fld
        raise


def prepare(config: ExportConfig, media_roots: Sequence[MediaLocation], *,
            max_piece_frames: int | None = None, max_piece_bytes: int | None = None,
            preset: str | None = None) -> Prepared:
    sources = probe_sources(config, media_roots)
    return prepare_with(config, sources, max_piece_frames=max_piece_frames,
                        max_piece_bytes=max_piece_bytes, preset=preset)


def prepare_with(config: ExportConfig, sources: dict[int, SourceInfo], *,
                 max_piece_frames: int | None = None, max_piece_bytes: int | None = None,
                 preset: str | None = None) -> Prepared:
    planned = [
        PlannedSource(s.video.index, s.video.format, s.audio is not None) if s is not None
        else None
        for s in (sources.get(i) for i in range(len(config.sources)))
    ]
    out = config.output
    container_format = "webm" if out.format == "webm" else "mp4"
    transcode_fmt: VideoFormat | None = None
    codec = "vp9" if out.format == "webm" else {"h264": "h264", "h265": "hevc"}.get(
        out.codec, "copy")
    first = sources[config.segments[0].source_index]
    if out.reencodes:
        # Re-encoded outputs are upright: every source is turned by its display matrix.
        shown_w, shown_h = first.video.format.display_size
        width = out.width or shown_w
        height = out.height or shown_h
        width, height = width - width % 2, height - height % 2
        if width < 16 or height < 16:
            raise ConfigError("output.width and output.height must be at least 16",
                              field="output.width")
        transcode_fmt = VideoFormat(codec, width, height, _out_pix_fmt(codec, first))
    plan = build_plan(config, planned, transcode_format=transcode_fmt,  # type: ignore[arg-type]
                      max_piece_frames=max_piece_frames or DEFAULT_MAX_PIECE_FRAMES,
                      max_piece_bytes=max_piece_bytes)
    settings: dict[int, EncoderSettings] = {}
    if plan.transcode:
        assert transcode_fmt is not None
        ts = transcode_settings(codec, transcode_fmt, output_rate(config, planned),  # type: ignore[arg-type]
                                preset=preset)
        settings = {i: ts for i, p in enumerate(plan.pieces) if isinstance(p, EncodePiece)}
    else:
        # The first cut whose source's format the export keeps (plan.choose_out_format).
        matched = matched_settings(next(sources[c.source] for c in plan.cuts
                                        if sources[c.source].video.format == plan.out_format),
                                   preset=preset)
        for i, p in enumerate(plan.pieces):
            if isinstance(p, EncodePiece):
                src = sources[p.runs[0].source]
                settings[i] = (matched_settings(src, preset=preset)
                               if src.video.format == plan.out_format else matched)
    # In the order the export plays them: the first one heard sets the audio format.
    used = list(dict.fromkeys(a.source for a in plan.audio if a.source is not None))
    audio = (choose_target(container_format, [sources[i] for i in used] or
                           list(sources.values())) if plan.audio else None)
    params, settings = _parameter_sets(plan, sources, settings, container_format)
    warnings = _turn_warnings(plan, sources) + fallback_warning(params)
    if audio is not None:
        warnings += layout_warnings(audio, sources, used)
    return Prepared(config, sources, plan, settings, audio, container_format, tuple(warnings),
                    _start_timecode(plan, sources), params, handoffs(plan, sources))


def _parameter_sets(plan: Plan, sources: Mapping[int, SourceInfo],
                    settings: dict[int, EncoderSettings], container_format: str,
                    ) -> tuple[TrackParams | None, dict[int, EncoderSettings]]:
    """Number every parameter set of the export for the one sample description; x264
    pieces are told which ids to use."""
    if container_format != "mp4":
        return None, settings
    tb = plan.out_time_base
    return prepare_track(plan, sources, settings,
                         lambda s, frames: header_record(s, tb, frames))


def _start_timecode(plan: Plan, sources: Mapping[int, SourceInfo]) -> str | None:
    """The first source's start timecode, advanced to the export's first frame."""
    cut = plan.cuts[0]
    src = sources[cut.source]
    if src.timecode is None:
        return None
    index = src.video.index
    since = index.seconds(int(index.disp_pts[cut.first] - index.disp_pts[index.first_shown]))
    return timecode.advance(src.timecode, since, index.frame_rate)


def _turn_warnings(plan: Plan, sources: Mapping[int, SourceInfo]) -> list[str]:
    if plan.transcode:  # every frame is re-encoded upright anyway
        return []
    out_rotation = plan.out_format.rotation
    turned = sorted({c.source for c in plan.cuts
                     if sources[c.source].video.format.rotation != out_rotation})
    return [f"sources[{i}] ({sources[i].name}) is shown rotated "
            f"{sources[i].video.format.rotation}° and the export {out_rotation}°: its frames "
            "are re-encoded upright" for i in turned]


def _out_pix_fmt(codec: str, first: SourceInfo) -> str:
    if codec == "vp9":
        return "yuv420p"
    return "yuv420p10le" if "10" in first.video.format.pix_fmt else "yuv420p"


@dataclass(frozen=True)
class RenderResult:
    path: Path
    plan: Plan
    seconds: float
    bytes: int


def render(
    config: ExportConfig,
    media_roots: Sequence[MediaLocation],
    out_path: Path,
    *,
    on_progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    work_dir: Path | None = None,
    workers: int = 2,
    preset: str | None = None,
) -> RenderResult:
    """Run one export to ``out_path``. Nothing is left at ``out_path`` unless it succeeded."""
    t0 = time.monotonic()
    prep = prepare(config, media_roots, preset=preset)
    execute(prep, out_path, on_progress=on_progress, cancel=cancel, work_dir=work_dir,
            workers=workers)
    return RenderResult(out_path, prep.plan, time.monotonic() - t0, out_path.stat().st_size)


def new_progress(prep: Prepared) -> Progress:
    plan = prep.plan
    fmt = plan.out_format
    samples = 0
    if prep.audio is not None:
        samples = int(plan.duration * prep.audio.sample_rate)
    return Progress(plan.copy_bytes, plan.encode_frames, samples, fmt.width * fmt.height)


def execute(
    prep: Prepared,
    out_path: Path | StoredOutput,
    *,
    on_progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    work_dir: Path | None = None,
    workers: int = 2,
) -> None:
    plan = prep.plan
    tracker = _Tracker(new_progress(prep), on_progress)

    def check_cancel() -> None:
        if cancel is not None and cancel.is_set():
            raise CancelledError("the export was cancelled")

    if isinstance(out_path, Path):
        out_path.parent.mkdir(parents=True, exist_ok=True)
        work_dir = work_dir or out_path.parent
    tmp = Path(tempfile.mkdtemp(prefix=".cutfarm-", dir=work_dir))
    audio_part = prep.audio_job()
    sound = None if audio_part is None else _AudioThread(
        audio_part, tmp / "audio.piece", tracker, check_cancel)
    try:
        encoded = _encode_all(prep, tmp, tracker, check_cancel, workers)
        check_cancel()
        tracker.stage("assembling", "Writing the output file")
        copies = {i: (handoff_path(encoded[j], i), first)
                  for i, (j, first) in prep.handoffs.items()}
        audio = None if sound is None else (sound.channel, sound.job.target)
        assemble(plan, prep.sources, LocalPieces(encoded, copies), audio, out_path,
                 container_format=prep.container_format, timecode=prep.timecode,
                 params=prep.params, on_bytes=lambda n: tracker.add(bytes_=n),
                 check_cancel=check_cancel)
        if sound is not None:
            sound.finish()
        tracker.stage("done", "Export complete")
    except ChannelClosed:
        # The audio stopped the muxer: its own error is the one to report.
        failed = sound.stop() if sound is not None else None
        if failed is not None and not isinstance(failed, ChannelClosed):
            raise failed from None
        raise
    except BaseException:
        if sound is not None:
            sound.stop()
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _AudioThread:
    """The audio track, encoded in a thread of its own from the start: alongside the
    re-encodes, and on into the assembly, which reads its packets as they come
    (PacketChannel). Run after the video instead, it added its whole time to every
    export's (5-13 s of a 4K keyframe export's 14-26 s)."""

    def __init__(self, job: AudioJob, spill: Path, tracker: _Tracker,
                 check_cancel: Callable[[], None]) -> None:
        self.job = job
        target = job.target
        self.channel = PacketChannel(spill, PieceHeader(target.codec, b"",
                                                        Fraction(1, target.sample_rate), 0, 0))
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(tracker, check_cancel), name="cutfarm-audio", daemon=True)
        self._thread.start()

    def _run(self, tracker: _Tracker, check_cancel: Callable[[], None]) -> None:
        try:
            render_audio(self.job, self.channel, on_samples=lambda n: tracker.add(samples=n),
                         check_cancel=check_cancel)
        except BaseException as exc:
            self.error = exc

    def finish(self) -> None:
        self._thread.join()
        if self.error is not None:
            raise self.error

    def stop(self) -> BaseException | None:
        """Stop it (if still running); the error it stopped with, if any."""
        self.channel.cancel()
        self._thread.join()
        return self.error


def _encode_all(prep: Prepared, tmp: Path, tracker: _Tracker, check_cancel: Callable[[], None],
                workers: int) -> dict[int, Path]:
    plan = prep.plan
    jobs = [(i, p) for i, p in enumerate(plan.pieces) if isinstance(p, EncodePiece)]
    if not jobs:
        return {}
    workers = max(1, min(workers, len(jobs)))
    threads = max(1, (os.cpu_count() or 2) // workers)
    done: dict[int, Path] = {}
    total = len(jobs)
    stop = threading.Event()

    def check() -> None:
        if stop.is_set():
            raise CancelledError("the export was cancelled")
        check_cancel()

    def one(i: int, piece: EncodePiece) -> Path:
        return encode_piece(prep.encode_job(i), tmp / f"piece-{i:05d}.piece", threads=threads,
                            on_frame=lambda: tracker.add(frames=1), check_cancel=check)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cutfarm-encode") as pool:
        futures: list[tuple[int, Future[Path]]] = [(i, pool.submit(one, i, p)) for i, p in jobs]
        try:
            for n, (i, fut) in enumerate(futures, 1):
                done[i] = fut.result()
                what = "cut" if not plan.transcode else "chunk"
                tracker.stage("encoding", f"Re-encoding {what} {n} of {total}")
        except BaseException:
            stop.set()
            raise
    return done


def describe_plan(prep: Prepared) -> list[str]:
    """Human-readable lines: per segment the exact frames, what is copied, what re-encoded."""
    plan = prep.plan
    lines: list[str] = []
    by_seg: dict[int, list[str]] = {}
    for piece in plan.pieces:
        if isinstance(piece, EncodePiece):
            text = (f"re-encode {piece.frames} frames ({piece.reason}) -> output frames "
                    f"{piece.out_first}..{piece.out_stop - 1}")
        else:
            n = len(piece.samples(prep.sources[piece.source].video.index))
            text = f"copy {n} frames ({piece.bytes / 1e6:.1f} MB) from sample {piece.dec_start}"
        by_seg.setdefault(piece.segment, []).append(text)
    for cut in plan.cuts:
        src = prep.sources[cut.source]
        tb = src.video.index.time_base
        lines.append(
            f"segment {cut.segment}: source {cut.source} ({src.name}) frames "
            f"{cut.first}..{cut.stop - 1} ({cut.frames} frames, {float(cut.src_start):.3f}s "
            f"+ {float(cut.duration):.3f}s, output at {float(cut.out_start):.3f}s; "
            f"time base {tb})"
        )
        if not plan.transcode:
            lines.extend(f"    {t}" for t in by_seg.get(cut.segment, []))
    if plan.transcode:  # chunks span segments: list them once, after the segments
        lines.append("chunks (every frame re-encoded on the output grid):")
        lines.extend(f"    {t}" for texts in by_seg.values() for t in texts)
    for seg in plan.dropped_segments:
        lines.append(f"segment {seg}: dropped (shorter than the keyframe spacing)")
    lines.append(
        f"total: {plan.frame_count} frames, {float(plan.duration):.3f}s; copy "
        f"{plan.copy_bytes / 1e6:.1f} MB, re-encode {plan.encode_frames} frames; reorder "
        f"delay {plan.reorder_delay}; timescale {plan.out_time_base.denominator}"
    )
    return lines


def frame_seconds(plan: Plan, out_disp: int) -> Fraction:
    return int(plan.out_pts[out_disp]) * plan.out_time_base
