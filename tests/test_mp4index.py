"""render.mp4index against PyAV: every packet of every track must match.

The reference is what ``av.open(path).demux()`` reports (pts, dts, size, pos,
key frame and discard flags, duration) and ``stream.index_entries``.  Media is
generated with PyAV; edit-list and layout variants are made by rewriting the
moov box of generated files, or by re-laying out real samples with a small
MP4 writer, so FFmpeg is always the judge.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import itertools
import os
import struct
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

from render.mp4index import Mp4IndexError, TrackTable, read_sample_tables, read_video_table

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
    }


# --------------------------------------------------------------------------
# the reference: PyAV


def _entries(stream: Any) -> np.ndarray:
    rows = [(e.timestamp, e.pos, e.size, e.is_keyframe, e.is_discard) for e in stream.index_entries]
    return np.array(rows, dtype=np.int64).reshape(-1, 5)


def pyav_packets(path: Path) -> dict[int, np.ndarray]:
    """stream index -> (n, 7) array of dts, pts, size, pos, key, discard, duration."""
    return pyav_reference(path)[0]


def pyav_reference(path: Path) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Packets as pyav_packets(), and every stream's index entries once all are demuxed.

    FFmpeg indexes all fragments of a file while opening it -- unless a sidx
    lets it read them as it goes; after demuxing, the index is complete.
    """
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
        entries = {s.index: _entries(s) for s in c.streams}
    packets = {k: np.array(v, dtype=np.int64).reshape(-1, 7) for k, v in rows.items()}
    return packets, entries


def mine(t: TrackTable) -> np.ndarray:
    cols = (t.dts, t.pts, t.size, t.offset, t.sync, t.discard, t.duration)
    return np.stack([np.asarray(c, dtype=np.int64) for c in cols], axis=1)


def assert_matches_pyav(
    path: Path,
    *,
    h264_keys_parsed: bool = False,
    select: Callable[[int, str], bool] | None = None,
) -> list[TrackTable]:
    """Compare with PyAV's packets and index entries (at open, and after demuxing).

    FFmpeg 8 sets ``packet.is_keyframe`` of H.264 in MP4 from its bitstream
    parser (IDR or recovery point SEI), not from stss; the index entries keep
    the stss flag.  ``h264_keys_parsed`` skips the packet key flag for files
    whose stss deliberately disagrees with the bitstream.  With ``select``
    only the selected tracks are read, and compared with their streams.
    """
    tables = read_sample_tables(path, select=select)
    packets, entries = pyav_reference(path)
    with av.open(str(path)) as c:
        streams = {s.id: s for s in c.streams}
        if select is None:
            assert [s.id for s in c.streams] == [t.track_id for t in tables]
        for t in tables:
            s = streams[t.track_id]
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
            np.testing.assert_array_equal(entries[s.index], got[:, [0, 3, 2, 4, 5]])
            at_open = _entries(s)  # a prefix when FFmpeg reads fragments as it goes
            np.testing.assert_array_equal(at_open, got[: len(at_open), [0, 3, 2, 4, 5]])
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
    """Let ``edit`` change the traks of ``src``'s moov."""
    return rewrite_moov_boxes(src, dst, lambda moov: edit([n for n in moov if n[0] == b"trak"]))


def rewrite_moov_boxes(src: Path, dst: Path, edit: Callable[[list[Node]], None]) -> Path:
    """Let ``edit`` change the list of boxes in ``src``'s moov (add or drop traks)."""
    data = src.read_bytes()
    pos, size = top_level(data)[b"moov"]
    assert pos + size == len(data), "moov must be the last box"
    moov = parse_boxes(data, pos + 8, pos + size)
    edit(moov)
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


def make_source(directory: Path) -> Source:
    """Two GOPs of H.264 with B-frames, the samples the layout tests re-lay out."""
    return Source(encode(directory / "v.mp4", "libx264", X264, frames=60))


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Source:
    return make_source(tmp_path_factory.mktemp("src"))


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
# fragmented files: real samples re-laid out by a minimal fragmented MP4 writer


@dataclass
class FragTrack:
    """One track of a generated regular file, to be written as fragments."""

    track_id: int
    handler: str
    tkhd: bytes
    mdhd: bytes
    hdlr: bytes
    stsd: bytes
    elst: list[tuple[int, int, float]]
    samples: list[bytes]
    durations: np.ndarray
    cts: np.ndarray
    sync: np.ndarray

    @classmethod
    def take(cls, path: Path, index: int) -> FragTrack:
        data = path.read_bytes()
        table = read_sample_tables(path)[index]
        assert table.sample_count == table.stbl_sample_count
        pos, size = top_level(data)[b"moov"]
        trak = [n for n in parse_boxes(data, pos + 8, pos + size) if n[0] == b"trak"][index]
        mdia = child(trak[1], b"mdia")[1]
        order = np.argsort(table.sample_number)
        offsets, sizes = table.offset[order], table.size[order]
        return cls(
            track_id=table.track_id,
            handler=table.handler,
            tkhd=child(trak[1], b"tkhd")[1],
            mdhd=child(mdia, b"mdhd")[1],
            hdlr=child(mdia, b"hdlr")[1],
            stsd=child(stbl_of(trak), b"stsd")[1],
            elst=[(e.segment_duration, e.media_time, e.media_rate) for e in table.edit_list],
            samples=[data[o : o + s] for o, s in zip(offsets, sizes, strict=True)],
            durations=np.asarray(table.duration)[order],
            cts=(table.pts - table.dts - table.dts_shift)[order],
            sync=np.asarray(table.sync)[order],
        )

    @property
    def starts(self) -> np.ndarray:
        """Media time of each sample, from 0."""
        return np.concatenate([[0], np.cumsum(self.durations)[:-1]])

    def seconds(self) -> np.ndarray:
        timescale = struct.unpack_from(">I", self.mdhd, 20 if self.mdhd[0] else 12)[0]
        return self.starts / timescale


NON_SYNC, SYNC = 0x01010000, 0x02000000


@dataclass
class Frag:
    """How write_fragmented lays the samples out; the defaults are what OBS writes."""

    cuts: list[int] | None = None  # first video sample of each fragment; default: key frames
    base: str = "explicit"  # tfhd base: "explicit", "moof" (default-base-is-moof), "implicit"
    tfdt: bool = True
    tfdt_version: int = 1
    trun_version: int = 0  # 1: composition offsets lowered by the first one (negative)
    flags: str = "first"  # "first": first_sample_flags over a non-sync default; "each": per sample
    runs: int = 1  # truns per traf
    defaults: bool = True  # durations and sizes as tfhd defaults where all samples agree
    placeholder: bool = True  # OBS: a 'free' box between ftyp and moov
    edits: bool = True
    cts: bool | None = None  # write composition offsets; default: if any is not 0
    sidx: bool = False  # a (minimal) top-level sidx after the moov
    stsd_id: int | None = None  # sample description index written in every tfhd
    trailer: bytes = b""  # appended after the last fragment, e.g. an mfra box


def _frag_groups(tracks: list[FragTrack], frag: Frag) -> list[list[tuple[int, int]]]:
    """Per fragment, per track: the [start, end) sample range (video cuts, others by time)."""
    video = tracks[0]
    cuts = frag.cuts if frag.cuts is not None else np.flatnonzero(video.sync).tolist()
    bounds = [*cuts, len(video.samples)]
    times = [video.seconds()[c] for c in cuts[1:]]
    groups = []
    for k in range(len(cuts)):
        row = [(bounds[k], bounds[k + 1])]
        for t in tracks[1:]:
            edges = [0, *np.searchsorted(t.seconds(), times).tolist(), len(t.samples)]
            row.append((edges[k], edges[k + 1]))
        groups.append(row)
    return groups


def _trun(t: FragTrack, idx: range, frag: Frag, data_offset: int) -> tuple[int, bytes]:
    """(trun flags, trun body) of samples ``idx``."""
    video = t.handler == "vide"
    durations, sizes = t.durations[idx], np.array([len(t.samples[i]) for i in idx])
    cts = t.cts[idx] - (t.cts[0] if frag.trun_version else 0)
    flags = 0x001
    fields: list[np.ndarray] = []
    if not (frag.defaults and len(set(durations.tolist())) == 1):
        flags |= 0x100
        fields.append(durations)
    if not (frag.defaults and len(set(sizes.tolist())) == 1):
        flags |= 0x200
        fields.append(sizes)
    head = struct.pack(">Ii", len(idx), data_offset)
    if video and frag.flags == "each":
        flags |= 0x400
        fields.append(np.where(t.sync[idx], SYNC, NON_SYNC))
    elif video:
        flags |= 0x004
        head += struct.pack(">I", SYNC if t.sync[idx.start] else NON_SYNC)
    if video and (t.cts.any() if frag.cts is None else frag.cts):
        flags |= 0x800
        fields.append(cts)
    rows = np.stack(fields, axis=1) if fields else np.zeros((len(idx), 0))
    dtype = ">u4" if frag.trun_version == 0 else ">i4"
    return flags, head + rows.astype(">i8").astype(dtype).tobytes()


def _traf(t: FragTrack, a: int, b: int, frag: Frag, moof_start: int, base: int, data: int) -> bytes:
    """traf of samples [a, b) of ``t`` whose data starts at file offset ``data``."""
    flags = 0x000020
    body = struct.pack(">I", t.track_id)
    if frag.base == "explicit":
        flags |= 0x000001
        body += struct.pack(">Q", moof_start)
    elif frag.base == "moof":
        flags |= 0x020000
    if frag.stsd_id is not None:
        flags |= 0x000002
        body += struct.pack(">I", frag.stsd_id)
    durations = t.durations[a:b]
    sizes = np.array([len(s) for s in t.samples[a:b]])
    if frag.defaults and len(set(durations.tolist())) == 1:
        flags |= 0x000008
        body += struct.pack(">I", int(durations[0]))
    if frag.defaults and len(set(sizes.tolist())) == 1:
        flags |= 0x000010
        body += struct.pack(">I", int(sizes[0]))
    body += struct.pack(">I", NON_SYNC if t.handler == "vide" else SYNC)
    parts = [full_box(b"tfhd", 0, body, flags)]
    if frag.tfdt:
        start = int(t.starts[a])
        fmt = ">Q" if frag.tfdt_version else ">I"
        parts.append(full_box(b"tfdt", frag.tfdt_version, struct.pack(fmt, start)))
    edges = np.linspace(a, b, min(frag.runs, b - a) + 1).astype(int)
    for lo, hi in itertools.pairwise(edges.tolist()):
        at = data + sum(len(s) for s in t.samples[a:lo])
        run_flags, run = _trun(t, range(lo, hi), frag, at - base)
        parts.append(full_box(b"trun", frag.trun_version, run, run_flags))
    return box(b"traf", b"".join(parts))


def _moof(
    tracks: list[FragTrack], row: list[tuple[int, int]], frag: Frag, start: int, seq: int
) -> bytes:
    def build(size: int) -> bytes:
        data = start + size + 8  # after the mdat header
        implicit = start
        trafs = []
        for t, (a, b) in zip(tracks, row, strict=True):
            if a == b:
                continue
            base = start if frag.base != "implicit" else implicit
            trafs.append(_traf(t, a, b, frag, start, base, data))
            data += sum(len(s) for s in t.samples[a:b])
            implicit = data
        return box(b"moof", full_box(b"mfhd", 0, struct.pack(">I", seq)) + b"".join(trafs))

    return build(len(build(0)))


def _trak_box(t: FragTrack, stbl: list[bytes], edits: bool) -> bytes:
    """trak of ``t`` with sample table boxes ``stbl`` (after its stsd)."""
    video = t.handler == "vide"
    head = full_box(b"vmhd", 0, bytes(8), 1) if video else full_box(b"smhd", 0, bytes(4))
    dref = full_box(b"dref", 0, struct.pack(">I", 1) + full_box(b"url ", 0, b"", flags=1))
    stbl_box = box(b"stbl", box(b"stsd", t.stsd) + b"".join(stbl))
    minf = box(b"minf", head + box(b"dinf", dref) + stbl_box)
    mdia = box(b"mdia", box(b"mdhd", t.mdhd) + box(b"hdlr", t.hdlr) + minf)
    edts = box(b"edts", box(b"elst", elst_body(t.elst))) if t.elst and edits else b""
    return box(b"trak", box(b"tkhd", t.tkhd) + edts + mdia)


def _init_moov(mvhd: bytes, tracks: list[FragTrack], frag: Frag) -> bytes:
    """A fragmented file's moov: sample descriptions, empty tables, trex defaults."""
    empty = [
        table_box(b"stts", []),
        table_box(b"stsc", []),
        full_box(b"stsz", 0, bytes(8)),
        table_box(b"stco", []),
    ]
    traks = b"".join(_trak_box(t, empty, frag.edits) for t in tracks)
    trex = b"".join(
        full_box(b"trex", 0, struct.pack(">5I", t.track_id, 1, 0, 0, 0)) for t in tracks
    )
    return box(b"moov", box(b"mvhd", mvhd) + traks + box(b"mvex", trex))


def write_fragmented(
    dst: Path, src: Path, frag: Frag | None = None, tracks: list[FragTrack] | None = None
) -> Path:
    """The tracks of ``src`` (video first) as a fragmented MP4, laid out as ``frag`` says."""
    frag = frag or Frag()
    if tracks is None:
        with av.open(str(src)) as c:
            tracks = [FragTrack.take(src, i) for i in range(len(c.streams))]
    data = src.read_bytes()
    pos, size = top_level(data)[b"moov"]
    mvhd = child(parse_boxes(data, pos + 8, pos + size), b"mvhd")[1]
    out = bytearray(box(b"ftyp", b"iso6" + bytes(4) + b"iso6mp41"))
    if frag.placeholder:
        out += box(b"free", bytes(8))
    out += _init_moov(mvhd, tracks, frag)
    if frag.sidx:
        out += full_box(b"sidx", 0, struct.pack(">IIIIHHIII", 1, 30000, 0, 0, 0, 1, 0, 0, 0))
    for seq, row in enumerate(_frag_groups(tracks, frag), start=1):
        out += _moof(tracks, row, frag, len(out), seq)
        payload = b"".join(b"".join(t.samples[a:b]) for t, (a, b) in zip(tracks, row, strict=True))
        out += box(b"mdat", payload)
    dst.write_bytes(bytes(out) + frag.trailer)
    return dst


def finalize_like_obs(fragmented: Path, dst: Path, tracks: list[FragTrack]) -> Path:
    """What OBS does when a hybrid MP4 recording stops: the same file made regular.

    A full moov goes after the last fragment, and the 16-byte 'free'
    placeholder after ftyp becomes the header of one mdat spanning the
    initial moov and every moof/mdat pair, which no reader then looks into.
    """
    original = fragmented.read_bytes()
    pos, size = top_level(original)[b"moov"]
    mvhd = child(parse_boxes(original, pos + 8, pos + size), b"mvhd")[1]
    data = bytearray(original)
    placeholder = struct.unpack_from(">I", data)[0]  # right after ftyp
    assert data[placeholder + 4 : placeholder + 8] == b"free"
    struct.pack_into(">I4s", data, placeholder, len(data) - placeholder, b"mdat")
    traks = []
    for t, table in zip(tracks, read_sample_tables(fragmented), strict=True):
        sizes = np.array([len(x) for x in t.samples])
        parts = [
            table_box(b"stts", runs_of(t.durations)),
            table_box(b"stsc", [(1, 1, 1)]),
            full_box(b"stsz", 0, struct.pack(">II", 0, len(sizes)) + sizes.astype(">u4").tobytes()),
            table_box(b"stco", np.asarray(table.offset).reshape(-1, 1)),
        ]
        if t.handler == "vide":
            parts.append(table_box(b"ctts", runs_of(t.cts), ">i4"))
            parts.append(table_box(b"stss", (np.flatnonzero(t.sync) + 1).reshape(-1, 1)))
        traks.append(_trak_box(t, parts, edits=True))
    dst.write_bytes(bytes(data) + box(b"moov", box(b"mvhd", mvhd) + b"".join(traks)))
    return dst


# FFmpeg's own fragmenting muxer: (codec, encoder options, container options, audio)
FFMPEG_FRAGMENTED: dict[str, tuple[str, dict[str, str], dict[str, str], bool]] = {
    "empty_moov": (
        "libx264",
        X264,
        {"movflags": "frag_keyframe+empty_moov+default_base_moof"},
        True,
    ),
    "delay_moov": (
        "libx264",
        X264,
        {"movflags": "frag_keyframe+delay_moov+default_base_moof"},
        True,
    ),
    "every_frame": ("libx264", X264, {"movflags": "frag_every_frame"}, True),
    "duration": (
        "libx264",
        X264,
        {"movflags": "empty_moov+default_base_moof", "frag_duration": "500000"},
        True,
    ),
    "first_in_moov": ("libx264", X264, {"movflags": "frag_keyframe"}, True),
    "no_bframes": (
        "libx264",
        {"bf": "0", "g": "30"},
        {"movflags": "frag_keyframe+empty_moov+default_base_moof"},
        True,
    ),
    "negative_cts": (
        "libx264",
        X264,
        {"movflags": "frag_keyframe+empty_moov+negative_cts_offsets"},
        True,
    ),
    "cmaf": ("libx264", X264, {"movflags": "cmaf+frag_keyframe+empty_moov"}, True),
    "dash_sidx": (
        "libx264",
        X264,
        {"movflags": "frag_keyframe+empty_moov+default_base_moof+dash"},
        True,
    ),
    "global_sidx": ("libx264", X264, {"movflags": "frag_keyframe+empty_moov+global_sidx"}, True),
    "hevc": (
        "libx265",
        X265_OPEN,
        {"movflags": "frag_keyframe+empty_moov+default_base_moof"},
        False,
    ),
    "hevc_every_frame": ("libx265", X265_OPEN, {"movflags": "frag_every_frame"}, False),
}


@pytest.mark.parametrize("name", sorted(FFMPEG_FRAGMENTED))
def test_ffmpeg_fragmented_matches_pyav(tmp_path: Path, name: str) -> None:
    codec, options, container, audio = FFMPEG_FRAGMENTED[name]
    path = encode(
        tmp_path / f"{name}.mp4", codec, options, audio=audio, container_options=container
    )
    # With a global sidx FFmpeg reads fragments as it goes, and its H.264
    # parser then misses the key frames of the first ones; the index has them.
    tables = assert_matches_pyav(path, h264_keys_parsed=name == "global_sidx")
    video = tables[0]
    assert video.handler == "vide" and video.sample_count == 90
    assert video.fragment_sample_count > 0 and video.stbl_sample_count == 90
    assert np.array_equal(video.sample_number, np.arange(90))
    assert video.sync[0] and video.sync.sum() >= 3


def test_ffmpeg_fragment_details(tmp_path: Path) -> None:
    def make(name: str) -> Path:
        codec, options, container, audio = FFMPEG_FRAGMENTED[name]
        return encode(
            tmp_path / f"{name}.mp4", codec, options, audio=audio, container_options=container
        )

    # the first fragment goes into the moov's own tables, the rest into moofs
    video, audio = read_sample_tables(make("first_in_moov"))
    assert video.fragment_sample_count == 60 and audio.fragment_sample_count < 142
    # every frame its own fragment: audio fragments overlap; FFmpeg flags the
    # samples that start no later than the previous run's last one
    video, audio = read_sample_tables(make("every_frame"))
    assert audio.discard.any()
    for i in np.flatnonzero(audio.discard):
        assert audio.dts[i] <= audio.dts[i - 1]
    # ... and writes audio samples without duration: FFmpeg takes the distance
    # to the next sample or, where there is none, the AAC frame size
    assert set(audio.duration[1:].tolist()) == {1024}
    (video,) = read_sample_tables(make("hevc"))
    assert video.sample_entries[0].config_type == "hvcC" and video.sync.sum() >= 3
    video, _ = read_sample_tables(make("negative_cts"))
    assert video.dts_shift == 1001 and int(video.pts.min()) == 1001


# OBS (unfinalised hybrid MP4) and other writers, emulated on real samples
FRAG_LAYOUTS: dict[str, Frag] = {
    "obs": Frag(),
    "base_is_moof": Frag(base="moof", placeholder=False),
    "implicit_base": Frag(base="implicit"),
    "per_sample_flags": Frag(flags="each", defaults=False),
    "three_runs_per_traf": Frag(runs=3),
    "no_tfdt": Frag(tfdt=False),
    "tfdt_v0": Frag(tfdt_version=0),
    "trun_v1_negative_cts": Frag(trun_version=1),
    "uneven_fragments": Frag(cuts=[0, 10, 30, 31, 60, 75]),
    "no_edit_lists": Frag(edits=False),
    "mfra_trailer": Frag(trailer=box(b"mfra", full_box(b"mfro", 0, struct.pack(">I", 24)))),
}


@pytest.mark.parametrize("name", sorted(FRAG_LAYOUTS))
def test_fragment_layouts_match_pyav(media: dict[str, Path], tmp_path: Path, name: str) -> None:
    path = write_fragmented(tmp_path / f"{name}.mp4", media["h264_aac"], FRAG_LAYOUTS[name])
    video, audio = assert_matches_pyav(path)
    assert video.fragment_sample_count == video.sample_count == 90
    assert audio.fragment_sample_count == audio.sample_count == 142


def test_obs_hybrid_mp4_before_and_after_finalisation(
    media: dict[str, Path], tmp_path: Path
) -> None:
    tracks = [FragTrack.take(media["h264_aac"], i) for i in range(2)]
    live = write_fragmented(tmp_path / "live.mp4", media["h264_aac"], Frag(), tracks)
    video, audio = assert_matches_pyav(live)  # a crash leaves this: fragments
    final = finalize_like_obs(live, tmp_path / "final.mp4", tracks)
    top = top_level(final.read_bytes())
    assert b"moof" not in top and len(top) == 3  # ftyp, mdat, moov
    final_video, final_audio = assert_matches_pyav(final)
    # same samples, same bytes; only the edit list is now applied in full
    for a, b in ((video, final_video), (audio, final_audio)):
        assert np.array_equal(a.offset, b.offset) and np.array_equal(a.pts, b.pts)
        assert b.fragment_sample_count == 0
    assert final_audio.discard[0] and not audio.discard[0]


def test_obs_pcm_fragments_are_indexed_per_frame(tmp_path: Path) -> None:
    """OBS writes PCM as one-frame samples with tfhd defaults; FFmpeg indexes each."""
    src = encode_pcm(tmp_path / "pcm.mp4", "pcm_s16le", frames=10)
    data = src.read_bytes()
    chunked = read_sample_tables(src)[1]
    frames = []
    for offset, size in zip(chunked.offset, chunked.size, strict=True):
        frames += [data[i : i + 4] for i in range(offset, offset + size, 4)]
    pos, size = top_level(data)[b"moov"]
    trak = [n for n in parse_boxes(data, pos + 8, pos + size) if n[0] == b"trak"][1]
    mdia = child(trak[1], b"mdia")[1]
    n = len(frames)
    audio = FragTrack(
        track_id=2,
        handler="soun",
        tkhd=child(trak[1], b"tkhd")[1],
        mdhd=child(mdia, b"mdhd")[1],
        hdlr=child(mdia, b"hdlr")[1],
        stsd=child(stbl_of(trak), b"stsd")[1],
        elst=[],
        samples=frames,
        durations=np.ones(n, dtype=np.int64),
        cts=np.zeros(n, dtype=np.int64),
        sync=np.ones(n, dtype=np.bool_),
    )
    tracks = [FragTrack.take(src, 0), audio]
    path = write_fragmented(tmp_path / "f.mp4", src, Frag(), tracks)
    _, table = assert_matches_pyav(path)
    assert table.sample_count == n == 10 * 1920 and not table.pcm_chunked


def test_fragments_apply_only_the_edit_start(media: dict[str, Path], tmp_path: Path) -> None:
    """No mov_fix_index() for fragments: the edit list only shifts by its start."""
    path = write_fragmented(tmp_path / "f.mp4", media["h264_aac"])
    video, audio = read_sample_tables(path)
    assert video.dts[0] == -2002 and video.pts[0] == 0  # as in a regular file...
    assert audio.dts[0] == -1024 and not audio.discard.any()  # ...but priming is not flagged
    v, a = (FragTrack.take(media["h264_aac"], i) for i in range(2))
    # edit lists a regular file could not have indexed; only the first edits count:
    # first video dts = duration of a first empty edit - media_time of the edit after it
    edits: dict[str, tuple[list[tuple[int, int, float]], int]] = {
        "several_edits": ([(1000, 2002, 1), (1000, 40040, 1)], -2002),
        "rate_2": ([(3003, 2002, 2)], -2002),
        "empty_edit_first": ([(500, -1, 1), (3003, 2002, 1)], 15000 - 2002),
        "two_empty_edits": ([(100, -1, 1), (33, -1, 1), (3003, 2002, 1)], 3000),
        "zero_duration": ([(0, 2002, 1)], -2002),
    }
    for name, (elst, first_dts) in edits.items():
        tracks = [dataclasses.replace(v, elst=elst), a]
        path = write_fragmented(tmp_path / f"{name}.mp4", media["h264_aac"], tracks=tracks)
        video, _ = assert_matches_pyav(path)
        assert video.dts[0] == first_dts, name


def test_fragment_samples_without_duration(media: dict[str, Path], tmp_path: Path) -> None:
    v, a = (FragTrack.take(media["h264_aac"], i) for i in range(2))
    durations = a.durations.copy()
    durations[[3, 50, 141]] = 0
    tracks = [v, dataclasses.replace(a, durations=durations)]
    path = write_fragmented(tmp_path / "z.mp4", media["h264_aac"], Frag(defaults=False), tracks)
    _, audio = assert_matches_pyav(path)
    # inside a run the next sample starts at once: the AAC frame size it is;
    # the last one lasts to the stream (mdhd) duration, measured from its dts
    # as shifted by the edit list (FFmpeg compares the two as they are)
    assert audio.duration[3] == audio.duration[50] == 1024
    assert audio.duration[141] == 145408 - audio.dts[141]


def test_fragment_refusals(media: dict[str, Path], tmp_path: Path) -> None:
    good = write_fragmented(tmp_path / "good.mp4", media["h264_aac"])
    data = good.read_bytes()
    first_moof = data.index(b"moof") - 4
    last_moof = data.rindex(b"moof") - 4

    def refused(name: str, content: bytes, match: str) -> None:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(Mp4IndexError, match=match) as info:
            read_sample_tables(path)
        assert name in str(info.value)

    refused("cut_mdat.mp4", data[:-5000], "past the end of the file .*in the movie fragment")
    refused("cut_moof.mp4", data[: last_moof + 40], "last movie fragment is cut short")
    refused("head.mp4", data[:first_moof], "recording stopped before its first fragment")

    moov_at, moov_size = top_level(data)[b"moov"]
    moov = data[moov_at : moov_at + moov_size]
    hole = box(b"free", bytes(moov_size - 8))  # keeps every offset
    refused(
        "moov_last.mp4",
        data[:moov_at] + hole + data[moov_at + moov_size :] + moov,
        "before the moov",
    )
    nodes = parse_boxes(moov, 8, len(moov))
    no_mvex = box(b"moov", [n for n in nodes if n[0] != b"mvex"])
    padding = box(b"free", bytes(moov_size - len(no_mvex) - 8))
    rest = data[moov_at + moov_size :]
    refused("no_mvex.mp4", data[:moov_at] + no_mvex + padding + rest, "no 'mvex/trex'")

    def retag(content: bytes, fourcc: bytes, at: int, old: int, new: int) -> bytes:
        """Change the u32 at payload offset ``at`` of every ``fourcc`` box holding ``old``."""
        out = bytearray(content)
        i = out.find(fourcc, first_moof)
        while i >= 0:
            if struct.unpack_from(">I", out, i + 4 + at)[0] == old:
                struct.pack_into(">I", out, i + 4 + at, new)
            i = out.find(fourcc, i + 1)
        return bytes(out)

    # audio trafs naming a track without trex: FFmpeg adds them to the video
    refused("no_trex.mp4", retag(data, b"tfhd", 4, 2, 7), "FFmpeg would add its samples to track 1")

    v, a = (FragTrack.take(media["h264_aac"], i) for i in range(2))
    empty_sample = dataclasses.replace(
        v, samples=[b"" if i == 40 else s for i, s in enumerate(v.samples)]
    )
    path = write_fragmented(tmp_path / "size0.mp4", media["h264_aac"], Frag(), [empty_sample, a])
    with pytest.raises(Mp4IndexError, match="sample of size 0"):
        read_sample_tables(path)
    path = write_fragmented(tmp_path / "stsd.mp4", media["h264_aac"], Frag(stsd_id=2))
    with pytest.raises(Mp4IndexError, match="sample description 2, the track has 1"):
        read_sample_tables(path)
    # with a sidx FFmpeg reads fragments as it goes: what then depends on the
    # order it reads them in is refused
    path = write_fragmented(tmp_path / "sidx.mp4", media["h264_aac"], Frag(tfdt=False, sidx=True))
    with pytest.raises(Mp4IndexError, match="without tfdt in a file with 'sidx'"):
        read_sample_tables(path)
    cts = v.cts.copy()
    cts[70] -= 9009  # a later fragment lowers the smallest composition offset
    tracks = [dataclasses.replace(v, cts=cts), a]
    path = write_fragmented(
        tmp_path / "grow.mp4", media["h264_aac"], Frag(sidx=True, trun_version=1), tracks
    )
    with pytest.raises(Mp4IndexError, match="grow from fragment to fragment"):
        read_sample_tables(path)
    assert read_sample_tables(path, select=lambda tid, handler: tid == 2)[0].sample_count == 142


# --------------------------------------------------------------------------
# reading only some tracks


def _with_trak(
    src: Path, dst: Path, make: Callable[[list[Node]], Node], first: bool = False
) -> Path:
    """``src`` with one more trak, built by ``make`` from the moov's boxes."""

    def edit(moov: list[Node]) -> None:
        at = next(i for i, n in enumerate(moov) if n[0] == b"trak")
        traks = [i for i, n in enumerate(moov) if n[0] == b"trak"]
        moov.insert(at if first else traks[-1] + 1, make(moov))

    return rewrite_moov_boxes(src, dst, edit)


def _copy_trak(moov: list[Node], index: int, track_id: int, handler: bytes | None = None) -> Node:
    trak: Node = copy.deepcopy([n for n in moov if n[0] == b"trak"][index])
    tkhd = child(trak[1], b"tkhd")
    at = 20 if tkhd[1][0] == 1 else 12
    tkhd[1] = tkhd[1][:at] + struct.pack(">I", track_id) + tkhd[1][at + 4 :]
    if handler is not None:
        hdlr = child(child(trak[1], b"mdia")[1], b"hdlr")
        hdlr[1] = hdlr[1][:8] + handler + hdlr[1][12:]
    return trak


def _timecode_with_broken_tables(moov: list[Node]) -> Node:
    trak = _copy_trak(moov, 1, 3, b"tmcd")
    stsz = child(stbl_of(trak), b"stsz")
    stsz[1] = stsz[1][:-40]  # sample sizes of the last ten samples are missing
    return trak


IRREGULAR_TRACKS: dict[str, tuple[Callable[[Path, Path], Path], str]] = {
    # phone slow motion: the audio edit plays at another rate
    "audio_rate": (
        lambda s, d: rewrite_moov(s, d, lambda t: set_elst(t[1], [(2900, 1024, 0.25)])),
        "media_rate",
    ),
    "audio_several_edits": (
        lambda s, d: rewrite_moov(
            s, d, lambda t: set_elst(t[1], [(1000, 1024, 1), (500, -1, 1), (1000, 48000, 1)])
        ),
        "non-empty edits",
    ),
    "timecode_track": (lambda s, d: _with_trak(s, d, _timecode_with_broken_tables), "stsz"),
    "track_without_media": (
        lambda s, d: _with_trak(
            s, d, lambda m: [b"trak", [child(_copy_trak(m, 1, 4)[1], b"tkhd")]]
        ),
        "trak #3: 'trak' has no 'mdia' box",
    ),
}


@pytest.mark.parametrize("name", sorted(IRREGULAR_TRACKS))
def test_irregular_track_only_matters_when_selected(
    media: dict[str, Path], tmp_path: Path, name: str
) -> None:
    make, message = IRREGULAR_TRACKS[name]
    path = make(media["h264_aac"], tmp_path / f"{name}.mp4")
    with pytest.raises(Mp4IndexError, match=message):
        read_sample_tables(path)
    (video,) = assert_matches_pyav(path, select=lambda tid, handler: handler == "vide")
    assert video.track_id == 1 and video.sample_count == 90
    plain = read_video_table(media["h264_aac"])
    got = read_video_table(path)
    for column in ("dts", "pts", "size", "offset", "sync", "discard", "duration"):
        assert np.array_equal(getattr(got, column), getattr(plain, column)), column
    if name == "timecode_track":  # the regular audio track is still fine
        (audio,) = assert_matches_pyav(path, select=lambda tid, handler: tid == 2)
        assert audio.handler == "soun"


def test_select_sees_every_trak_in_order(media: dict[str, Path], tmp_path: Path) -> None:
    path = _with_trak(media["h264_aac"], tmp_path / "t.mp4", _timecode_with_broken_tables)
    seen: list[tuple[int, str]] = []

    def nothing(track_id: int, handler: str) -> bool:
        seen.append((track_id, handler))
        return False

    assert read_sample_tables(path, select=nothing) == []
    assert seen == [(1, "vide"), (2, "soun"), (3, "tmcd")]


def test_track_without_samples_switches_ffmpeg_edit_lists_off(
    media: dict[str, Path], tmp_path: Path
) -> None:
    """FFmpeg stops applying edit lists in full at the first trak with no samples."""

    def empty_track(moov: list[Node]) -> Node:
        trak = _copy_trak(moov, 1, 3)
        stbl = stbl_of(trak)
        for typ in (b"stts", b"stsc", b"stco"):
            child(stbl, typ)[1] = table_box(typ, [])[8:]
        child(stbl, b"stsz")[1] = full_box(b"stsz", 0, bytes(8))[8:]
        return trak

    last = _with_trak(media["h264_aac"], tmp_path / "last.mp4", empty_track)
    _, audio, empty = assert_matches_pyav(last)
    assert audio.discard[0] and empty.sample_count == 0  # edit lists as usual
    first = _with_trak(media["h264_aac"], tmp_path / "first.mp4", empty_track, first=True)
    empty, video, audio = assert_matches_pyav(first)
    assert not audio.discard.any() and audio.dts[0] == -1024  # only shifted
    selected = read_sample_tables(first, select=lambda tid, handler: handler == "vide")
    assert np.array_equal(selected[0].pts, video.pts)


def test_read_video_table(media: dict[str, Path], tmp_path: Path) -> None:
    video = read_video_table(media["h264_aac"])
    assert video.handler == "vide" and video.track_id == 1
    assert read_video_table(media["h264_aac"], track_id=1).sample_count == 90
    with pytest.raises(Mp4IndexError, match="track 2 is a 'soun' track, not video"):
        read_video_table(media["h264_aac"], track_id=2)
    with pytest.raises(Mp4IndexError, match=r"no track 9 \(tracks: 1 'vide', 2 'soun'\)"):
        read_video_table(media["h264_aac"], track_id=9)

    def drop_video(moov: list[Node]) -> None:
        moov.remove(next(n for n in moov if n[0] == b"trak"))

    audio_only = rewrite_moov_boxes(media["h264_aac"], tmp_path / "a.mp4", drop_video)
    with pytest.raises(Mp4IndexError, match=r"a.mp4: no video track \(tracks: 2 'soun'\)"):
        read_video_table(audio_only)


def test_fragments_of_unselected_tracks_are_not_parsed(
    media: dict[str, Path], tmp_path: Path
) -> None:
    good = write_fragmented(tmp_path / "good.mp4", media["h264_aac"])
    data = bytearray(good.read_bytes())
    # every audio trun claims far more samples than it holds
    at = data.find(b"tfhd")
    while at >= 0:
        if struct.unpack_from(">I", data, at + 8)[0] == 2:
            trun = data.index(b"trun", at)
            struct.pack_into(">I", data, trun + 8, 1 << 20)
        at = data.find(b"tfhd", at + 1)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(bytes(data))
    with pytest.raises(Mp4IndexError, match="track 2: 'trun' box is truncated"):
        read_sample_tables(broken)
    got, want = read_video_table(broken), read_video_table(good)
    assert np.array_equal(got.offset, want.offset) and np.array_equal(got.pts, want.pts)
    # ... only as far as a selected track's data offset depends on them
    implicit = write_fragmented(tmp_path / "implicit.mp4", media["h264_aac"], Frag(base="implicit"))
    (audio,) = assert_matches_pyav(implicit, select=lambda tid, handler: handler == "soun")
    assert audio.sample_count == 142
    data = bytearray(implicit.read_bytes())
    at = data.find(b"trun")  # the video's, which the audio's implicit offset follows
    struct.pack_into(">I", data, at + 8, 1 << 20)
    implicit.write_bytes(bytes(data))
    with pytest.raises(Mp4IndexError, match="follows a run of another track that cannot be read"):
        read_sample_tables(implicit, select=lambda tid, handler: handler == "soun")


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


#: An hour at 30 fps.  Speed is measured in tests/bench/test_bench_index.py, which
#: indexes the same files; the tests here only check the results.
HOUR_SAMPLES = 108_000
HOUR_FRAGMENTS = 3600


def write_hour_mp4(dst: Path, source: Source) -> Path:
    """HOUR_SAMPLES samples, one sample per chunk, as cameras interleave.

    Sample i is the source's sample i % len(source.samples); each is stored once, to keep
    the file small.
    """
    n = HOUR_SAMPLES
    gop = len(source.samples)
    refs = np.arange(n) % gop
    stss = np.flatnonzero(np.isin(refs, source.stss - 1)) + 1
    whole = [(n * 1001 // 30, source.elst[0][1], 1.0)]  # ms: the source's movie timescale
    return write_mp4(dst, source, Layout(refs=refs, stss=stss, elst=whole))


def assert_index_entries_match(path: Path, table: TrackTable, n: int, step: int = 997) -> None:
    """PyAV's video index entries: ``n`` of them, every ``step``-th equal to ``table``'s."""
    with av.open(str(path)) as c:
        entries = c.streams.video[0].index_entries
        assert len(entries) == n
        for i in range(0, n, step):
            e = entries[i]
            assert (e.timestamp, e.pos, e.size, e.is_keyframe) == (
                table.dts[i],
                table.offset[i],
                table.size[i],
                table.sync[i],
            )


def test_one_hour_index(source: Source, tmp_path: Path) -> None:
    """HOUR_SAMPLES samples (an hour at 30 fps), one sample per chunk."""
    path = write_hour_mp4(tmp_path / "hour.mp4", source)
    (video,) = read_sample_tables(path)
    assert video.sample_count == HOUR_SAMPLES
    assert_index_entries_match(path, video, HOUR_SAMPLES)


def test_fragmented_reads_only_box_headers_moov_and_moofs(
    media: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_fragmented(tmp_path / "f.mp4", media["h264_aac"], Frag(cuts=[0, 10, 30, 50, 60]))
    data = path.read_bytes()
    boxes, moov_and_moofs, pos = 0, 0, 0
    while pos < len(data):
        size, typ = struct.unpack_from(">I4s", data, pos)
        boxes += 1
        moov_and_moofs += size - 8 if typ in (b"moov", b"moof") else 0
        pos += size
    monkeypatch.setattr(Path, "open", lambda self, mode="r": _CountingFile(self, mode[0]))
    _CountingFile.read_bytes = 0
    read_sample_tables(path)
    assert _CountingFile.read_bytes <= moov_and_moofs + 16 * boxes
    assert _CountingFile.read_bytes < len(data) // 10


def write_hour_fragmented(dst: Path, source: Source) -> Path:
    """HOUR_SAMPLES samples in HOUR_FRAGMENTS one-second fragments, as OBS writes.

    Every fragment refers to the same GOP, stored once, to keep the file small.
    """
    gop, fragments = HOUR_SAMPLES // HOUR_FRAGMENTS, HOUR_FRAGMENTS
    video = FragTrack(
        track_id=1,
        handler="vide",
        tkhd=source.tkhd,
        mdhd=source.mdhd,
        hdlr=source.hdlr,
        stsd=source.stsd,
        elst=source.elst,
        samples=source.samples[:gop],
        durations=np.full(gop, 1001),
        cts=source.ctts[:gop],
        sync=np.arange(gop) == 0,
    )
    head = box(b"ftyp", b"iso6" + bytes(4) + b"iso6mp41") + _init_moov(source.mvhd, [video], Frag())
    gop_data = len(head) + 8  # after the mdat header
    out = bytearray(head + box(b"mdat", b"".join(video.samples)))
    run_flags, run = _trun(video, range(gop), Frag(), 0)
    trun = full_box(b"trun", 0, run, run_flags)
    tfhd = full_box(b"tfhd", 0, struct.pack(">IQII", 1, gop_data, 1001, NON_SYNC), 0x29)
    for k in range(fragments):
        tfdt = full_box(b"tfdt", 1, struct.pack(">Q", k * gop * 1001))
        mfhd = full_box(b"mfhd", 0, struct.pack(">I", k + 1))
        out += box(b"moof", mfhd + box(b"traf", tfhd + tfdt + trun))
    dst.write_bytes(bytes(out))
    return dst


def test_one_hour_fragmented_index(source: Source, tmp_path: Path) -> None:
    """An hour at 30 fps in one-second fragments (3600 moofs, 108k samples), as OBS writes."""
    path = write_hour_fragmented(tmp_path / "hour.mp4", source)
    (table,) = read_sample_tables(path)
    n = HOUR_SAMPLES
    assert table.sample_count == table.fragment_sample_count == n
    assert table.dts[-1] == (n - 1) * 1001 - source.elst[0][1]
    assert_index_entries_match(path, table, n)
