"""Fixtures shared by the benchmark modules (one media set per session for all of them)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.bench.benchmedia import BenchMedia, ensure_bench_media


@pytest.fixture(scope="session")
def bench_media(tmp_path_factory: pytest.TempPathFactory) -> BenchMedia:
    """The three benchmark cameras; ``CUTFARM_BENCH_MEDIA=/dir`` keeps them between runs."""
    cache = os.environ.get("CUTFARM_BENCH_MEDIA")
    root = Path(cache) if cache else tmp_path_factory.mktemp("bench-media")
    return ensure_bench_media(root)
