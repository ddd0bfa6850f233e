"""A worker's part of a plan (render/piecejob.py), checked on synthetic indexes, no media.

What a re-encode task receives must decode exactly the frames the plan names (same
presentation times, same samples, same bytes on disk), hand on exactly the copied samples
the plan assigns to it, and stay the same size however many segments the job has.
"""

from __future__ import annotations

import pickle
import random
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from render import objectstore as obs
from render.encode import EncoderSettings
from render.handoff import handoffs
from render.media import SourceInfo, VideoTrackInfo
from render.piecejob import audio_job, encode_job
from render.plan import AudioSpan, CopyPiece, EncodePiece, Plan
from render.sourcefile import LocalFile, SourceFile, StoredFile
from tests.test_plan import H264, Stream, closed, open_gop, plan_for

SETTINGS = EncoderSettings(codec="h264", width=H264.width, height=H264.height,
                           pix_fmt=H264.pix_fmt, bframes=2, crf=18, preset="fast")


def source_info(stream: Stream, i: int, *, stored: bool = False) -> SourceInfo:
    idx = stream.index
    offset = (48 + np.concatenate([[0], np.cumsum(idx.size)[:-1]])).astype(np.int64)
    size = int(offset[-1] + idx.size[-1])
    file: SourceFile = (
        StoredFile(obs.ObjectInfo(obs.ObjectRef("cams", f"cam{i}.mp4"), size, '"e"'))
        if stored else LocalFile(Path(f"cam{i}.mp4"), size))
    stsd = np.zeros(idx.count, dtype=np.int64)
    stsd[idx.count // 2:] = 1  # a file spliced from two recordings: two descriptions
    video = VideoTrackInfo(
        index=idx, format=H264, offset=offset, extradata=b"avcC-0", nal_length_size=4,
        profile="High", bit_rate=0, sample_aspect_ratio=None, color_primaries=1, color_trc=1,
        colorspace=1, color_range=1, stream_index=0, records=(b"avcC-0", b"avcC-1"),
        stsd=stsd, inband={int(r): (b"sps-%d" % r,) for r in stream.raps})
    return SourceInfo(file, "mp4", video, None)


def multicam(count: int, streams: list[Stream], seed: int) -> list[tuple[int, float, float]]:
    """``count`` contiguous segments switching camera at every cut, cuts mid-GOP."""
    rng = random.Random(seed)
    end = min(float(s.end) for s in streams)
    length = (end - 1.0) / count
    out, cam = [], 0
    for k in range(count):
        cam = rng.choice([c for c in range(len(streams)) if c != cam]) if k else 0
        a = 0.5 + k * length + rng.uniform(0, 0.2)
        out.append((cam, round(a, 6), round(0.5 + (k + 1) * length, 6)))
    return out


def check_jobs(plan: Plan, sources: Mapping[int, SourceInfo],
               links: Mapping[int, tuple[int, int]]) -> int:
    """Every encode job against the plan it was cut from; returns how many there were."""
    by_piece: dict[int, dict[int, int]] = {}
    for i, (j, first) in links.items():
        by_piece.setdefault(j, {})[i] = first
    handed: dict[int, np.ndarray] = {}
    jobs = 0
    for j, piece in enumerate(plan.pieces):
        if not isinstance(piece, EncodePiece):
            continue
        job = encode_job(plan, sources, SETTINGS, by_piece.get(j, {}), j)
        jobs += 1
        assert job.index == j and job.reason == piece.reason and job.frames == piece.frames
        assert np.array_equal(job.out_pts, plan.out_pts[piece.out_first:piece.out_stop])
        assert len(job.runs) == len(job.windows) == len(piece.runs)
        for run, local, window in zip(piece.runs, job.runs, job.windows, strict=True):
            src = sources[run.source]
            lo, hi = run.decode_from, run.decode_to
            assert (local.decode_from, local.decode_to) == (0, hi - lo)
            assert window.video.index.count == hi - lo  # the window, nothing more
            # The same samples, bytes and descriptions, in the same order ...
            assert np.array_equal(window.video.offset, src.video.offset[lo:hi])
            assert np.array_equal(window.video.index.size, src.video.index.size[lo:hi])
            assert np.array_equal(window.video.index.pts, src.video.index.pts[lo:hi])
            assert [window.video.record_of(d) for d in range(hi - lo)] == [
                src.video.record_of(d) for d in range(lo, hi)]
            assert window.video.inband == {
                d - lo: u for d, u in (src.video.inband or {}).items() if lo <= d < hi}
            # ... and the frames the plan wants are the same frames (by presentation time).
            assert np.array_equal(window.video.index.disp_pts[local.src_disp],
                                  src.video.index.disp_pts[run.src_disp])
        for i, (k, decs) in job.hand_on.items():
            assert piece.runs[k].source == plan.pieces[i].source  # type: ignore[union-attr]
            handed[i] = decs + piece.runs[k].decode_from
    # Each handed-on copy gets every one of its samples from ``first`` on, exactly once.
    assert set(handed) == set(links)
    for i, (_, first) in links.items():
        copy = plan.pieces[i]
        assert isinstance(copy, CopyPiece)
        decs = copy.samples(sources[copy.source].video.index)
        assert np.array_equal(handed[i], decs[decs >= first])
    return jobs


@pytest.mark.parametrize("kind", ["closed", "open", "transcode"])
def test_every_job_decodes_exactly_what_the_plan_names(kind: str) -> None:
    if kind == "open":
        streams = [open_gop(30, 30, leading=2), open_gop(30, 30, leading=2, step=500),
                   closed(18, 50, pyramid=True)]
    else:
        streams = [closed(30, 30), closed(30, 30, bframes=3, pyramid=True), closed(45, 20)]
    kw = ({"codec": "h264", "transcode_format": H264, "transcode_chunk_frames": 45}
          if kind == "transcode" else {})
    plan = plan_for(streams, multicam(9, streams, seed=len(kind)), **kw)
    stored = {i: source_info(s, i, stored=True) for i, s in enumerate(streams)}
    links = handoffs(plan, stored) if kind != "transcode" else {}
    assert kind == "transcode" or links  # the hand-on path is exercised
    assert check_jobs(plan, stored, links) >= 9


def test_a_task_payload_does_not_grow_with_the_job() -> None:
    # Three 20-minute cameras (2 s GOPs); the same kind of edit with 20 and 400 cuts.
    streams = [closed(600, 60), closed(600, 60, step=510), closed(600, 60)]
    sources = {i: source_info(s, i) for i, s in enumerate(streams)}
    largest = {}
    for count in (20, 400):
        plan = plan_for(streams, multicam(count, streams, seed=count))
        sizes = [len(pickle.dumps(encode_job(plan, sources, SETTINGS, {}, j), protocol=5))
                 for j, p in enumerate(plan.pieces) if isinstance(p, EncodePiece)]
        assert len(sizes) >= count
        largest[count] = max(sizes)
        whole = len(pickle.dumps((plan, sources), protocol=5))
        assert largest[count] * 50 < whole
    # One piece's window is at most a GOP and its cut: the same bound at any job size.
    assert largest[400] <= 1.25 * largest[20], largest


def test_the_audio_job_carries_only_the_sources_its_spans_read() -> None:
    streams = [closed(4, 30), closed(4, 30), closed(4, 30)]
    sources = {i: source_info(s, i) for i, s in enumerate(streams)}
    spans = (AudioSpan(0, 1, 2, 0), AudioSpan(1, 1, None, 0))
    job = audio_job(spans, sources, object())  # type: ignore[arg-type]
    assert job.spans == spans and set(job.sources) == {2}


def test_a_copy_piece_is_not_a_job() -> None:
    streams = [closed(4, 30)]
    plan = plan_for(streams, [(0, 0.0, 4.0)])
    sources = {0: source_info(streams[0], 0)}
    with pytest.raises(ValueError, match="not re-encoded"):
        encode_job(plan, sources, SETTINGS, {}, 0)
