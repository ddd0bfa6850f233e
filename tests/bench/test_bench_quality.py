"""Quality of the re-encoded frames of realistic frame-accurate jobs: PSNR, not time.

Skipped in the default run like every benchmark; run with::

    .venv/bin/python -m pytest tests/bench/test_bench_quality.py --benchmark-only -s

Each benchmark times one export (probe, plan, re-encode, assemble; 2 workers), then decodes
the export and compares every frame with the decoded source frame it shows
(tests/verify.py: ``output_psnr``, untimed), and prints and stores in ``extra_info``: the
re-encoded frames' PSNR (all planes, and luma) min / 5th percentile / median / mean, per
kind of piece, the worst frame, how many fall below the floor, and the encoder settings
the engine chose. Copied frames must decode to the source's very pixels, and re-encoded
ones must keep ``PSNR_FLOOR_DB`` (45 dB, 8-bit): a quality floor, asserted after the
report; nothing here asserts on time.

1. ``test_bench_media_quality``: benchmark 2's 20-segment multicam edit of the three 720p
   bench cameras (tests/bench/benchmedia.py; mediagen's picture, CRF 28).
2. ``test_detail_quality``: one 1280x720 camera-like source (tests/test_quality.py's
   textured, panning, noisy picture at 0.8 bits per pixel, about 22 Mbit/s; 12 s, 2 s
   closed GOPs, 2 B-frames), cut at five mid-GOP points. Made once, next to the bench
   cameras, so ``CUTFARM_BENCH_MEDIA`` keeps it too.

Measured on 2 shared cores: a first run (generating all media) took about 7 minutes; with
the media kept, about 2 minutes per benchmark (export 30-70 s, PSNR pass 20-60 s).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from render.config import parse_config
from render.engine import Prepared, execute, prepare
from tests.bench.benchmedia import (
    CAMERAS,
    FILES,
    BenchMedia,
    make_config,
    multicam_segments,
    report,
)
from tests.test_quality import DetailSpec, make_detail_camera
from tests.verify import PSNR_FLOOR_DB, FramePsnr, output_psnr, psnr_summary

DETAIL = DetailSpec(camera=5, codec="h264", width=1280, height=720, seconds=12,
                    bits_per_pixel=0.8, preset="veryfast")
DETAIL_NAME = "detail720.mp4"
#: Mid-GOP cuts (GOPs start at 0, 2, 4, ... s): heads, tails and copied GOPs in each.
DETAIL_SEGMENTS = ((0.45, 3.1), (3.3, 5.7), (1.2, 4.4), (6.1, 9.35), (9.6, 11.9))


def export_once(benchmark: Any, config: dict[str, Any], root: Path, out: Path) -> Prepared:
    def run() -> Prepared:
        prep = prepare(parse_config(config), [root])
        execute(prep, out, workers=2)
        return prep

    prep: Prepared = benchmark.pedantic(run, setup=lambda: out.unlink(missing_ok=True),
                                        rounds=1, iterations=1)
    return prep


def encoder_settings(prep: Prepared) -> list[str]:
    fields = ("encoder", "crf", "preset", "bframes", "pix_fmt")
    seen = {tuple(getattr(s, f, "?") for f in fields) for s in prep.settings.values()}
    return [", ".join(f"{k}={v}" for k, v in zip(fields, s, strict=True))
            for s in sorted(seen, key=str)]


def measure_and_report(benchmark: Any, title: str, prep: Prepared, out: Path,
                       sources: Mapping[int, Path], cameras: Mapping[int, int]) -> None:
    t0 = time.perf_counter()
    rows = output_psnr(out, prep, sources, cameras)
    measure_s = time.perf_counter() - t0
    out.unlink()
    summary = psnr_summary(rows)
    encoded = np.array([r.psnr for r in rows if r.kind != "copy"])
    info: dict[str, Any] = {
        "output_frames": len(rows),
        **summary,
        "psnr_p5_db": float(np.percentile(encoded, 5)),
        "psnr_median_db": float(np.median(encoded)),
        "floor_db": PSNR_FLOOR_DB,
        "encoder": encoder_settings(prep),
        "measure_s": measure_s,
    }
    report(benchmark, title, info)
    worst = sorted((r for r in rows if r.kind != "copy"), key=lambda r: r.psnr)[:8]
    print("  worst frames: " + ", ".join(_row(r) for r in worst))
    assert summary["copied_identical"] == summary["copied_frames"], "a copied frame changed"
    assert summary["reencoded_frames"] > 0
    assert summary["below_floor"] == 0, (
        f"{summary['below_floor']} of {summary['reencoded_frames']} re-encoded frames below "
        f"{PSNR_FLOOR_DB} dB (min {summary['psnr_min_db']:.2f}, mean "
        f"{summary['psnr_mean_db']:.2f}) with {encoder_settings(prep)}")


def _row(r: FramePsnr) -> str:
    return f"out {r.out_frame} ({r.kind}, src {r.source} frame {r.frame}) {r.psnr:.2f}"


def test_bench_media_quality(benchmark: Any, bench_media: BenchMedia, tmp_path: Path) -> None:
    benchmark.group = "5-reencode-quality"
    out = tmp_path / "quality.mp4"
    prep = export_once(benchmark, make_config(multicam_segments(), job="bench-quality"),
                       bench_media.root, out)
    measure_and_report(
        benchmark, "PSNR of re-encoded frames: 20-cut multicam edit (3 x 720p, 59 s)", prep,
        out, {i: bench_media.path(n) for i, n in enumerate(FILES)},
        {i: CAMERAS[n].camera for i, n in enumerate(FILES)})


@pytest.fixture(scope="module")
def detail_source(bench_media: BenchMedia) -> Path:
    path = bench_media.path(DETAIL_NAME)
    stamp = path.with_name(f"{DETAIL_NAME}.spec")
    made_by = Path(__file__).parents[1] / "test_quality.py"
    want = f"{DETAIL!r} quality={made_by.stat().st_size}"
    if not (path.exists() and stamp.exists() and stamp.read_text() == want):
        stamp.unlink(missing_ok=True)
        t0 = time.perf_counter()
        make_detail_camera(path, DETAIL)
        stamp.write_text(want)
        print(f"\n[bench] made {DETAIL_NAME} in {time.perf_counter() - t0:.1f}s")
    return path


def _detail_config(segments: Sequence[tuple[float, float]]) -> dict[str, Any]:
    return {
        "version": 1,
        "id": "bench-quality-detail",
        "projectName": "cutfarm bench",
        "sources": [{"id": "m0", "name": DETAIL_NAME, "filePath": DETAIL_NAME}],
        "segments": [{"sourceIndex": 0, "startTime": a, "endTime": b} for a, b in segments],
        "output": {"format": "mp4", "codec": "copy", "includeAudio": False},
        "accuracy": "frame",
    }


def test_detail_quality(benchmark: Any, bench_media: BenchMedia, detail_source: Path,
                        tmp_path: Path) -> None:
    benchmark.group = "5-reencode-quality"
    out = tmp_path / "detail.mp4"
    prep = export_once(benchmark, _detail_config(DETAIL_SEGMENTS), bench_media.root, out)
    measure_and_report(
        benchmark, "PSNR of re-encoded frames: camera-like 720p source, 5 mid-GOP cuts", prep,
        out, {0: detail_source}, {0: DETAIL.camera})
