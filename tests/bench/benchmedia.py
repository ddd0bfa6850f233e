"""Media, edit configs and reporting shared by the benchmark modules.

The ``bench_media`` fixture itself lives in ``conftest.py`` (one session fixture, so the
engine and cluster benchmarks share one set of generated cameras); it calls
:func:`ensure_bench_media`.

Media: three stamped 1280x720 30 fps H.264 High/CABAC cameras (60 s, 2 s closed GOPs,
2 B-frames, AAC, about 55-65 MB each), generated in parallel processes (about 75-100 s on
2 cores), outside every timed region. Set ``CUTFARM_BENCH_MEDIA=/some/dir`` to keep (and
reuse) them between runs.
"""

from __future__ import annotations

import multiprocessing
import random
import statistics
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from tests import mediagen as mg

FPS = 30
SECONDS = 60.0
GOP = 60  # 2 s
BFRAMES = 2
CAMERAS: dict[str, mg.CameraSpec] = {
    f"cam{c}.mp4": mg.CameraSpec(
        camera=c,
        codec="h264",
        width=1280,
        height=720,
        fps=Fraction(FPS),
        seconds=SECONDS,
        gop=GOP,
        bframes=BFRAMES,
        crf=28,
        preset="superfast",
    )
    for c in (1, 2, 3)
}
FILES = tuple(CAMERAS)
#: Per-camera sync offsets (seconds): a segment at program time t reads source time t + off.
SYNC_OFFSETS = (0.0, 0.3137, 0.6071)
PROGRAM_SECONDS = 59.0
SEGMENTS = 20


@dataclass(frozen=True)
class BenchMedia:
    root: Path  # media root: holds sources/

    @property
    def sources(self) -> Path:
        return self.root / "sources"

    def path(self, name: str) -> Path:
        return self.sources / name

    @property
    def total_bytes(self) -> int:
        return sum(self.path(n).stat().st_size for n in FILES)


def _spec_stamp(spec: mg.CameraSpec) -> str:
    return repr(spec) + f" mediagen={Path(mg.__file__).stat().st_size}"


def ensure_bench_media(root: Path) -> BenchMedia:
    """Generate the cameras under ``root/sources`` unless a matching copy is there already."""
    sources = root / "sources"
    sources.mkdir(parents=True, exist_ok=True)
    missing = []
    for name, spec in CAMERAS.items():
        stamp = sources / f"{name}.spec"
        ok = (sources / name).exists() and stamp.exists() and stamp.read_text() == _spec_stamp(spec)
        if not ok:
            stamp.unlink(missing_ok=True)
            missing.append(name)
    if missing:
        t0 = time.perf_counter()
        # spawn: never fork a process that may already run FFmpeg threads.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=len(missing), mp_context=ctx) as pool:
            futures = {n: pool.submit(mg.make_camera, sources / n, CAMERAS[n]) for n in missing}
            for name, fut in futures.items():
                fut.result()
                (sources / f"{name}.spec").write_text(_spec_stamp(CAMERAS[name]))
        print(
            f"\n[bench] generated {len(missing)} cameras in {time.perf_counter() - t0:.1f}s "
            f"under {sources}"
        )
    media = BenchMedia(root)
    warm_page_cache(media.path(n) for n in FILES)
    return media


def warm_page_cache(paths: Iterable[Path]) -> None:
    for p in paths:
        with Path(p).open("rb") as fh:
            while fh.read(8 << 20):
                pass


# --------------------------------------------------------------------------- configs


def make_config(
    segments: Sequence[tuple[int, float, float]],
    *,
    accuracy: str = "frame",
    include_audio: bool = True,
    job: str = "bench",
) -> dict[str, Any]:
    return {
        "version": 1,
        "id": job,
        "projectName": "cutfarm bench",
        "sources": [{"id": f"m{i}", "name": n, "filePath": n} for i, n in enumerate(FILES)],
        "segments": [{"sourceIndex": s, "startTime": a, "endTime": b} for s, a, b in segments],
        "output": {"format": "mp4", "codec": "copy", "includeAudio": include_audio},
        "accuracy": accuracy,
    }


def multicam_segments(
    count: int = SEGMENTS,
    program_seconds: float = PROGRAM_SECONDS,
    *,
    seed: int = 20,
    start: float = 0.0,
) -> list[tuple[int, float, float]]:
    """``count`` contiguous segments over ``program_seconds`` of program from ``start``,
    switching camera at every cut.

    Cut times are arbitrary playhead floats (not frame-aligned); with the defaults each
    segment is 2.1..3.8 s, so every segment holds at least one whole GOP and every switch is
    a real cut.
    """
    rng = random.Random(seed)
    lengths = [rng.uniform(2.2, 3.6) for _ in range(count)]
    scale = program_seconds / sum(lengths)
    lengths = [x * scale for x in lengths]
    out: list[tuple[int, float, float]] = []
    t, cam = start, 0
    for i, length in enumerate(lengths):
        if i:
            cam = rng.choice([c for c in range(len(FILES)) if c != cam])
        off = SYNC_OFFSETS[cam]
        out.append((cam, round(t + off, 6), round(t + length + off, 6)))
        t += length
    return out


# --------------------------------------------------------------------------- reporting


def report(benchmark: Any, title: str, info: dict[str, Any]) -> None:
    benchmark.extra_info.update(info)
    width = max(len(k) for k in info)
    lines = [f"\n=== {title}"]
    for k, v in info.items():
        text = f"{v:.4g}" if isinstance(v, float) else str(v)
        lines.append(f"  {k.ljust(width)}  {text}")
    print("\n".join(lines))


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))
