"""render.mp4index against PyAV: every packet of every track must match.

The reference is what ``av.open(path).demux()`` reports (pts, dts, size, pos,
key frame and discard flags, duration) and ``stream.index_entries``.  Media is
generated with PyAV; edit-list and layout variants are made by rewriting the
moov box of generated files, or by re-laying out real samples with a small
MP4 writer, so FFmpeg is always the judge.
"""

from __future__ import annotations

import io
import os
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from av.audio.stream import AudioStream
from av.video.stream import VideoStream

from render.mp4index import Mp4IndexError, TrackTable, read_sample_tables

FPS = Fraction(30000, 1001)
W, H = 160, 90


# --------------------------------------------------------------------------
# media generation


def encode(
    path: Path,
    codec: str,
    options: dict[str, str],
    *,
    frames: int = 90,
    audio: bool = False,
    vfr: bool = False,
    container_options: dict[str, str] | None = None,
) -> Path:
    rng = np.random.default_rng(1)
    out = av.open(str(path), "w", options=container_options or {})
    vs = out.add_stream(codec, rate=FPS, options=options)
    assert isinstance(vs, VideoStream)
    vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
    tb = Fraction(1, 90000) if vfr else 1 / FPS
    vs.codec_context.time_base = tb
    aus = out.add_stream("aac", rate=48000) if audio else None
    t = 0
    audio_pts = 0
    for i in range(frames):
        img = rng.integers(0, 40, (H, W, 3), dtype=np.uint8)
        img[:, :, 0] += np.uint8((i * 7) % 200)
        img[(i * 3) % H :, : (i * 5) % W, 1] = 200
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts, frame.time_base = t, tb
        t += int(rng.choice([3003, 1500, 4500, 3000, 6006])) if vfr else 1
        out.mux(vs.encode(frame))
        while aus is not None and audio_pts < (i + 1) * 48000 / FPS:
            samples = rng.standard_normal((1, 1024)).astype(np.float32) * 0.1
            af = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            af.sample_rate, af.pts, af.time_base = 48000, audio_pts, Fraction(1, 48000)
            audio_pts += 1024
            out.mux(aus.encode(af))
    out.mux(vs.encode(None))
    if aus is not None:
        out.mux(aus.encode(None))
    out.close()
    return path


# b-adapt=0: x264 would otherwise decide that noise content needs no B-frames
X264 = {
    "preset": "veryfast",
    "bf": "2",
    "g": "30",
    "x264-params": "b-pyramid=normal:b-adapt=0:scenecut=0",
}
X265_OPEN = {
    "preset": "ultrafast",
    "bf": "3",
    "x265-params": "open-gop=1:keyint=30:min-keyint=30:no-scenecut=1:log-level=error",
}


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("mp4index")
    return {
        "h264_aac": encode(d / "h264_aac.mp4", "libx264", X264, audio=True),
        "hevc_open": encode(d / "hevc_open.mp4", "libx265", X265_OPEN),
        "vfr": encode(d / "vfr.mp4", "libx264", {"bf": "2", "g": "25"}, vfr=True),
        "mov": encode(d / "h264.mov", "libx264", {"bf": "3", "g": "20"}, audio=True),
        "faststart": encode(
            d / "faststart.mp4",
            "libx264",
            X264,
            audio=True,
            container_options={"movflags": "faststart"},
        ),
        "negative_cts": encode(
            d / "negcts.mp4",
            "libx264",
            X264,
            container_options={"movflags": "negative_cts_offsets"},
        ),
        "fragmented": encode(
            d / "frag.mp4",
            "libx264",
            {"bf": "2", "g": "30"},
            container_options={"movflags": "frag_keyframe+empty_moov"},
        ),
    }


# --------------------------------------------------------------------------
# the reference: PyAV


def pyav_packets(path: Path) -> dict[int, np.ndarray]:
    """stream index -> (n, 7) array of dts, pts, size, pos, key, discard, duration."""
    rows: dict[int, list[tuple[int, ...]]] = {}
    with av.open(str(path)) as c:
        for s in c.streams:
            rows[s.index] = []
        for p in c.demux():
            if p.size == 0 and p.pts is None:  # PyAV's end-of-stream flush packet
                continue
            assert p.dts is not None and p.pts is not None and p.pos is not None
            rows[p.stream.index].append(
                (p.dts, p.pts, p.size, p.pos, p.is_keyframe, p.is_discard, p.duration or 0)
            )
    return {k: np.array(v, dtype=np.int64).reshape(-1, 7) for k, v in rows.items()}


def mine(t: TrackTable) -> np.ndarray:
    cols = (t.dts, t.pts, t.size, t.offset, t.sync, t.discard, t.duration)
    return np.stack([np.asarray(c, dtype=np.int64) for c in cols], axis=1)


def assert_matches_pyav(path: Path, *, h264_keys_parsed: bool = False) -> list[TrackTable]:
    """Compare with PyAV's packets and index entries.

    FFmpeg 8 sets ``packet.is_keyframe`` of H.264 in MP4 from its bitstream
    parser (IDR or recovery point SEI), not from stss; the index entries keep
    the stss flag.  ``h264_keys_parsed`` skips the packet key flag for files
    whose stss deliberately disagrees with the bitstream.
    """
    tables = read_sample_tables(path)
    packets = pyav_packets(path)
    with av.open(str(path)) as c:
        assert len(c.streams) == len(tables)
        for s, t in zip(c.streams, tables, strict=True):
            assert s.id == t.track_id
            assert s.time_base == Fraction(1, t.timescale)
            got, want = mine(t), packets[s.index]
            assert got.shape == want.shape, f"{path.name} stream {s.index}: sample count"
            if h264_keys_parsed:
                want = want.copy()
                want[:, 4] = got[:, 4]
            bad = np.flatnonzero((got != want).any(axis=1))
            assert len(bad) == 0, (
                f"{path.name} stream {s.index} ({t.handler}) differs at {bad[:5].tolist()}:\n"
                f"mine {got[bad[:3]].tolist()}\npyav {want[bad[:3]].tolist()}"
            )
            entries = np.array(
                [
                    (e.timestamp, e.pos, e.size, e.is_keyframe, e.is_discard)
                    for e in s.index_entries
                ],
                dtype=np.int64,
            ).reshape(-1, 5)
            np.testing.assert_array_equal(entries, got[:, [0, 3, 2, 4, 5]])
    return tables


# --------------------------------------------------------------------------
# moov rewriting (moov must be the last box, so no chunk offset moves)

_CONTAINERS = {b"moov", b"trak", b"edts", b"mdia", b"minf", b"stbl"}
Node = list[Any]  # [type, payload bytes | list[Node]]


def parse_boxes(buf: bytes, start: int, end: int) -> list[Node]:
    out: list[Node] = []
    pos = start
    while pos < end:
        size, typ = struct.unpack_from(">I4s", buf, pos)
        body = buf[pos + 8 : pos + size]
        out.append([typ, parse_boxes(buf, pos + 8, pos + size) if typ in _CONTAINERS else body])
        pos += size
    return out


def box(typ: bytes, body: bytes | list[Node]) -> bytes:
    if isinstance(body, list):
        body = b"".join(box(t, b) for t, b in body)
    return struct.pack(">I4s", len(body) + 8, typ) + body


def child(nodes: list[Node], typ: bytes) -> Node:
    return next(n for n in nodes if n[0] == typ)


def stbl_of(trak: Node) -> list[Node]:
    mdia = child(trak[1], b"mdia")
    nodes: list[Node] = child(child(mdia[1], b"minf")[1], b"stbl")[1]
    return nodes


def top_level(data: bytes) -> dict[bytes, tuple[int, int]]:
    """type -> (offset, size) of the top-level boxes (32-bit sizes only)."""
    found = {}
    pos = 0
    while pos < len(data):
        size, typ = struct.unpack_from(">I4s", data, pos)
        found[typ] = (pos, size)
        pos += size
    return found


def rewrite_moov(src: Path, dst: Path, edit: Callable[[list[Node]], None]) -> Path:
    data = src.read_bytes()
    pos, size = top_level(data)[b"moov"]
    assert pos + size == len(data), "moov must be the last box"
    moov = parse_boxes(data, pos + 8, pos + size)
    traks = [n for n in moov if n[0] == b"trak"]
    edit(traks)
    dst.write_bytes(data[:pos] + box(b"moov", moov))
    return dst


def elst_body(entries: Sequence[tuple[int, int, float]], version: int = 0) -> bytes:
    body = struct.pack(">B3xI", version, len(entries))
    for duration, media_time, rate in entries:
        fmt = ">QqI" if version else ">IiI"
        body += struct.pack(fmt, duration, media_time, int(rate * 65536))
    return body


def set_elst(trak: Node, entries: Sequence[tuple[int, int, float]], version: int = 0) -> None:
    trak[1] = [n for n in trak[1] if n[0] != b"edts"]
    trak[1].insert(1, [b"edts", [[b"elst", elst_body(entries, version)]]])


def drop_edts(trak: Node) -> None:
    trak[1] = [n for n in trak[1] if n[0] != b"edts"]


# --------------------------------------------------------------------------
# plain files


@pytest.mark.parametrize(
    "name", ["h264_aac", "hevc_open", "vfr", "mov", "faststart", "negative_cts"]
)
def test_matches_pyav(media: dict[str, Path], name: str) -> None:
    tables = assert_matches_pyav(media[name])
    video = tables[0]
    assert video.handler == "vide"
    assert video.sample_count == video.stbl_sample_count == 90
    assert video.sync[0]
    assert np.array_equal(video.sample_number, np.arange(90))


def test_b_frame_timestamps_follow_ffmpeg(media: dict[str, Path]) -> None:
    """Two reordered frames: the first dts is -2 frames, the first pts is 0."""
    video, audio = read_sample_tables(media["h264_aac"])
    assert video.timescale == 30000
    assert video.dts[0] == -2002 and video.pts[0] == 0
    assert int(video.pts.min()) == 0
    assert np.all(np.diff(video.dts) == 1001)
    assert video.edit_list[0].media_time == 2002
    assert video.sample_entries[0].fourcc == "avc1"
    assert video.sample_entries[0].config_type == "avcC"
    assert (video.sample_entries[0].width, video.sample_entries[0].height) == (W, H)
    # AAC priming: 1024 samples before media_time, kept but flagged discard
    assert audio.handler == "soun" and audio.timescale == 48000
    assert audio.dts[0] == audio.pts[0] == -1024 and audio.discard[0]
    assert not audio.discard[1:].any() and audio.pts[1] == 0
    assert audio.sample_entries[0].config_type == "esds"
    assert audio.sample_entries[0].sample_rate == 48000


def test_hevc_open_gop_tables(media: dict[str, Path]) -> None:
    (video,) = read_sample_tables(media["hevc_open"])
    assert video.sample_entries[0].fourcc in ("hvc1", "hev1")
    assert video.sample_entries[0].config_type == "hvcC"
    assert video.sync.sum() >= 3  # IDR + CRAs; render.nal tells them apart


def test_negative_cts_offsets_use_dts_shift(media: dict[str, Path]) -> None:
    (video,) = read_sample_tables(media["negative_cts"])
    assert video.dts_shift > 0
    assert video.pts[0] == 0 and video.dts[0] == -video.dts_shift


def test_arrays_are_read_only(media: dict[str, Path]) -> None:
    video = read_sample_tables(media["h264_aac"])[0]
    for arr in (video.dts, video.pts, video.size, video.offset, video.sync, video.stsd_index):
        with pytest.raises(ValueError, match="read-only"):
            arr[0] = 1


def encode_pcm(path: Path, codec: str, frames: int = 40) -> Path:
    """25 fps video plus PCM in 1920-frame chunks (not a multiple of FFmpeg's 1024)."""
    fmt = {"pcm_s16le": "s16", "pcm_s16be": "s16", "pcm_s24le": "s32"}[codec]
    out = av.open(str(path), "w")
    vs = out.add_stream("libx264", rate=25)
    vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
    aus = out.add_stream(codec, rate=48000, layout="stereo")
    assert isinstance(aus, AudioStream)
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(np.zeros((H, W, 3), np.uint8), format="rgb24")
        frame.pts, frame.time_base = i, Fraction(1, 25)
        out.mux(vs.encode(frame))
        dtype = np.int16 if fmt == "s16" else np.int32
        af = av.AudioFrame.from_ndarray(np.zeros((1, 2 * 1920), dtype), format=fmt, layout="stereo")
        af.sample_rate, af.pts, af.time_base = 48000, i * 1920, Fraction(1, 48000)
        out.mux(aus.encode(af))
    out.mux(vs.encode(None))
    out.close()
    return path


@pytest.mark.parametrize(
    ("codec", "suffix", "fourcc"),
    [
        ("pcm_s16le", ".mov", "sowt"),
        ("pcm_s16be", ".mov", "twos"),
        ("pcm_s24le", ".mov", "in24"),
        ("pcm_s16le", ".mp4", "ipcm"),
    ],
)
def test_pcm_is_indexed_per_ffmpeg_packet(
    tmp_path: Path, codec: str, suffix: str, fourcc: str
) -> None:
    path = encode_pcm(tmp_path / f"pcm{suffix}", codec)
    _, audio = assert_matches_pyav(path)
    assert audio.pcm_chunked and audio.sample_entries[0].fourcc == fourcc
    assert audio.stbl_sample_count == 40 * 1920  # one sample per tick...
    assert audio.sample_count == 80  # ...but one entry per 1024 frames of a chunk
    assert audio.sample_number[:3].tolist() == [0, 1024, 1920]
    edited = rewrite_moov(path, tmp_path / "e.mov", lambda t: set_elst(t[1], [(1200, 3000, 1)]))
    _, audio = assert_matches_pyav(edited)
    # the packet of frames 2944..3839 straddles media_time 3000: kept, trimmed by the decoder
    straddling = np.flatnonzero(audio.sample_number == 2944)[0]
    assert audio.dts[straddling] == -56 and not audio.discard[straddling]
    assert audio.discard[:straddling].all() and not audio.discard[straddling:].any()


# --------------------------------------------------------------------------
# edit lists (rewritten moov, FFmpeg is the judge)

VIDEO_EDITS: dict[str, Callable[[list[Node]], None]] = {
    "no_edit_list": lambda t: drop_edts(t[0]),
    "empty_edit": lambda t: set_elst(t[0], [(500, -1, 1), (3003, 2002, 1)]),
    "two_empty_edits": lambda t: set_elst(t[0], [(100, -1, 1), (33, -1, 1), (3003, 2002, 1)]),
    "elst_v1": lambda t: set_elst(t[0], [(500, -1, 1), (3003, 2002, 1)], version=1),
    "media_time_zero": lambda t: set_elst(t[0], [(3003, 0, 1)]),
    "start_on_key_frame": lambda t: set_elst(t[0], [(2000, 2002 + 30 * 1001, 1)]),
    "start_mid_gop": lambda t: set_elst(t[0], [(1000, 2002 + 45 * 1001, 1)]),
    "ends_early": lambda t: set_elst(t[0], [(1000, 2002, 1)]),
}
AUDIO_EDITS: dict[str, Callable[[list[Node]], None]] = {
    "audio_unaligned_start": lambda t: set_elst(t[1], [(2900, 2112, 1)]),
    "audio_empty_edit": lambda t: set_elst(t[1], [(250, -1, 1), (2900, 1024, 1)]),
    "audio_late_start": lambda t: set_elst(t[1], [(1000, 96100, 1)]),
    "audio_no_edit_list": lambda t: drop_edts(t[1]),
}


@pytest.mark.parametrize("base", ["h264_aac", "hevc_open", "vfr", "negative_cts"])
@pytest.mark.parametrize("case", sorted(VIDEO_EDITS))
def test_video_edit_lists(media: dict[str, Path], tmp_path: Path, base: str, case: str) -> None:
    path = rewrite_moov(media[base], tmp_path / f"{case}.mp4", VIDEO_EDITS[case])
    assert_matches_pyav(path)


@pytest.mark.parametrize("case", sorted(AUDIO_EDITS))
def test_audio_edit_lists(media: dict[str, Path], tmp_path: Path, case: str) -> None:
    assert_matches_pyav(rewrite_moov(media["h264_aac"], tmp_path / "a.mp4", AUDIO_EDITS[case]))


def test_empty_edit_delays_presentation(media: dict[str, Path], tmp_path: Path) -> None:
    path = rewrite_moov(media["h264_aac"], tmp_path / "e.mp4", VIDEO_EDITS["empty_edit"])
    video = read_sample_tables(path)[0]
    assert video.pts[0] == 15000  # 500 ms of the movie timescale, in 1/30000
    assert video.dts[0] == 15000 - 2002


def test_edit_starting_mid_gop_skips_and_discards(media: dict[str, Path], tmp_path: Path) -> None:
    path = rewrite_moov(media["h264_aac"], tmp_path / "m.mp4", VIDEO_EDITS["start_mid_gop"])
    video = read_sample_tables(path)[0]
    # FFmpeg starts at the key frame before media_time; frames before it are gone
    assert video.sample_number[0] == 30 and video.sync[0]
    assert video.stbl_sample_count == 90 and video.sample_count < 90
    # frames presented outside the edit (1 s from media_time) are decoded but discarded
    assert np.array_equal(video.discard, (video.pts < 0) | (video.pts >= 30000))
    assert int(video.pts[~video.discard].min()) == 0


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([(1000, 2002, 1), (1000, 40040, 1)], "non-empty edits"),
        ([(3003, 2002, 2)], "media_rate"),
        ([(3003, 2002, 1), (100, -1, 1)], "non-empty edits"),
        ([(0, 2002, 1)], "zero duration"),
    ],
)
def test_unsupported_edit_lists_raise(
    media: dict[str, Path], tmp_path: Path, entries: list[tuple[int, int, float]], message: str
) -> None:
    path = rewrite_moov(media["h264_aac"], tmp_path / "x.mp4", lambda t: set_elst(t[0], entries))
    with pytest.raises(Mp4IndexError, match=message) as info:
        read_sample_tables(path)
    assert "edit" in str(info.value)


def _ctts_edit(transform: Callable[[list[tuple[int, int]]], list[tuple[int, int]]]) -> Any:
    def edit(traks: list[Node]) -> None:
        stbl = stbl_of(traks[0])
        node = child(stbl, b"ctts")
        _, n = struct.unpack_from(">B3xI", node[1])
        runs = [struct.unpack_from(">Ii", node[1], 8 + 8 * i) for i in range(n)]
        runs = transform(runs)
        node[1] = struct.pack(">B3xI", 1, len(runs)) + b"".join(
            struct.pack(">Ii", c, o) for c, o in runs
        )

    return edit


def test_ffmpeg_ignores_the_last_two_ctts_runs_for_dts_shift(
    media: dict[str, Path], tmp_path: Path
) -> None:
    def negative_tail(runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
        count, off = runs[-1]
        return [*runs[:-1], (count - 1, off), (1, -5000)]

    path = rewrite_moov(media["h264_aac"], tmp_path / "t.mp4", _ctts_edit(negative_tail))
    assert read_sample_tables(path)[0].dts_shift == 0
    assert_matches_pyav(path)


def test_all_negative_ctts(media: dict[str, Path], tmp_path: Path) -> None:
    # offsets 1001..4004 become -1001..2002: FFmpeg shifts dts down by 1001
    shift = _ctts_edit(lambda runs: [(c, o - 2002) for c, o in runs])
    path = rewrite_moov(media["h264_aac"], tmp_path / "n.mp4", shift)
    assert read_sample_tables(path)[0].dts_shift == 1001
    assert_matches_pyav(path)


def test_cslg_is_ignored_like_ffmpeg(media: dict[str, Path], tmp_path: Path) -> None:
    def add_cslg(traks: list[Node]) -> None:
        stbl_of(traks[0]).append([b"cslg", struct.pack(">I5i", 0, 5000, -5000, 2002, 0, 90090)])

    assert_matches_pyav(rewrite_moov(media["negative_cts"], tmp_path / "c.mp4", add_cslg))


# --------------------------------------------------------------------------
# layouts: real samples re-laid out by a minimal MP4 writer


def full_box(typ: bytes, version: int, body: bytes, flags: int = 0) -> bytes:
    return box(typ, struct.pack(">I", (version << 24) | flags) + body)


def table_box(typ: bytes, rows: Sequence[Sequence[int]] | np.ndarray, dtype: str = ">u4") -> bytes:
    """A full box holding ``u32 count`` and the rows, e.g. stts/ctts/stsc/stco/stss."""
    arr = np.asarray(rows, dtype=np.int64)
    version = 1 if typ == b"ctts" else 0
    return full_box(typ, version, struct.pack(">I", len(arr)) + arr.astype(dtype).tobytes())


def runs_of(values: np.ndarray) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for v in values.tolist():
        if out and out[-1][1] == v:
            out[-1] = (out[-1][0] + 1, v)
        else:
            out.append((1, v))
    return out


class Source:
    """Video samples and the boxes describing them, taken from a generated file."""

    def __init__(self, path: Path) -> None:
        data = path.read_bytes()
        table = read_sample_tables(path)[0]
        pos, size = top_level(data)[b"moov"]
        moov = parse_boxes(data, pos + 8, pos + size)
        trak = child(moov, b"trak")
        mdia = child(trak[1], b"mdia")[1]
        self.mvhd: bytes = child(moov, b"mvhd")[1]
        self.tkhd: bytes = child(trak[1], b"tkhd")[1]
        self.mdhd: bytes = child(mdia, b"mdhd")[1]
        self.hdlr: bytes = child(mdia, b"hdlr")[1]
        self.stsd: bytes = child(stbl_of(trak), b"stsd")[1]
        order = np.argsort(table.sample_number)
        self.samples = [
            data[o : o + s] for o, s in zip(table.offset[order], table.size[order], strict=True)
        ]
        self.ctts = (table.pts - table.dts)[order]
        self.stss = np.flatnonzero(table.sync[order]) + 1
        self.elst = [(e.segment_duration, e.media_time, e.media_rate) for e in table.edit_list]


@dataclass
class Layout:
    """How write_mp4 lays out ``Source`` samples; defaults reproduce the source."""

    samples: list[bytes] | None = None
    refs: np.ndarray | None = None  # sample i is samples[refs[i]]; one chunk each
    chunks: list[int] | None = None  # samples per chunk
    stss: np.ndarray | None = None
    stps: list[int] | None = None
    rap: list[tuple[int, int]] | None = None  # 'rap ' sbgp runs (count, group index)
    size_box: str = "stsz"  # or "const", "stz2"
    co64: bool = False
    elst: list[tuple[int, int, float]] | None = None


def _payload(samples: list[bytes], refs: np.ndarray, lay: Layout) -> tuple[bytes, list[int]]:
    """mdat payload and chunk offsets relative to it."""
    payload = bytearray()
    if lay.refs is not None:  # each distinct sample stored once, chunks point into them
        starts = []
        for s in samples:
            starts.append(len(payload))
            payload += s
        return bytes(payload), [starts[r] for r in refs]
    offsets = []
    i = 0
    for count in lay.chunks or [1] * len(refs):
        payload += b"\x07" * 7  # junk between chunks, as interleaved files have
        offsets.append(len(payload))
        for _ in range(count):
            payload += samples[refs[i]]
            i += 1
    return bytes(payload), offsets


def _sample_boxes(src: Source, lay: Layout, sizes: np.ndarray, refs: np.ndarray) -> list[bytes]:
    n = len(refs)
    ctts = src.ctts[refs % len(src.ctts)]
    stss = src.stss if lay.stss is None else lay.stss
    chunks = lay.chunks or [1] * n
    stsc = [(k + 1, c, 1) for k, c in enumerate(chunks) if k == 0 or chunks[k - 1] != c]
    parts = [
        box(b"stsd", src.stsd),
        table_box(b"stts", [(n, 1001)]),
        table_box(b"ctts", runs_of(ctts), ">i4"),
        table_box(b"stss", np.asarray(stss).reshape(-1, 1)),
        table_box(b"stsc", stsc),
    ]
    if lay.stps is not None:
        parts.append(table_box(b"stps", np.asarray(lay.stps).reshape(-1, 1)))
    if lay.rap is not None:
        parts.append(full_box(b"sgpd", 1, struct.pack(">4sII", b"rap ", 1, 1) + b"\x80"))
        rows = np.asarray(lay.rap, dtype=">u4").tobytes()
        parts.append(full_box(b"sbgp", 0, struct.pack(">4sI", b"rap ", len(lay.rap)) + rows))
    if lay.size_box == "const":
        assert len(set(sizes.tolist())) == 1
        parts.append(full_box(b"stsz", 0, struct.pack(">II", int(sizes[0]), n)))
    elif lay.size_box == "stz2":
        body = struct.pack(">3xBI", 16, n) + sizes.astype(">u2").tobytes()
        parts.append(full_box(b"stz2", 0, body))
    else:
        parts.append(full_box(b"stsz", 0, struct.pack(">II", 0, n) + sizes.astype(">u4").tobytes()))
    return parts


def write_mp4(
    dst: Path,
    src: Source,
    lay: Layout | None = None,
    *,
    gap: int = 0,
    moov_first: bool = False,
    mdat_size0: bool = False,
    moov_largesize: bool = False,
) -> Path:
    """Write a one-track MP4 of ``src``'s samples in layout ``lay``.

    ``gap`` leaves a sparse hole before the first chunk (for offsets > 4 GiB).
    """
    lay = lay or Layout()
    samples = lay.samples or src.samples
    refs = np.arange(len(samples)) if lay.refs is None else lay.refs
    sizes = np.array([len(s) for s in samples], dtype=np.int64)[refs]
    payload, rel_offsets = _payload(samples, refs, lay)
    sample_boxes = b"".join(_sample_boxes(src, lay, sizes, refs))
    edits = src.elst if lay.elst is None else lay.elst

    def moov(base: int) -> bytes:
        offsets = np.array(rel_offsets, dtype=np.int64).reshape(-1, 1) + base
        chunk_box = table_box(b"co64", offsets, ">u8") if lay.co64 else table_box(b"stco", offsets)
        vmhd = full_box(b"vmhd", 0, bytes(8), flags=1)
        dref = full_box(b"dref", 0, struct.pack(">I", 1) + full_box(b"url ", 0, b"", flags=1))
        stbl = box(b"stbl", sample_boxes + chunk_box)
        minf = box(b"minf", vmhd + box(b"dinf", dref) + stbl)
        mdia = box(b"mdia", box(b"mdhd", src.mdhd) + box(b"hdlr", src.hdlr) + minf)
        edts = box(b"edts", box(b"elst", elst_body(edits))) if edits else b""
        body = box(b"mvhd", src.mvhd) + box(b"trak", box(b"tkhd", src.tkhd) + edts + mdia)
        if moov_largesize:
            return struct.pack(">I4sQ", 1, b"moov", len(body) + 16) + body
        return box(b"moov", body)

    ftyp = box(b"ftyp", b"isom" + struct.pack(">I", 512) + b"isomiso2avc1mp41")
    mdat_len = gap + len(payload)
    if mdat_size0:
        mdat_header = struct.pack(">I4s", 0, b"mdat")
    elif mdat_len + 8 >= 1 << 32:
        mdat_header = struct.pack(">I4sQ", 1, b"mdat", mdat_len + 16)
    else:
        mdat_header = struct.pack(">I4s", mdat_len + 8, b"mdat")
    base = len(ftyp) + (len(moov(0)) if moov_first else 0) + len(mdat_header) + gap
    with dst.open("wb") as f:
        f.write(ftyp)
        if moov_first:
            f.write(moov(base))
        f.write(mdat_header)
        f.seek(gap, os.SEEK_CUR)
        f.write(payload)
        if not moov_first:
            f.write(moov(base))
    return dst


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Source:
    return Source(encode(tmp_path_factory.mktemp("src") / "v.mp4", "libx264", X264, frames=60))


def pad_with_filler(samples: Sequence[bytes], size: int) -> list[bytes]:
    """Pad H.264 samples to one size with a filler-data NAL (type 12), which decoders skip."""
    out = []
    for s in samples:
        k = size - len(s) - 4
        assert k >= 2
        out.append(s + struct.pack(">I", k) + b"\x0c" + b"\xff" * (k - 2) + b"\x80")
    return out


def sparse_files_work(tmp_path: Path) -> bool:
    probe = tmp_path / "sparse-probe"
    with probe.open("wb") as f:
        f.seek(64 << 20)
        f.write(b"x")
    ok = probe.stat().st_blocks * 512 < 1 << 20
    probe.unlink()
    return ok


def test_layout_chunk_runs(source: Source, tmp_path: Path) -> None:
    chunks = [3, 3, 3, 5, 5, 1, 1, 1, 2, 2, 2, 2, 30]
    assert_matches_pyav(write_mp4(tmp_path / "c.mp4", source, Layout(chunks=chunks)))


def test_layout_moov_first_and_mdat_size_zero(source: Source, tmp_path: Path) -> None:
    lay = Layout(chunks=[10] * 6)
    assert_matches_pyav(
        write_mp4(tmp_path / "z.mp4", source, lay, moov_first=True, mdat_size0=True)
    )


def test_layout_constant_size_and_stz2(source: Source, tmp_path: Path) -> None:
    biggest = max(len(s) for s in source.samples)
    padded = pad_with_filler(source.samples, biggest + 8)
    lay = Layout(samples=padded, chunks=[4] * 15, size_box="const")
    const = write_mp4(tmp_path / "k.mp4", source, lay)
    assert set(assert_matches_pyav(const)[0].size.tolist()) == {biggest + 8}
    lay = Layout(chunks=[6] * 10, size_box="stz2")
    assert_matches_pyav(write_mp4(tmp_path / "s.mp4", source, lay))


def test_layout_largesize_co64_beyond_4gib(source: Source, tmp_path: Path) -> None:
    if not sparse_files_work(tmp_path):
        pytest.skip("file system does not support sparse files")
    lay = Layout(chunks=[2] * 30, co64=True)
    path = write_mp4(tmp_path / "big.mp4", source, lay, gap=5 << 30, moov_largesize=True)
    (video,) = assert_matches_pyav(path)
    assert int(video.offset.min()) > 5 << 30


def h264_packet_keys(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.array([p.is_keyframe for p in c.demux(c.streams.video[0]) if p.size])


def test_sync_from_stps_and_rap_group_like_ffmpeg(source: Source, tmp_path: Path) -> None:
    lay = Layout(stps=[5, 40], rap=[(9, 0), (1, 1), (50, 0)])
    path = write_mp4(tmp_path / "p.mp4", source, lay)
    (video,) = assert_matches_pyav(path, h264_keys_parsed=True)
    assert video.sync[4] and video.sync[39] and video.sync[9]
    assert video.sync.sum() == len(source.stss) + 3
    # ... but PyAV's H.264 packet flags come from the bitstream: the IDRs only
    assert np.array_equal(np.flatnonzero(h264_packet_keys(path)) + 1, source.stss)


def test_stss_absent_or_empty(source: Source, tmp_path: Path) -> None:
    path = write_mp4(tmp_path / "a.mp4", source, Layout(stss=np.zeros(0, dtype=np.int64)))
    # an empty stss makes FFmpeg parse the bitstream for key frames: refused
    with pytest.raises(Mp4IndexError, match="empty stss"):
        read_sample_tables(path)

    def drop_stss(traks: list[Node]) -> None:
        stbl = stbl_of(traks[0])
        stbl[:] = [n for n in stbl if n[0] != b"stss"]

    no_stss = rewrite_moov(write_mp4(tmp_path / "b.mp4", source), tmp_path / "c.mp4", drop_stss)
    (video,) = assert_matches_pyav(no_stss, h264_keys_parsed=True)
    assert video.sync.all()  # as FFmpeg's index entries say
    assert np.array_equal(np.flatnonzero(h264_packet_keys(no_stss)) + 1, source.stss)


# --------------------------------------------------------------------------
# errors


def test_not_an_mp4(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello world, this is not a movie\n" * 10)
    with pytest.raises(Mp4IndexError, match="not an ISO-BMFF"):
        read_sample_tables(text)
    tiny = tmp_path / "tiny.mp4"
    tiny.write_bytes(b"\x00\x00")
    with pytest.raises(Mp4IndexError, match="not an MP4"):
        read_sample_tables(tiny)


def test_junk_after_the_last_box_is_tolerated(media: dict[str, Path], tmp_path: Path) -> None:
    padded = tmp_path / "padded.mp4"
    padded.write_bytes(media["h264_aac"].read_bytes() + bytes(1000))
    assert read_sample_tables(padded)[0].sample_count == 90
    # ... but not before the moov, where it means the box structure is broken
    data = media["h264_aac"].read_bytes()
    ftyp_size = struct.unpack_from(">I", data)[0]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(data[:ftyp_size] + b"\xff" * 16 + data[ftyp_size + 16 :])
    with pytest.raises(Mp4IndexError, match="corrupt top-level box header"):
        read_sample_tables(broken)


def test_truncated_recording_without_moov(media: dict[str, Path], tmp_path: Path) -> None:
    data = media["h264_aac"].read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(Mp4IndexError, match="no moov box") as info:
        read_sample_tables(cut)
    assert "interrupted" in str(info.value) and "cut.mp4" in str(info.value)


def test_truncated_moov(media: dict[str, Path], tmp_path: Path) -> None:
    data = media["h264_aac"].read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:-100])
    with pytest.raises(Mp4IndexError, match="truncated moov"):
        read_sample_tables(cut)


def test_truncated_media_after_leading_moov(media: dict[str, Path], tmp_path: Path) -> None:
    data = media["faststart"].read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) - 5000])
    with pytest.raises(Mp4IndexError, match="past the end of the file"):
        read_sample_tables(cut)


def test_fragmented_mp4(media: dict[str, Path], tmp_path: Path) -> None:
    msg = "fragmented MP4 is not supported by the index; demux instead"
    with pytest.raises(Mp4IndexError, match=msg):
        read_sample_tables(media["fragmented"])
    # just the empty moov (recording stopped before the first fragment): mvex
    data = media["fragmented"].read_bytes()
    head = tmp_path / "head.mp4"
    head.write_bytes(data[: data.index(b"moof") - 4])
    with pytest.raises(Mp4IndexError, match=msg):
        read_sample_tables(head)


def test_corrupt_tables(media: dict[str, Path], tmp_path: Path) -> None:
    def bad_stts(traks: list[Node]) -> None:
        node = child(stbl_of(traks[0]), b"stts")
        node[1] = table_box(b"stts", [(80, 1001)])[8:]

    path = rewrite_moov(media["h264_aac"], tmp_path / "t.mp4", bad_stts)
    with pytest.raises(Mp4IndexError, match="stts describes 80 samples, stsz has 90"):
        read_sample_tables(path)

    def oversized_child(traks: list[Node]) -> None:
        node = child(stbl_of(traks[0]), b"stsz")
        node[1] = node[1][:-40]  # the entries no longer fit

    path = rewrite_moov(media["h264_aac"], tmp_path / "z.mp4", oversized_child)
    with pytest.raises(Mp4IndexError, match="stsz"):
        read_sample_tables(path)


# --------------------------------------------------------------------------
# cost


class _CountingFile(io.FileIO):
    read_bytes = 0

    def read(self, size: int | None = -1, /) -> bytes:
        data = super().read(size)
        _CountingFile.read_bytes += len(data)
        return data


def test_reads_only_box_headers_and_moov(
    source: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_mp4(tmp_path / "m.mp4", source, Layout(chunks=[10] * 6), gap=256 << 20)
    with path.open("rb") as f:
        f.seek(-50_000, os.SEEK_END)
        tail = f.read()
    moov_size = struct.unpack_from(">I", tail, tail.rindex(b"moov") - 4)[0]
    monkeypatch.setattr(Path, "open", lambda self, mode="r": _CountingFile(self, mode[0]))
    _CountingFile.read_bytes = 0
    read_sample_tables(path)
    # ftyp, mdat, moov: at most 16 header bytes each, plus the moov payload
    assert _CountingFile.read_bytes <= moov_size + 3 * 16


def test_one_hour_index_is_fast(source: Source, tmp_path: Path) -> None:
    """108k samples (an hour at 30 fps), one sample per chunk, as cameras interleave."""
    n = 108_000
    gop = len(source.samples)
    refs = np.arange(n) % gop
    stss = np.flatnonzero(np.isin(refs, source.stss - 1)) + 1
    whole = [(n * 1001 // 30, source.elst[0][1], 1.0)]  # ms: the source's movie timescale
    lay = Layout(refs=refs, stss=stss, elst=whole)
    path = write_mp4(tmp_path / "hour.mp4", source, lay)
    t0 = time.perf_counter()
    (video,) = read_sample_tables(path)
    elapsed = time.perf_counter() - t0
    assert video.sample_count == n
    assert elapsed < 1.0, f"indexing {n} samples took {elapsed:.3f} s"
    with av.open(str(path)) as c:
        entries = c.streams.video[0].index_entries
        assert len(entries) == n
        for i in range(0, n, 997):
            e = entries[i]
            assert (e.timestamp, e.pos, e.size, e.is_keyframe) == (
                video.dts[i],
                video.offset[i],
                video.size[i],
                video.sync[i],
            )
