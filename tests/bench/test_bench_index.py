"""Indexing an hour of video: render.mp4index and render.mkvindex against same-run baselines.

The hour-long files of ``tests/test_mp4index.py`` and ``tests/test_mkvindex.py``, made by
the same generators; those tests check the indexes of these files against PyAV and time
nothing, the speed is measured here. Skipped in the default test run (``pyproject.toml``
adds ``--benchmark-skip``, applied at collection, so the media fixtures never run then).
Run with::

    .venv/bin/python -m pytest tests/bench/test_bench_index.py --benchmark-only -s

Files (generated once per module, outside every timed region, then read into the page
cache):

* ``mp4``: 108k H.264 samples, one sample per chunk, moov at the end (as cameras write);
* ``fragmented``: 108k samples in 3600 one-second fragments (as OBS's fragmented and
  hybrid MP4 modes write while recording);
* ``mkv``: 108k video and 171k AAC blocks (as OBS's default Matroska output).

Each round indexes the file once (the timed region), and, untimed by pytest-benchmark,
measures two baselines on the same file with the same page cache:

* ``read``: a plain sequential read (unbuffered, 1 MiB at a time) of as many bytes as the
  indexer reads, counted once beforehand from ``/proc/self/io`` (rchar; where that is
  missing, the whole file). Buffered reads after seeks can make that more than the file
  holds; the plain read then starts over from the beginning;
* ``pyav_demux``: ``av.open`` and a walk over every packet with ``demux()`` (no
  decoding) -- what FFmpeg does to learn the same per-packet table.

For the MP4 files a third, ``pyav_open``: ``av.open`` alone, which for these files builds
FFmpeg's complete index (all of the moov, or every moof). The report gives the medians and
``index_vs_<baseline>`` = median index time / median baseline time. Only the results are
asserted (sample counts, against PyAV), never a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import pytest

from render.mkvindex import read_mkv_tables
from render.mp4index import TrackTable, read_sample_tables
from tests.bench.benchmedia import median, report, warm_page_cache
from tests.test_mkvindex import check_hour_tables, write_hour_mkv
from tests.test_mp4index import (
    HOUR_SAMPLES,
    assert_index_entries_match,
    make_source,
    write_hour_fragmented,
    write_hour_mp4,
)

ROUNDS = 5
CHUNK = 1 << 20
KINDS = ("mp4", "fragmented", "mkv")
TITLES = {
    "mp4": "MP4 index: 108k samples, one per chunk",
    "fragmented": "fragmented MP4 index: 108k samples in 3600 moofs",
    "mkv": "Matroska index: 108k video + 171k audio blocks",
}


@dataclass(frozen=True)
class HourFiles:
    paths: dict[str, Path]
    edit_start: int  # the source's edit list media time: the fragmented file's dts shift


@pytest.fixture(scope="module")
def hour_files(tmp_path_factory: pytest.TempPathFactory) -> HourFiles:
    d = tmp_path_factory.mktemp("index-bench")
    source = make_source(d)
    paths = {
        "mp4": write_hour_mp4(d / "hour.mp4", source),
        "fragmented": write_hour_fragmented(d / "hour_frag.mp4", source),
        "mkv": write_hour_mkv(d),
    }
    warm_page_cache(paths.values())
    return HourFiles(paths, source.elst[0][1])


def _indexer(kind: str) -> Callable[[Path], list[TrackTable]]:
    return read_mkv_tables if kind == "mkv" else read_sample_tables


def _rchar() -> int | None:
    try:
        text = Path("/proc/self/io").read_text()
    except OSError:
        return None
    return next(int(line.split()[1]) for line in text.splitlines() if line.startswith("rchar:"))


def bytes_read_by(index: Callable[[Path], list[TrackTable]], path: Path) -> tuple[int, str]:
    """Bytes one indexing of ``path`` reads (rchar delta, less a bare probe's own reads)."""
    index(path)  # imports and first-call costs outside the count
    before = _rchar()
    if before is None:
        return path.stat().st_size, "file size (no /proc/self/io)"
    probe = _rchar()
    assert probe is not None
    index(path)
    after = _rchar()
    assert after is not None
    return (after - probe) - (probe - before), "rchar"


def plain_read(path: Path, nbytes: int) -> int:
    """Read ``nbytes`` from the start of ``path``, again from the start at its end."""
    got = 0
    with path.open("rb", buffering=0) as f:
        while got < nbytes:
            chunk = f.read(min(CHUNK, nbytes - got))
            if not chunk:
                f.seek(0)
                continue
            got += len(chunk)
    return got


def pyav_demux(path: Path) -> int:
    """Packets with data, as the indexes count samples."""
    n = 0
    with av.open(str(path)) as c:
        for p in c.demux():
            if p.size:
                n += 1
    return n


def pyav_open(path: Path) -> int:
    with av.open(str(path)) as c:
        return len(c.streams.video[0].index_entries)


def check_results(kind: str, files: HourFiles, tables: list[TrackTable]) -> None:
    """What tests/test_mp4index.py and tests/test_mkvindex.py check of the same files."""
    path = files.paths[kind]
    if kind == "mkv":
        check_hour_tables(path, tables)
        return
    (table,) = tables
    assert table.sample_count == HOUR_SAMPLES
    if kind == "fragmented":
        assert table.fragment_sample_count == HOUR_SAMPLES
        assert table.dts[-1] == (HOUR_SAMPLES - 1) * 1001 - files.edit_start
    assert_index_entries_match(path, table, HOUR_SAMPLES)


@pytest.mark.parametrize("kind", KINDS)
def test_index_one_hour(benchmark: Any, hour_files: HourFiles, kind: str) -> None:
    benchmark.group = "index-one-hour"
    path = hour_files.paths[kind]
    index = _indexer(kind)
    nbytes, counted_by = bytes_read_by(index, path)
    baselines: dict[str, Callable[[], int]] = {
        "read": lambda: plain_read(path, nbytes),
        "pyav_demux": lambda: pyav_demux(path),
    }
    if kind != "mkv":
        baselines["pyav_open"] = lambda: pyav_open(path)
    base_s: dict[str, list[float]] = {name: [] for name in baselines}
    base_out: dict[str, list[int]] = {name: [] for name in baselines}
    index_s: list[float] = []

    def baselines_round() -> None:
        # Untimed by pytest-benchmark; interleaved with the indexing rounds.
        for name, run in baselines.items():
            t0 = time.perf_counter()
            out = run()
            base_s[name].append(time.perf_counter() - t0)
            base_out[name].append(out)

    def timed_index() -> list[TrackTable]:
        t0 = time.perf_counter()
        tables = index(path)
        index_s.append(time.perf_counter() - t0)
        return tables

    tables = benchmark.pedantic(timed_index, setup=baselines_round, rounds=ROUNDS, iterations=1)

    samples = sum(t.sample_count for t in tables)
    check_results(kind, hour_files, tables)
    assert set(base_out["read"]) == {nbytes}
    assert set(base_out["pyav_demux"]) == {samples}
    if "pyav_open" in base_out:
        assert set(base_out["pyav_open"]) == {HOUR_SAMPLES}

    info: dict[str, Any] = {
        "file_mb": path.stat().st_size / 1e6,
        "samples": samples,
        "index_read_mb": nbytes / 1e6,
        "index_read_counted_by": counted_by,
        "rounds": ROUNDS,
        "index_s": median(index_s),
        "index_us_per_sample": median(index_s) / samples * 1e6,
    }
    for name, times in base_s.items():
        info[f"{name}_s"] = median(times)
    for name, times in base_s.items():
        info[f"index_vs_{name}"] = median(index_s) / median(times)
    report(benchmark, TITLES[kind], info)
