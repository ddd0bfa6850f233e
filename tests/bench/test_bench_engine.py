"""Benchmarks of the render engine against baselines measured in the same run.

Skipped in the default test run (``pyproject.toml`` adds ``--benchmark-skip``; the skip is
applied at collection, so the media fixtures below never run then). Run them with::

    .venv/bin/python -m pytest tests/bench --benchmark-only -s

(``--benchmark-enable`` does *not* override ``--benchmark-skip``; use ``--benchmark-only``.)
``-s`` shows the printed summaries; the same numbers are stored in each benchmark's
``extra_info`` (``--benchmark-json=FILE`` to keep them). Nothing here asserts on time.

Media: three stamped 1280x720 30 fps H.264 High/CABAC cameras (60 s, 2 s closed GOPs,
2 B-frames, AAC, about 65 MB each), generated once per session in parallel processes
(about 75 s on 2 idle cores), outside every timed region. Set
``CUTFARM_BENCH_MEDIA=/some/dir`` to keep (and reuse) them between runs.

1. ``test_copy_throughput``: a pure-copy export (GOP-aligned cuts, no audio) vs
   ``shutil.copyfile`` of the source files, in MB/s (rounds interleaved).
2. ``test_twenty_cut_export``: a frame-accurate 20-segment multicam edit (59 s); frames
   re-encoded per cut from the plan vs the minimum the source GOP structure allows.
3. ``test_old_recipe``: the old backend's ffmpeg recipe (``-ss/-to -c copy`` per segment,
   concat demuxer) on the same edit: wall time vs the engine, and its wrong output length.
   Skipped without an ``ffmpeg`` binary on PATH.
4. ``test_peak_memory``: peak RSS of one 20-cut export in a fresh subprocess, vs the same
   process's RSS after imports, alongside the bytes processed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from render.config import ExportConfig, parse_config
from render.engine import Prepared, execute, prepare
from render.plan import CopyPiece, EncodePiece
from tests import mediagen as mg
from tests.bench.benchmedia import (
    BFRAMES,
    FILES,
    FPS,
    SECONDS,
    BenchMedia,
    make_config,
    multicam_segments,
    report,
)
from tests.bench.benchmedia import median as _median

REPO = Path(__file__).resolve().parents[2]
MB = 1e6

# --------------------------------------------------------------------------- media

# Cameras, configs and reporting: tests/bench/benchmedia.py; the session fixture
# ``bench_media``: tests/bench/conftest.py (shared with the cluster benchmarks).
ROUNDS = 3
COPY_ROUNDS = 7
#: The engine's tolerance for playhead floats (render.plan.TIME_EPSILON), restated.
TIME_EPSILON = Fraction(1, 1_000_000)


# --------------------------------------------------------------------------- configs


def copy_segments() -> list[tuple[int, float, float]]:
    """Every camera whole, end to end: all cuts on keyframes, so the plan is pure copy."""
    return [(i, 0.0, SECONDS) for i in range(len(FILES))]


def timed_export(
    config: ExportConfig,
    media: BenchMedia,
    out: Path,
    times: list[float],
    execute_times: list[float] | None = None,
) -> Prepared:
    """One whole export (probe + plan + execute) with 2 workers, like ``cutfarm render``."""
    t0 = time.perf_counter()
    prep = prepare(config, [media.root])
    t1 = time.perf_counter()
    execute(prep, out, workers=2)
    t2 = time.perf_counter()
    times.append(t2 - t0)
    if execute_times is not None:
        execute_times.append(t2 - t1)
    return prep





# --------------------------------------------------------------------------- 1. copy path


def test_copy_throughput(benchmark: Any, bench_media: BenchMedia, tmp_path: Path) -> None:
    benchmark.group = "1-copy-throughput"
    config = parse_config(make_config(copy_segments(), include_audio=False, job="bench-copy"))
    prep = prepare(config, [bench_media.root])
    plan = prep.plan
    assert all(isinstance(p, CopyPiece) for p in plan.pieces), "copy config must plan no encode"
    copy_bytes = plan.copy_bytes
    src_paths = [bench_media.path(n) for n in FILES]
    src_bytes = sum(p.stat().st_size for p in src_paths)
    out = tmp_path / "copy.mp4"
    base_dir = tmp_path / "copyfile"
    engine_times: list[float] = []
    execute_times: list[float] = []
    base_times: list[float] = []

    def baseline_then_clean() -> None:
        # Untimed by pytest-benchmark: one shutil.copyfile round, interleaved with the
        # engine rounds so both see the same page cache and write-back state.
        out.unlink(missing_ok=True)
        shutil.rmtree(base_dir, ignore_errors=True)
        base_dir.mkdir()
        t0 = time.perf_counter()
        for p in src_paths:
            shutil.copyfile(p, base_dir / p.name)
        base_times.append(time.perf_counter() - t0)
        shutil.rmtree(base_dir)

    benchmark.pedantic(
        timed_export,
        args=(config, bench_media, out, engine_times, execute_times),
        setup=baseline_then_clean,
        rounds=COPY_ROUNDS,
        iterations=1,
    )
    out_bytes = out.stat().st_size
    out.unlink()  # outputs are big; pytest keeps the last three runs' tmp dirs
    engine_mb_s = copy_bytes / _median(engine_times) / MB
    execute_mb_s = copy_bytes / _median(execute_times) / MB
    base_mb_s = src_bytes / _median(base_times) / MB
    report(
        benchmark,
        "copy-path throughput (pure copy, 3 whole cameras, no audio)",
        {
            "copy_pieces": len(plan.pieces),
            "copied_mb": copy_bytes / MB,
            "output_mb": out_bytes / MB,
            "copyfile_mb": src_bytes / MB,
            "engine_s_median": _median(engine_times),
            "execute_s_median": _median(execute_times),
            "copyfile_s_median": _median(base_times),
            "engine_mb_per_s": engine_mb_s,
            "execute_only_mb_per_s": execute_mb_s,
            "copyfile_mb_per_s": base_mb_s,
            "ratio_engine_vs_copyfile": engine_mb_s / base_mb_s,
            "ratio_execute_vs_copyfile": execute_mb_s / base_mb_s,
            "engine_times_s": [round(t, 4) for t in engine_times],
            "copyfile_times_s": [round(t, 4) for t in base_times],
        },
    )


# --------------------------------------------------------------------------- 2. 20 cuts


@dataclass(frozen=True)
class GopTruth:
    """A source's GOP structure from mediagen's packet table (independent of render/)."""

    disp_of_dec: np.ndarray  # display index per decode-order packet
    idr_disp: np.ndarray  # display indices of IDR pictures, ascending
    idr_dec: np.ndarray  # their decode indices, same order

    @classmethod
    def of(cls, path: Path) -> GopTruth:
        table = mg.packet_table(path)
        pts = [p.pts for p in table]
        assert all(t is not None for t in pts)
        disp = np.array([int(t * FPS) for t in pts], dtype=np.int64)  # CFR: pts = n / fps
        assert sorted(disp.tolist()) == list(range(len(disp)))
        idr = [i for i, p in enumerate(table) if 5 in p.nal_types]
        order = np.argsort(disp[idr])
        idr_dec = np.asarray(idr, dtype=np.int64)[order]
        return cls(disp, disp[idr_dec], idr_dec)

    def select(self, start: float, end: float) -> tuple[int, int]:
        """Display frames whose pts lies in [start, end) (with the playhead tolerance)."""
        a = math.ceil((Fraction(repr(start)) - TIME_EPSILON) * FPS)
        b = math.ceil((Fraction(repr(end)) - TIME_EPSILON) * FPS)
        n = len(self.disp_of_dec)
        return max(0, min(a, n)), max(0, min(b, n))

    def min_head(self, first: int, stop: int) -> int | None:
        """Frames from the cut-in to the next IDR; None if no IDR lies inside the segment."""
        nxt = self.idr_disp[self.idr_disp >= first]
        if nxt.size == 0 or int(nxt[0]) >= stop:
            return None
        return int(nxt[0]) - first

    def min_tail(self, first: int, stop: int) -> int | None:
        """Frames after the longest copyable decode-order prefix of the last GOP."""
        inside = np.flatnonzero((self.idr_disp >= first) & (self.idr_disp < stop))
        if inside.size == 0:
            return None
        k = int(inside[-1])
        k_disp, k_dec = int(self.idr_disp[k]), int(self.idr_dec[k])
        end_dec = int(self.idr_dec[k + 1]) if k + 1 < len(self.idr_dec) else len(self.disp_of_dec)
        best = k_disp + 1
        runmax = -1
        for count, d in enumerate(range(k_dec, end_dec), 1):
            runmax = max(runmax, int(self.disp_of_dec[d]))
            if runmax >= stop:
                break
            if runmax - k_disp + 1 == count:
                best = runmax + 1
        return stop - best


def per_cut_frames(prep: Prepared, nseg: int) -> tuple[list[int], int]:
    """Re-encoded frames per cut boundary (0 = edit-in, nseg = edit-out), short pieces."""
    per = [0] * (nseg + 1)
    short = 0
    for p in prep.plan.pieces:
        if not isinstance(p, EncodePiece):
            continue
        if p.reason == "tail":
            per[p.segment + 1] += p.frames
        elif p.reason in ("head", "short"):
            per[p.segment] += p.frames
            short += p.reason == "short"
        else:
            raise AssertionError(f"unexpected encode piece reason {p.reason!r} in copy mode")
    return per, short


def theoretical_per_cut(
    segments: Sequence[tuple[int, float, float]], truth: Sequence[GopTruth]
) -> tuple[list[int], list[tuple[int, int]]]:
    per = [0] * (len(segments) + 1)
    ranges: list[tuple[int, int]] = []
    for i, (src, a, b) in enumerate(segments):
        t = truth[src]
        first, stop = t.select(a, b)
        ranges.append((first, stop))
        head, tail = t.min_head(first, stop), t.min_tail(first, stop)
        if head is None or tail is None:
            per[i] += stop - first  # no keyframe inside: the whole segment is re-encoded
            continue
        per[i] += head
        per[i + 1] += tail
    return per, ranges


@pytest.fixture(scope="module")
def gop_truth(bench_media: BenchMedia) -> list[GopTruth]:
    return [GopTruth.of(bench_media.path(n)) for n in FILES]


@pytest.fixture(scope="module")
def twenty_cut_runs() -> dict[str, Any]:
    """Benchmark 2's engine runs, reused by benchmark 3 as its baseline when present."""
    return {}


def test_twenty_cut_export(
    benchmark: Any,
    bench_media: BenchMedia,
    gop_truth: list[GopTruth],
    twenty_cut_runs: dict[str, Any],
    tmp_path: Path,
) -> None:
    benchmark.group = "2-twenty-cut-export"
    segments = multicam_segments()
    config = parse_config(make_config(segments, job="bench-20cuts"))
    out = tmp_path / "edit.mp4"
    times: list[float] = []
    prep = benchmark.pedantic(
        timed_export,
        args=(config, bench_media, out, times),
        setup=lambda: out.unlink(missing_ok=True),
        rounds=ROUNDS,
        iterations=1,
    )
    twenty_cut_runs.update(times=times, out=out, prep=prep)
    plan = prep.plan
    actual, short = per_cut_frames(prep, len(segments))
    minimum, ranges = theoretical_per_cut(segments, gop_truth)
    engine_ranges = [(c.first, c.stop) for c in plan.cuts]
    assert engine_ranges == ranges, "engine frame selection differs from [start, end) rule"
    heads = [gop_truth[s].min_head(*r) or 0 for (s, _, _), r in zip(segments, ranges, strict=True)]
    # The brief's bound: head GOP remainder + one mini-GOP (bframes + 1) at each cut-out.
    bound = [h + (BFRAMES + 1 if i > 0 else 0) for i, h in enumerate([*heads, 0])]
    max_tail = max(
        (gop_truth[s].min_tail(*r) or 0) for (s, _, _), r in zip(segments, ranges, strict=True)
    )
    interior = slice(1, len(segments))  # the 19 camera switches
    excess = [a - m for a, m in zip(actual, minimum, strict=True)]
    med = _median(times)
    report(
        benchmark,
        "20-cut frame-accurate export (3 cameras, 1280x720, 59 s, with audio)",
        {
            "segments": len(segments),
            "output_frames": plan.frame_count,
            "output_s": float(plan.duration),
            "copied_mb": plan.copy_bytes / MB,
            "reencoded_frames": plan.encode_frames,
            "reencoded_fraction": plan.encode_frames / plan.frame_count,
            "short_pieces": short,
            "per_cut_actual": actual,
            "per_cut_minimum": minimum,
            "per_cut_excess": excess,
            "per_cut_bound_head_plus_minigop": bound,
            "switch_cuts_mean": float(np.mean(actual[interior])),
            "switch_cuts_max": max(actual[interior]),
            "switch_cuts_min_mean": float(np.mean(minimum[interior])),
            "switch_cuts_min_max": max(minimum[interior]),
            "all_cuts_mean": float(np.mean(actual)),
            "all_cuts_max": max(actual),
            "all_cuts_min_mean": float(np.mean(minimum)),
            "ratio_mean_vs_minimum": float(np.mean(actual)) / float(np.mean(minimum)),
            "ratio_mean_vs_bound": float(np.mean(actual)) / float(np.mean(bound)),
            "cuts_over_bound": sum(a > b for a, b in zip(actual, bound, strict=True)),
            "max_excess_frames": max(excess),
            "max_min_tail_frames": max_tail,
            "tail_bound_bframes_plus_1": BFRAMES + 1,
            "head_min_mean": float(np.mean(heads)),
            "export_s_median": med,
            "export_times_s": [round(t, 3) for t in times],
            "realtime_factor": float(plan.duration) / med,
            "reencoded_frames_per_s": plan.encode_frames / med,
        },
    )


# --------------------------------------------------------------------------- 3. old recipe


def old_recipe(
    ffmpeg: str,
    media: BenchMedia,
    segments: Sequence[tuple[int, float, float]],
    work: Path,
    out: Path,
    *,
    wrap: Sequence[str] = (),
) -> list[str]:
    """The old backend: per segment ``-ss S -to E -i SRC -c copy``, then concat ``-c copy``.

    Each command runs as ``[*wrap, *cmd]``; returns the commands' stdout texts.
    """
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    out.unlink(missing_ok=True)
    quiet = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y"]
    cmds: list[list[str]] = []
    parts: list[Path] = []
    for i, (src, a, b) in enumerate(segments):
        part = work / f"seg_{i}.mp4"
        cmds.append(
            [
                *quiet,
                "-ss",
                str(a),
                "-to",
                str(b),
                "-i",
                str(media.path(FILES[src])),
                "-c",
                "copy",
                "-avoid_negative_ts",
                "make_zero",
                str(part),
            ]
        )
        parts.append(part)
    listing = work / "list.txt"
    listing.write_text("".join(f"file '{p}'\n" for p in parts))
    cmds.append([*quiet, "-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy", str(out)])
    outputs: list[str] = []
    for cmd in cmds:
        res = subprocess.run([*wrap, *cmd], capture_output=True, text=True, check=False)
        assert res.returncode == 0, f"{cmd}: {res.stderr}"
        outputs.append(res.stdout)
    return outputs


def video_extent(path: Path) -> tuple[int, float, float]:
    """(video packets, video duration s, container duration s) of a file."""
    with av.open(str(path)) as c:
        st = c.streams.video[0]
        tb = st.time_base
        assert tb is not None
        lo, hi, n = None, None, 0
        for pkt in c.demux(st):
            if pkt.size == 0 or pkt.pts is None:
                continue
            n += 1
            end = pkt.pts + (pkt.duration or 0)
            lo = pkt.pts if lo is None else min(lo, pkt.pts)
            hi = end if hi is None else max(hi, end)
        vdur = float((hi - lo) * tb) if n and lo is not None and hi is not None else 0.0
        cdur = c.duration / av.time_base if c.duration is not None else float("nan")
    return n, vdur, cdur


def test_old_recipe(
    benchmark: Any, bench_media: BenchMedia, twenty_cut_runs: dict[str, Any], tmp_path: Path
) -> None:
    benchmark.group = "3-old-ffmpeg-recipe"
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        pytest.skip("no ffmpeg binary on PATH (the old recipe needs the ffmpeg CLI)")
    segments = multicam_segments()
    if twenty_cut_runs:  # benchmark 2 ran in this session: its median is the engine's time
        engine_times: list[float] = twenty_cut_runs["times"]
        engine_out: Path = twenty_cut_runs["out"]
        prep: Prepared = twenty_cut_runs["prep"]
        engine_source = f"benchmark 2 median of {len(engine_times)}"
    else:
        config = parse_config(make_config(segments, job="bench-old"))
        engine_out = tmp_path / "engine.mp4"
        engine_times = []
        prep = timed_export(config, bench_media, engine_out, engine_times)
        engine_source = "1 run"
    old_out = tmp_path / "old.mp4"
    old_times: list[float] = []

    def run_old() -> None:
        t0 = time.perf_counter()
        old_recipe(ffmpeg, bench_media, segments, tmp_path / "old-work", old_out)
        old_times.append(time.perf_counter() - t0)

    benchmark.pedantic(run_old, rounds=ROUNDS, iterations=1)
    expected_s = float(prep.plan.duration)
    expected_frames = prep.plan.frame_count
    old_frames, old_vdur, old_cdur = video_extent(old_out)
    new_frames, new_vdur, new_cdur = video_extent(engine_out)
    for big in (old_out, engine_out):
        big.unlink(missing_ok=True)
    shutil.rmtree(tmp_path / "old-work", ignore_errors=True)
    old_med = _median(old_times)
    engine_s = _median(engine_times)
    report(
        benchmark,
        "old ffmpeg recipe vs engine (same 20-cut edit)",
        {
            "ffmpeg": ffmpeg,
            "engine_s": engine_s,
            "engine_s_from": engine_source,
            "old_recipe_s_median": old_med,
            "old_recipe_times_s": [round(t, 3) for t in old_times],
            "ratio_engine_vs_old_time": engine_s / old_med,
            "expected_s": expected_s,
            "expected_frames": expected_frames,
            "engine_video_s": new_vdur,
            "engine_container_s": new_cdur,
            "engine_frames": new_frames,
            "old_video_s": old_vdur,
            "old_container_s": old_cdur,
            "old_frames": old_frames,
            "old_duration_error_s": old_vdur - expected_s,
            "old_frame_count_error": old_frames - expected_frames,
            "ratio_old_vs_expected_duration": old_vdur / expected_s,
        },
    )


# --------------------------------------------------------------------------- 4. memory

#: Runs a command and prints its peak RSS (KiB) as the last stdout line. Why a launcher:
#: ru_maxrss from wait4()/RUSAGE_CHILDREN is useless for a child spawned straight from
#: pytest, because Linux carries the parent's RSS high-water mark into the child at execve
#: (exec_mmap records the pre-exec mm, a copy of the parent), so every child of a ~450 MB
#: pytest process "peaks" at >= 450 MB. From this small launcher the floor is ~10 MB.
_RSS_LAUNCHER = """
import os, subprocess, sys
p = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(p.pid, 0)
p.returncode = os.waitstatus_to_exitcode(status)
print(usage.ru_maxrss, flush=True)
sys.exit(p.returncode)
"""

#: One export; reports its own VmHWM (per address space, so not inherited) at each stage.
_RSS_CHILD = """
import json, sys, time
from pathlib import Path
from render.config import parse_config
from render.engine import execute, prepare
from render.plan import EncodePiece
def hwm():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0
after_imports = hwm()
config = parse_config(json.loads(Path(sys.argv[1]).read_text()))
prep = prepare(config, [Path(sys.argv[2])])
after_prepare = hwm()
t0 = time.perf_counter()
execute(prep, Path(sys.argv[3]), workers=2)
seconds = time.perf_counter() - t0
plan = prep.plan
decoded = sum(int(prep.sources[r.source].video.index.size[r.decode_from:r.decode_to].sum())
              for p in plan.pieces if isinstance(p, EncodePiece) for r in p.runs)
print(json.dumps({"after_imports_kb": after_imports, "after_prepare_kb": after_prepare,
                  "peak_kb": hwm(), "execute_s": seconds, "copy_bytes": plan.copy_bytes,
                  "decoded_bytes": decoded, "encode_frames": plan.encode_frames,
                  "frame_pixels": plan.out_format.width * plan.out_format.height}))
"""


def launcher() -> list[str]:
    return [sys.executable, "-c", _RSS_LAUNCHER]


def test_peak_memory(benchmark: Any, bench_media: BenchMedia, tmp_path: Path) -> None:
    benchmark.group = "4-peak-memory"
    segments = multicam_segments()
    cfg_path = tmp_path / "config.json"
    cfg_path.write_text(json.dumps(make_config(segments, job="bench-rss")))
    out = tmp_path / "rss.mp4"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    runs: list[tuple[float, dict[str, Any], int]] = []

    def child() -> None:
        out.unlink(missing_ok=True)
        cmd = [
            *launcher(),
            sys.executable,
            "-c",
            _RSS_CHILD,
            str(cfg_path),
            str(bench_media.root),
            str(out),
        ]
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, check=False)
        wall = time.perf_counter() - t0
        assert res.returncode == 0, res.stderr
        lines = res.stdout.strip().splitlines()
        runs.append((wall, json.loads(lines[-2]), int(lines[-1])))

    benchmark.pedantic(child, rounds=1, iterations=1)
    wall, info, launcher_kb = runs[-1]
    peak = info["peak_kb"] * 1024
    base = info["after_imports_kb"] * 1024
    out_bytes = out.stat().st_size
    processed = info["copy_bytes"] + info["decoded_bytes"]
    raw = info["encode_frames"] * info["frame_pixels"] * 3 // 2  # yuv420p 8-bit
    result: dict[str, Any] = {
        "peak_rss_mb": peak / MB,
        "peak_rss_wait4_via_launcher_mb": launcher_kb * 1024 / MB,
        "rss_after_imports_mb": base / MB,
        "rss_after_prepare_mb": info["after_prepare_kb"] * 1024 / MB,
        "peak_minus_imports_mb": (peak - base) / MB,
        "ratio_peak_vs_after_imports": peak / base,
        "source_files_mb": bench_media.total_bytes / MB,
        "copied_mb": info["copy_bytes"] / MB,
        "decoded_compressed_mb": info["decoded_bytes"] / MB,
        "processed_mb": processed / MB,
        "reencoded_frames": info["encode_frames"],
        "reencoded_raw_mb": raw / MB,
        "output_mb": out_bytes / MB,
        "ratio_peak_vs_processed_bytes": peak / processed,
        "child_wall_s": wall,
        "child_execute_s": info["execute_s"],
    }
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is not None:  # second baseline: the old recipe's largest ffmpeg process
        texts = old_recipe(
            ffmpeg,
            bench_media,
            segments,
            tmp_path / "old-work",
            tmp_path / "old.mp4",
            wrap=launcher(),
        )
        old_peak = max(int(t.strip().splitlines()[-1]) for t in texts) * 1024
        result["old_recipe_ffmpeg_peak_rss_mb"] = old_peak / MB
        result["ratio_peak_vs_old_recipe_peak"] = peak / old_peak
        shutil.rmtree(tmp_path / "old-work", ignore_errors=True)
        (tmp_path / "old.mp4").unlink(missing_ok=True)
    out.unlink()
    report(benchmark, "peak RSS of one 20-cut export (subprocess)", result)
