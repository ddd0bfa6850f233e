"""Checks of an exported file against its plan: frames, bytes, timestamps, audio sync."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from render import nal
from render.engine import Prepared
from render.plan import CopyPiece
from tests import mediagen as mg

AUDIO_FRAME_SECONDS = 1024 / 48000


@dataclass
class Report:
    frames: int
    errors: int
    wrong: list[tuple[int, object, object]]
    copied_checked: int
    max_click_offset: float | None
    clicks_checked: int


def expected_stamps(prep: Prepared, cameras: Mapping[int, int]) -> list[tuple[int, int]]:
    """(camera, source frame) for every output frame of a copy-mode plan."""
    out: list[tuple[int, int]] = []
    for cut in prep.plan.cuts:
        out.extend((cameras[cut.source], f) for f in range(cut.first, cut.stop))
    return out


def check_frames(path: Path, expected: list[tuple[int, int]]) -> mg.DecodedVideo:
    decoded = mg.decode_video(path)
    wrong = [
        (i, got, exp)
        for i, (got, exp) in enumerate(zip(decoded.stamps, expected, strict=False))
        if got != exp
    ]
    assert decoded.errors == 0, decoded.messages[:5]
    assert len(decoded.stamps) == len(expected), (len(decoded.stamps), len(expected))
    assert not wrong, wrong[:10]
    return decoded


def check_copied_bytes(path: Path, prep: Prepared) -> int:
    """Every copied sample is bit-identical to its source sample; returns how many.

    Keyframes may carry the parameter sets in-band ahead of the camera's own NAL units
    (render/bitstream.py); those are checked to be exactly parameter sets, and the rest of
    the sample must be the camera's bytes unchanged.
    """
    expected: list[tuple[int, int] | None] = []
    for piece in prep.plan.pieces:
        if isinstance(piece, CopyPiece):
            idx = prep.sources[piece.source].video.index
            expected.extend((piece.source, int(d)) for d in piece.samples(idx))
        else:
            expected.extend([None] * piece.frames)
    checked = 0
    handles = {i: s.path.open("rb") for i, s in prep.sources.items()}
    try:
        with av.open(str(path)) as c:
            packets = [bytes(p) for p in c.demux(c.streams.video[0]) if p.size]
        assert len(packets) == len(expected)
        for data, exp in zip(packets, expected, strict=True):
            if exp is None:
                continue
            src = prep.sources[exp[0]]
            fh = handles[exp[0]]
            fh.seek(int(src.video.offset[exp[1]]))
            original = fh.read(int(src.video.index.size[exp[1]]))
            assert data.endswith(original), f"sample {exp} differs"
            _only_parameter_sets(data[:len(data) - len(original)], src.video.format.codec,
                                 src.video.nal_length_size)
            checked += 1
    finally:
        for fh in handles.values():
            fh.close()
    return checked


def _only_parameter_sets(prefix: bytes, codec: str, length_size: int) -> None:
    types = {"h264": {7, 8}, "hevc": {32, 33, 34}}[codec]
    for unit in nal.split_nals(prefix, length_size) if prefix else []:
        kind = nal.nal_type_h264(unit) if codec == "h264" else nal.nal_type_hevc(unit)
        assert kind in types, f"a copied sample gained a NAL unit of type {kind}"


def check_timestamps(path: Path, prep: Prepared) -> None:
    """Output pts are the planned grid, dts strictly increasing, duration exact."""
    rows = mg.packet_table(path)
    pts = sorted(r.pts for r in rows if r.pts is not None)
    plan = prep.plan
    tb = plan.out_time_base
    planned = [int(t) * tb for t in plan.out_pts]
    first = planned[0]
    assert [p - pts[0] for p in pts] == [p - first for p in planned]
    dts = [r.dts for r in rows if r.dts is not None]
    assert all(b > a for a, b in itertools.pairwise(dts))
    for r in rows:
        assert r.dts is not None and r.pts is not None and r.dts <= r.pts
    steps = {b - a for a, b in itertools.pairwise(dts)}
    if all(s.is_cfr for s in (prep.sources[c.source].video.index for c in plan.cuts)):
        rates = {
            prep.sources[c.source].video.index.disp_pts[1]
            - prep.sources[c.source].video.index.disp_pts[0]
            for c in plan.cuts
        }
        if len(rates) == 1:
            assert len(steps) == 1, f"dts not uniform: {sorted(steps)[:5]}"
    info = mg.stream_info(path)
    assert info.duration == plan.duration, (info.duration, plan.duration)


def check_audio_sync(
    path: Path, prep: Prepared, media: Mapping[int, mg.GeneratedMedia], margin: float = 0.02
) -> tuple[float, int]:
    """Each source click lands where the picture says; returns (max offset s, clicks)."""
    audio = mg.decode_audio(path)
    found = mg.find_clicks(audio.samples, audio.sample_rate, audio.start_time)
    worst = 0.0
    n = 0
    for cut in prep.plan.cuts:
        if not cut.audio:
            continue
        gen = media[cut.source]
        for k in gen.click_times:
            if not (
                cut.src_start + Fraction(margin)
                <= k
                <= cut.src_start + cut.duration - Fraction(margin)
            ):
                continue
            want = float(cut.out_start + (k - cut.src_start))
            near = min(found, key=lambda t: abs(t - want), default=None)
            assert near is not None, f"no click near {want}"
            off = abs(near - want)
            assert off <= AUDIO_FRAME_SECONDS, f"click at {want:.4f}s found at {near:.4f}s"
            worst = max(worst, off)
            n += 1
    return worst, n
