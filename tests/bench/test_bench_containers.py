"""OBS's containers against MP4: the same frame-exact edit from the same packets.

The benchmark cameras are remuxed (packets untouched, outside every timed region) into
Matroska, OBS's default, and fragmented MP4 (``frag_keyframe+empty_moov``, what OBS's
fragmented and hybrid modes write while recording). The same twenty-cut edit then runs on
each, rounds interleaved, and the report gives each container's median time as a ratio to
MP4's, for probing alone and for the whole export. Run with::

    .venv/bin/python -m pytest tests/bench/test_bench_containers.py --benchmark-only -s
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import av
import pytest

from render.config import parse_config
from render.engine import execute, prepare
from tests.bench.benchmedia import (
    FILES,
    BenchMedia,
    make_config,
    median,
    multicam_segments,
    report,
    warm_page_cache,
)

ROUNDS = 3
KINDS = {"mp4": ("", ".mp4", None),
         "mkv": ("", ".mkv", None),
         "fragmented": ("_frag", ".mp4", "frag_keyframe+empty_moov+default_base_moof")}


def _remux(src: Path, dst: Path, movflags: str | None) -> None:
    options = {"movflags": movflags} if movflags else {}
    with av.open(str(src)) as inp, av.open(str(dst), "w", options=options) as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams
                   if s.type in ("video", "audio")}
        for packet in inp.demux(*[inp.streams[i] for i in streams]):
            if packet.dts is None:
                continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)


def _name(name: str, kind: str) -> str:
    suffix, ext, _ = KINDS[kind]
    return name.removesuffix(".mp4") + suffix + ext


@pytest.fixture(scope="module")
def containers(bench_media: BenchMedia) -> BenchMedia:
    for kind, (_, _, flags) in KINDS.items():
        if kind == "mp4":
            continue
        for name in FILES:
            dst = bench_media.path(_name(name, kind))
            if not dst.exists() or dst.stat().st_mtime < bench_media.path(name).stat().st_mtime:
                _remux(bench_media.path(name), dst, flags)
    return bench_media


def test_obs_containers_against_mp4(benchmark: Any, containers: BenchMedia,
                                    tmp_path: Path) -> None:
    benchmark.group = "containers"
    segments = multicam_segments()
    configs = {}
    for kind in KINDS:
        cfg = make_config(segments, job=f"bench-{kind}")
        for src in cfg["sources"]:
            src["filePath"] = src["name"] = _name(src["filePath"], kind)
        configs[kind] = parse_config(cfg)
    warm_page_cache(containers.path(_name(n, k)) for n in FILES for k in KINDS)
    probe_s: dict[str, list[float]] = {k: [] for k in KINDS}
    export_s: dict[str, list[float]] = {k: [] for k in KINDS}

    def one_round() -> None:
        for kind, config in configs.items():
            out = tmp_path / f"{kind}.mp4"
            out.unlink(missing_ok=True)
            t0 = time.perf_counter()
            prep = prepare(config, [containers.root])
            t1 = time.perf_counter()
            execute(prep, out, workers=2)
            t2 = time.perf_counter()
            probe_s[kind].append(t1 - t0)
            export_s[kind].append(t2 - t0)

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    base_probe, base_export = median(probe_s["mp4"]), median(export_s["mp4"])
    info: dict[str, Any] = {"segments": len(segments)}
    for kind in KINDS:
        info[f"{kind}_probe_s"] = median(probe_s[kind])
        info[f"{kind}_export_s"] = median(export_s[kind])
        if kind != "mp4":
            info[f"{kind}_probe_vs_mp4"] = median(probe_s[kind]) / base_probe
            info[f"{kind}_export_vs_mp4"] = median(export_s[kind]) / base_export
    report(benchmark, "OBS containers vs MP4 (3 cameras 720p, 20 cuts, frame-exact)", info)
