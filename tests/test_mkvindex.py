"""render.mkvindex against PyAV: every packet of every track must match.

The reference is what ``av.open(path).demux()`` reports: pts, dts, duration,
key frame flag, and the payload bytes, compared with the bytes at each
sample's (offset, size) in the file.  Files come from PyAV's matroska/webm
muxer (encoders, muxer options, a non-seekable output).  What FFmpeg's muxer
never writes -- lacing, BlockGroups, unknown-size clusters, CRC-32 and Void
elements, header stripping, other TimestampScales -- is written by the small
Matroska writer below from the packets of a PyAV-made file, so FFmpeg is the
judge either way.
"""

from __future__ import annotations

import io
import itertools
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

import av
import numpy as np
import pytest
from av.audio.stream import AudioStream
from av.video.stream import VideoStream

from render.mkvindex import MkvIndexError, read_mkv_tables
from render.mp4index import TrackTable
from tests.mediagen import CameraSpec, make_camera

FPS = Fraction(30000, 1001)
W, H = 160, 90


# --------------------------------------------------------------------------
# media generation with PyAV


def _audio_frame(rng: np.random.Generator, codec: str, pts: int, *, silent: bool) -> av.AudioFrame:
    samples = np.zeros((1, 1024), np.float32) if silent else (
        rng.standard_normal((1, 1024)).astype(np.float32) * 0.1
    )
    if codec.startswith("pcm"):
        frame = av.AudioFrame.from_ndarray((samples * 32767).astype(np.int16), format="s16",
                                           layout="mono")
    else:
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = 48000, pts, Fraction(1, 48000)
    return frame


def encode(
    output: Path | io.RawIOBase,
    codec: str,
    options: dict[str, str],
    *,
    frames: int = 60,
    audio: tuple[str, ...] = (),
    vfr: bool = False,
    fmt: str = "matroska",
    container_options: dict[str, str] | None = None,
    size: tuple[int, int] = (W, H),
    noise: int = 40,
) -> None:
    """Encode ``frames`` video frames (plus audio tracks) into a Matroska/WebM file."""
    rng = np.random.default_rng(1)
    width, height = size
    target: Any = str(output) if isinstance(output, Path) else output
    with av.open(target, "w", format=fmt, options=container_options or {}) as out:
        vs = out.add_stream(codec, rate=FPS, options=options)
        assert isinstance(vs, VideoStream)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        tb = Fraction(1, 90000) if vfr else 1 / FPS
        vs.codec_context.time_base = tb
        streams = []
        for name in audio:
            st = out.add_stream(name, rate=48000)
            assert isinstance(st, AudioStream)
            st.layout = "mono"
            streams.append(st)
        t = 0
        audio_pts = 0
        for i in range(frames):
            img = rng.integers(0, noise + 1, (height, width, 3), dtype=np.uint8)
            img[:, :, 0] += np.uint8((i * 7) % 200)
            img[(i * 3) % height :, : (i * 5) % width, 1] = 200
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = t, tb
            t += int(rng.choice([3003, 1500, 4500, 3000, 6006])) if vfr else 1
            out.mux(vs.encode(frame))
            while streams and audio_pts < (i + 1) * 48000 / FPS:
                for st in streams:
                    chunk = _audio_frame(rng, st.codec_context.name, audio_pts, silent=noise == 0)
                    out.mux(st.encode(chunk))
                audio_pts += 1024
        out.mux(vs.encode(None))
        for st in streams:
            out.mux(st.encode(None))


class _NonSeekable(io.RawIOBase):
    """A pipe-like output: the muxer cannot go back to patch sizes."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, b: Any) -> int:
        self.data += bytes(b)
        return len(b)


# b-adapt=0: x264 would otherwise decide that noise content needs no B-frames
X264 = {"preset": "veryfast", "bf": "2", "g": "30",
        "x264-params": "b-pyramid=normal:b-adapt=0:scenecut=0"}
X264_OPEN = {"preset": "veryfast", "bf": "2",
             "x264-params": "open-gop=1:keyint=30:min-keyint=30:b-adapt=0:scenecut=0"}
X265_OPEN = {"preset": "ultrafast", "bf": "3",
             "x265-params": "open-gop=1:keyint=30:min-keyint=30:no-scenecut=1:log-level=error"}
X265_NOB = {"preset": "ultrafast", "bf": "0", "x265-params": "keyint=30:log-level=error"}

_MEDIA: dict[str, tuple[Callable[[Path], None], str]] = {
    "h264_aac": (lambda p: encode(p, "libx264", X264, audio=("aac",)), "mkv"),
    "h264_no_bframes_pcm": (
        lambda p: encode(p, "libx264", {"bf": "0", "g": "15"}, audio=("pcm_s16le",)), "mkv"),
    "h264_one_bframe": (
        lambda p: encode(p, "libx264", {"bf": "1", "x264-params": "b-pyramid=none:b-adapt=0"}),
        "mkv"),
    "h264_open_gop": (lambda p: encode(p, "libx264", X264_OPEN, audio=("aac",)), "mkv"),
    "h264_all_intra": (lambda p: encode(p, "libx264", {"g": "1"}), "mkv"),
    "h264_vfr_opus": (
        lambda p: encode(p, "libx264", {"bf": "2", "g": "25"}, vfr=True, audio=("libopus",)),
        "mkv"),
    "hevc_open_gop": (lambda p: encode(p, "libx265", X265_OPEN, audio=("aac",)), "mkv"),
    "hevc_no_bframes": (lambda p: encode(p, "libx265", X265_NOB), "mkv"),
    "hevc_all_intra": (
        lambda p: encode(p, "libx265", {"preset": "ultrafast",
                                        "x265-params": "keyint=1:log-level=error"}), "mkv"),
    "many_clusters": (
        lambda p: encode(p, "libx264", X264, frames=90, audio=("aac",),
                         container_options={"cluster_size_limit": "4000",
                                            "cluster_time_limit": "150"}), "mkv"),
    "live": (lambda p: encode(p, "libx264", X264, audio=("aac",),
                              container_options={"live": "1"}), "mkv"),
    "webm_vp9_opus": (
        lambda p: encode(p, "libvpx-vp9", {"deadline": "realtime", "cpu-used": "8"},
                         audio=("libopus",), fmt="webm"), "webm"),
}


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("mkvindex")
    out = {}
    for name, (make, ext) in _MEDIA.items():
        out[name] = d / f"{name}.{ext}"
        make(out[name])
    pipe = _NonSeekable()
    encode(pipe, "libx264", X264, audio=("aac",))
    out["pipe"] = d / "pipe.mkv"
    out["pipe"].write_bytes(pipe.data)
    return out


# --------------------------------------------------------------------------
# the reference: PyAV


class Pkt(NamedTuple):
    pts: int | None
    dts: int | None
    duration: int
    key: bool
    data: bytes


def pyav_packets(path: Path) -> dict[int, list[Pkt]]:
    out: dict[int, list[Pkt]] = {}
    with av.open(str(path)) as c:
        for s in c.streams:
            out[s.index] = []
        for p in c.demux():
            if p.size == 0 and p.pts is None:  # PyAV's end-of-stream flush packet
                continue
            out[p.stream.index].append(
                Pkt(p.pts, p.dts, int(p.duration or 0), p.is_keyframe, bytes(p))
            )
    return out


def assert_matches_pyav(
    path: Path,
    *,
    durations: Callable[[TrackTable], bool] = lambda t: True,
    **kwargs: Any,
) -> list[TrackTable]:
    """Compare every packet; ``durations(table)`` False skips that track's durations."""
    tables = read_mkv_tables(path, **kwargs)
    packets = pyav_packets(path)
    data = path.read_bytes()
    with av.open(str(path)) as c:
        streams = [(s.index, s.time_base) for s in c.streams]
    assert len(tables) == len(streams)
    for (index, time_base), t in zip(streams, tables, strict=True):
        want = packets[index]
        where = f"{path.name} stream {index} ({t.handler})"
        assert time_base == Fraction(1, t.timescale), where
        assert t.sample_count == len(want), f"{where}: sample count"
        np.testing.assert_array_equal(t.pts, [p.pts for p in want], err_msg=f"{where}: pts")
        np.testing.assert_array_equal(t.sync, [p.key for p in want], err_msg=f"{where}: key")
        known = np.array([p.dts is not None for p in want], dtype=bool)
        np.testing.assert_array_equal(
            t.dts[known], [p.dts for p in want if p.dts is not None], err_msg=f"{where}: dts"
        )
        # FFmpeg has no dts for the first packets of a reordered stream only
        assert np.all(known[np.argmax(known) :]), where
        if durations(t):
            ref = np.array([p.duration for p in want], dtype=np.int64)
            if t.handler == "soun" and len(ref) and ref[0] == 0:
                # FFmpeg may read the first audio packet before its decoder has
                # reported the frame size, and then leaves its duration at 0.
                ref[0] = t.duration[0]
            np.testing.assert_array_equal(t.duration, ref, err_msg=f"{where}: duration")
        for i, p in enumerate(want):
            off, size = int(t.offset[i]), int(t.size[i])
            assert data[off : off + size] == p.data, f"{where}: payload of sample {i}"
        assert np.all(np.diff(t.dts) > 0), f"{where}: dts not strictly increasing"
        assert np.all(t.dts <= t.pts), f"{where}: dts after pts"
    return tables


# --------------------------------------------------------------------------
# PyAV-made files


@pytest.mark.parametrize("name", [*_MEDIA, "pipe"])
def test_matches_pyav(media: dict[str, Path], name: str) -> None:
    tables = assert_matches_pyav(media[name])
    assert tables[0].handler == "vide"
    assert tables[0].sample_count == (90 if name == "many_clusters" else 60)


def test_reordered_stream_dts_are_extrapolated_where_ffmpeg_has_none(
    media: dict[str, Path],
) -> None:
    """x264 signals 2 reordered frames: FFmpeg's dts starts at the third packet."""
    video = read_mkv_tables(media["h264_aac"])[0]
    with av.open(str(media["h264_aac"])) as c:
        dts = [p.dts for p in c.demux(video=0) if p.size]
    assert dts[:3] == [None, None, 0]
    # one DefaultDuration (33.367 ms, truncated to 33 ticks) per missing dts
    assert video.dts[:4].tolist() == [-66, -33, 0, 33]
    assert video.pts[:4].tolist() == [0, 100, 33, 67]


@pytest.mark.parametrize(
    ("name", "leading"),
    [("h264_no_bframes_pcm", 0), ("h264_one_bframe", 1), ("hevc_open_gop", 2),
     ("h264_all_intra", 0), ("webm_vp9_opus", 0)],
)
def test_reorder_depth_follows_the_sps(media: dict[str, Path], name: str, leading: int) -> None:
    video = read_mkv_tables(media[name])[0]
    with av.open(str(media[name])) as c:
        dts = [p.dts for p in c.demux(video=0) if p.size]
    assert dts.index(next(d for d in dts if d is not None)) == leading
    if leading == 0:
        np.testing.assert_array_equal(video.dts, video.pts)


def test_audio_timestamps_subtract_codec_delay(media: dict[str, Path]) -> None:
    aac = read_mkv_tables(media["h264_aac"])[1]
    opus = read_mkv_tables(media["webm_vp9_opus"])[1]
    assert aac.pts[0] == -21  # CodecDelay 1024/48000 s
    assert opus.pts[0] == -7  # CodecDelay 6.5 ms, rounded like av_rescale_q
    np.testing.assert_array_equal(aac.dts, aac.pts)


def test_sample_entries(media: dict[str, Path]) -> None:
    for name, fourcc, config_type in [("h264_aac", "avc1", "avcC"),
                                      ("hevc_open_gop", "hvc1", "hvcC")]:
        video, audio = read_mkv_tables(media[name])
        with av.open(str(media[name])) as c:
            extradata = bytes(c.streams.video[0].codec_context.extradata or b"")
        (entry,) = video.sample_entries
        assert (entry.fourcc, entry.config_type, entry.config) == (fourcc, config_type, extradata)
        assert (entry.width, entry.height) == (W, H)
        assert (video.track_id, video.timescale, audio.track_id, audio.handler) == (
            1, 1000, 2, "soun")
        (sound,) = audio.sample_entries
        assert (sound.fourcc, sound.channels, sound.sample_rate) == ("A_AAC", 1, 48000)
        assert not video.discard.any()
        np.testing.assert_array_equal(video.sample_number, np.arange(video.sample_count))
        np.testing.assert_array_equal(video.stsd_index, 0)
    vp9, opus = read_mkv_tables(media["webm_vp9_opus"])
    assert vp9.sample_entries[0].fourcc == "V_VP9"
    assert opus.sample_entries[0].fourcc == "A_OPUS"
    assert opus.sample_entries[0].config_type == "CodecPrivate"


def test_select_tracks(media: dict[str, Path]) -> None:
    seen: list[tuple[int, str]] = []

    def video_only(number: int, handler: str) -> bool:
        seen.append((number, handler))
        return handler == "vide"

    (video,) = read_mkv_tables(media["h264_aac"], select=video_only)
    assert video.handler == "vide"
    assert seen == [(1, "vide"), (2, "soun")]


def test_arrays_are_read_only(media: dict[str, Path]) -> None:
    video = read_mkv_tables(media["h264_aac"])[0]
    for arr in (video.dts, video.pts, video.duration, video.size, video.offset, video.sync):
        with pytest.raises(ValueError):
            arr[0] = 1


def test_camera_file_from_mediagen(tmp_path: Path) -> None:
    cam = make_camera(tmp_path / "cam.mkv", CameraSpec(camera=1, container="mkv", seconds=2.0))
    video, _audio = assert_matches_pyav(cam.path)
    shown = sorted(Fraction(int(p), video.timescale) for p in video.pts)
    assert shown == list(cam.frame_pts)
    keys = np.flatnonzero(video.sync[np.argsort(video.pts, kind="stable")])
    assert tuple(keys.tolist()) == cam.keyframes


# --------------------------------------------------------------------------
# a small Matroska writer for what FFmpeg's muxer never writes


def vint(value: int, length: int = 0) -> bytes:
    """EBML variable-size integer (shortest form unless ``length``)."""
    n = length or next(n for n in range(1, 9) if value < (1 << (7 * n)) - 1)
    return ((1 << (7 * n)) | value).to_bytes(n, "big")


def el(eid: int, payload: bytes = b"", *, unknown: bool = False) -> bytes:
    size = b"\x01\xff\xff\xff\xff\xff\xff\xff" if unknown else vint(len(payload))
    return eid.to_bytes((eid.bit_length() + 7) // 8, "big") + size + payload


def uint_el(eid: int, value: int) -> bytes:
    return el(eid, value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def float_el(eid: int, value: float) -> bytes:
    return el(eid, struct.pack(">d", value))


def with_crc(payload: bytes) -> bytes:
    """A CRC-32 element (IEEE, little-endian) over the rest of the parent, then the rest."""
    return el(0xBF, zlib.crc32(payload).to_bytes(4, "little")) + payload


def ebml_header(doctype: str = "matroska") -> bytes:
    return el(0x1A45DFA3, uint_el(0x4286, 1) + uint_el(0x42F7, 1) + uint_el(0x42F2, 4)
              + uint_el(0x42F3, 8) + el(0x4282, doctype.encode()) + uint_el(0x4287, 4)
              + uint_el(0x4285, 2))


def laced(frames: list[bytes], lacing: int) -> bytes:
    """Lace header (frame count - 1, sizes) plus the frames, as matroska_parse_laces() reads."""
    head = bytes([len(frames) - 1])
    if lacing == 1:
        for f in frames[:-1]:
            head += b"\xff" * (len(f) // 255) + bytes([len(f) % 255])
    elif lacing == 3:
        head += vint(len(frames[0]))
        for prev, cur in itertools.pairwise(frames[:-1]):
            delta = len(cur) - len(prev)
            n = next(n for n in range(1, 9) if abs(delta) < (1 << (7 * n - 1)) - 1)
            head += vint(delta + (1 << (7 * n - 1)) - 1, n)
    else:
        assert len({len(f) for f in frames}) == 1
    return head + b"".join(frames)


@dataclass(frozen=True)
class SrcTrack:
    number: int
    kind: int
    codec_id: str
    private: bytes
    default_duration: int  # ns
    codec_delay: int  # ns
    inner: bytes  # the Video or Audio element


@dataclass(frozen=True)
class SrcPacket:
    track: int
    pts: int  # ms, as PyAV reports it
    key: bool
    data: bytes


@dataclass(frozen=True)
class Source:
    tracks: tuple[SrcTrack, ...]
    packets: tuple[SrcPacket, ...]  # decode order


@dataclass(frozen=True)
class Layout:
    cluster_ms: int = 400
    timestamp_scale: int = 1_000_000
    unknown_segment: bool = False
    unknown_clusters: bool = False
    video_groups: bool = False  # BlockGroups, ReferenceBlock for non-key frames
    block_durations: bool = False  # a BlockDuration of 40 ms in every video BlockGroup
    lacing: dict[int, int] = field(default_factory=dict)  # track -> Xiph 1 / fixed 2 / EBML 3
    laces: int = 4
    void_and_crc: bool = False
    default_durations: bool = True
    track_extra: dict[int, bytes] = field(default_factory=dict)  # more TrackEntry children
    tail: bytes = b""  # level-1 elements after the clusters


def _ticks(ms: int, layout: Layout) -> int:
    return ms * 1_000_000 // layout.timestamp_scale


def _delay_ticks(t: SrcTrack, layout: Layout) -> int:
    return (t.codec_delay + layout.timestamp_scale // 2) // layout.timestamp_scale


def _track_entry(t: SrcTrack, layout: Layout) -> bytes:
    body = (uint_el(0xD7, t.number) + uint_el(0x73C5, 1000 + t.number) + uint_el(0x83, t.kind)
            + el(0x86, t.codec_id.encode()) + uint_el(0x9C, 0))
    if t.private:
        body += el(0x63A2, t.private)
    if layout.default_durations and t.default_duration:
        body += uint_el(0x23E383, t.default_duration)
    if t.codec_delay:
        body += uint_el(0x56AA, t.codec_delay)
    return el(0xAE, body + t.inner + layout.track_extra.get(t.number, b""))


def _block(src: Source, layout: Layout, pkts: list[SrcPacket], cluster_ts: int) -> bytes:
    p = pkts[0]
    track = next(t for t in src.tracks if t.number == p.track)
    rel = _ticks(p.pts, layout) + _delay_ticks(track, layout) - cluster_ts
    lacing = layout.lacing.get(p.track, 0) if len(pkts) > 1 else 0
    flags = (0x80 if p.key else 0) | (lacing << 1)
    body = vint(p.track) + struct.pack(">hB", rel, flags)
    body += laced([q.data for q in pkts], lacing) if lacing else p.data
    if track.kind != 1 or not layout.video_groups:
        return el(0xA3, body)
    group = el(0xA1, body)
    if layout.block_durations:
        group += uint_el(0x9B, _ticks(40, layout))
    if not p.key:
        group += el(0xFB, struct.pack(">h", -_ticks(33, layout)))
    return el(0xA0, group)


def _clusters(src: Source, layout: Layout) -> Iterator[list[SrcPacket]]:
    """Split the packets into clusters of about ``cluster_ms``, each starting at a video key."""
    cur: list[SrcPacket] = []
    for p in src.packets:
        kind = next(t.kind for t in src.tracks if t.number == p.track)
        if cur and kind == 1 and p.key and p.pts - cur[0].pts >= layout.cluster_ms:
            yield cur
            cur = []
        cur.append(p)
    if cur:
        yield cur


def _cluster(src: Source, layout: Layout, pkts: list[SrcPacket]) -> bytes:
    first = next(t for t in src.tracks if t.number == pkts[0].track)
    cluster_ts = max(0, _ticks(pkts[0].pts, layout) + _delay_ticks(first, layout))
    body = uint_el(0xE7, cluster_ts)
    pending: dict[int, list[SrcPacket]] = {}
    for p in pkts:
        if p.track not in layout.lacing:
            body += _block(src, layout, [p], cluster_ts)
            if layout.void_and_crc:
                body += el(0xEC, b"\0" * 3)
            continue
        group = pending.setdefault(p.track, [])
        group.append(p)
        if len(group) == layout.laces:
            body += _block(src, layout, group, cluster_ts)
            pending[p.track] = []
    for group in pending.values():
        if group:
            body += _block(src, layout, group, cluster_ts)
    if layout.void_and_crc:
        body = with_crc(body)
    return el(0x1F43B675, body, unknown=layout.unknown_clusters)


def write_mkv(path: Path, src: Source, layout: Layout, doctype: str = "matroska") -> Path:
    info = uint_el(0x2AD7B1, layout.timestamp_scale) + el(0x4D80, b"cutfarm-test")
    tracks = b"".join(_track_entry(t, layout) for t in src.tracks)
    segment = el(0x1549A966, info) + el(0x1654AE6B, tracks)
    if layout.void_and_crc:
        segment = el(0xEC, b"\0" * 20) + segment
    for pkts in _clusters(src, layout):
        segment += _cluster(src, layout, pkts)
    segment += layout.tail
    path.write_bytes(ebml_header(doctype) + el(0x18538067, segment, unknown=layout.unknown_segment))
    return path


def _source_tracks(c: av.container.InputContainer) -> tuple[SrcTrack, ...]:
    out = []
    for s in c.streams:
        cc = s.codec_context
        private = bytes(cc.extradata or b"")
        if isinstance(s, VideoStream):
            inner = el(0xE0, uint_el(0xB0, s.width) + uint_el(0xBA, s.height))
            out.append(SrcTrack(s.index + 1, 1, "V_MPEG4/ISO/AVC", private, 33_366_666, 0, inner))
        else:
            assert isinstance(s, AudioStream)
            pcm = cc.name.startswith("pcm")
            inner = el(0xE1, float_el(0xB5, 48000.0) + uint_el(0x9F, 1)
                       + (uint_el(0x6264, 16) if pcm else b""))
            out.append(SrcTrack(s.index + 1, 2, "A_PCM/INT/LIT" if pcm else "A_AAC", private,
                                21_333_333, 0 if pcm else 21_333_333, inner))
    return tuple(out)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Source:
    """H.264 with B-frames, AAC (variable-size packets) and PCM (fixed-size packets)."""
    path = tmp_path_factory.mktemp("mkvsource") / "source.mkv"
    encode(path, "libx264", X264, frames=75, audio=("aac", "pcm_s16le"))
    with av.open(str(path)) as c:
        tracks = _source_tracks(c)
        packets = tuple(
            SrcPacket(p.stream.index + 1, int(p.pts), p.is_keyframe, bytes(p))
            for p in c.demux()
            if p.size and p.pts is not None
        )
    return Source(tracks, packets)


@pytest.mark.parametrize(
    "layout",
    [
        Layout(),
        Layout(lacing={2: 1, 3: 1}),  # Xiph
        Layout(lacing={2: 3, 3: 3}, laces=5),  # EBML
        Layout(lacing={3: 2}, laces=3),  # fixed
        Layout(video_groups=True),
        Layout(video_groups=True, block_durations=True, lacing={2: 1}),
        Layout(unknown_segment=True, unknown_clusters=True,
               tail=el(0x1254C367, el(0x7373, b""))),
        Layout(void_and_crc=True, cluster_ms=0),
        Layout(timestamp_scale=100_000),
    ],
    ids=["simple", "xiph", "ebml", "fixed", "groups", "groups_durations", "unknown_sizes",
         "void_crc", "scale_100us"],
)
def test_written_layouts_match_pyav(source: Source, tmp_path: Path, layout: Layout) -> None:
    path = write_mkv(tmp_path / "w.mkv", source, layout)
    tables = assert_matches_pyav(path)
    assert [t.track_id for t in tables] == [1, 2, 3]
    assert tables[0].timescale == 1_000_000_000 // layout.timestamp_scale
    if layout.lacing:
        # laced blocks really were written: fewer block headers than frames
        assert any(np.any(np.diff(t.offset) == t.size[:-1]) for t in tables[1:])


def test_block_groups_key_from_reference_block(source: Source, tmp_path: Path) -> None:
    path = write_mkv(tmp_path / "g.mkv", source, Layout(video_groups=True, block_durations=True))
    video = read_mkv_tables(path)[0]
    keys = [p.key for p in source.packets if p.track == 1]
    np.testing.assert_array_equal(video.sync, keys)
    np.testing.assert_array_equal(video.duration, 40)  # BlockDuration beats DefaultDuration


def test_missing_durations_use_pts_spacing(source: Source, tmp_path: Path) -> None:
    """No DefaultDuration: the distance to the next frame in display order (AAC: 1024 samples)."""
    path = write_mkv(tmp_path / "nd.mkv", source, Layout(default_durations=False))
    video, aac, pcm = assert_matches_pyav(path, durations=lambda t: t.handler == "soun")
    order = np.argsort(video.pts)
    shown = video.pts[order]
    np.testing.assert_array_equal(video.duration[order][:-1], np.diff(shown))
    assert video.duration[order][-1] == shown[-1] - shown[-2]
    np.testing.assert_array_equal(aac.duration, 21)
    np.testing.assert_array_equal(pcm.duration, 21)  # 2048 bytes = 1024 s16 samples


def test_laces_without_durations_split_the_block_spacing(source: Source, tmp_path: Path) -> None:
    """FFmpeg gives such laces no pts; the table spreads them over the block's span."""
    path = write_mkv(tmp_path / "ln.mkv", source,
                     Layout(default_durations=False, lacing={2: 1}, laces=4, cluster_ms=10**6))
    aac = read_mkv_tables(path)[1]
    starts = [p.pts for p in source.packets if p.track == 2][::4]
    np.testing.assert_array_equal(aac.pts[::4], starts)
    assert np.all(np.diff(aac.pts) >= 0)
    assert np.all(aac.duration[:-4] > 0)


def test_webm_doctype(source: Source, tmp_path: Path) -> None:
    path = write_mkv(tmp_path / "w.webm", source, Layout(), doctype="webm")
    assert len(read_mkv_tables(path)) == 3


# --------------------------------------------------------------------------
# unsupported and broken files


def _header_stripping() -> bytes:
    compression = el(0x5034, uint_el(0x4254, 3) + el(0x4255, b"\x00\x00\x00"))
    return el(0x6D80, el(0x6240, uint_el(0x5031, 0) + uint_el(0x5032, 1) + compression))


def test_header_stripping_is_refused(source: Source, tmp_path: Path) -> None:
    path = write_mkv(tmp_path / "hs.mkv", source, Layout(track_extra={1: _header_stripping()}))
    with pytest.raises(MkvIndexError, match=r"hs\.mkv: track 1 .*header stripping"):
        read_mkv_tables(path)
    # the other tracks can still be indexed
    audio = read_mkv_tables(path, select=lambda number, handler: handler == "soun")
    assert [t.track_id for t in audio] == [2, 3]


def test_track_timestamp_scale_is_refused(source: Source, tmp_path: Path) -> None:
    scale = float_el(0x23314F, 2.0)
    path = write_mkv(tmp_path / "ts.mkv", source, Layout(track_extra={1: scale}))
    with pytest.raises(MkvIndexError, match="TrackTimestampScale"):
        read_mkv_tables(path)


def test_timestamp_scale_must_divide_a_second(source: Source, tmp_path: Path) -> None:
    path = write_mkv(tmp_path / "odd.mkv", source, Layout(timestamp_scale=333_333))
    with pytest.raises(MkvIndexError, match="TimestampScale 333333"):
        read_mkv_tables(path)


def test_negative_block_time_is_refused(source: Source, tmp_path: Path) -> None:
    early = replace(source, packets=(SrcPacket(2, -50, True, b"\x21\x10"), *source.packets))
    path = write_mkv(tmp_path / "neg.mkv", early, Layout())
    with pytest.raises(MkvIndexError, match="negative time"):
        read_mkv_tables(path)


@pytest.mark.parametrize("name", ["many_clusters", "live"])
@pytest.mark.parametrize("fraction", [0.37, 0.81])
def test_truncated_recording_indexes_complete_blocks(
    media: dict[str, Path], tmp_path: Path, name: str, fraction: float
) -> None:
    """An interrupted recording: the blocks before the cut, as FFmpeg returns them."""
    data = media[name].read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: int(len(data) * fraction)])
    tables = assert_matches_pyav(cut)
    whole = read_mkv_tables(media[name])
    for t, w in zip(tables, whole, strict=True):
        assert 0 < t.sample_count < w.sample_count
        np.testing.assert_array_equal(t.offset, w.offset[: t.sample_count])
        assert int(t.offset[-1] + t.size[-1]) <= len(data) * fraction
    # A crash may also leave a zero-filled tail behind.  The walk stops at the
    # zeros; a block cut short now reads as complete, zeros and all, as in FFmpeg.
    cut.write_bytes(data[: int(len(data) * fraction)] + bytes(100_000))
    padded = assert_matches_pyav(cut)
    for t, p in zip(tables, padded, strict=True):
        assert t.sample_count <= p.sample_count <= t.sample_count + 1


def test_unknown_size_cluster_cut_short(source: Source, tmp_path: Path) -> None:
    path = write_mkv(tmp_path / "u.mkv", source, Layout(unknown_segment=True,
                                                        unknown_clusters=True))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    tables = assert_matches_pyav(path)
    assert sum(t.sample_count for t in tables) < len(source.packets)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"this is not a video file\n" * 20, "not a Matroska/WebM file"),
        (b"", "not a Matroska/WebM file"),
        (ebml_header("foo") + el(0x18538067, b""), "DocType 'foo'"),
        (ebml_header(), "no Segment"),
        (ebml_header() + el(0x18538067, el(0x1549A966, uint_el(0x2AD7B1, 10**6))),
         "no Tracks"),
        (ebml_header()[:20], "truncated EBML header"),
    ],
    ids=["text", "empty", "doctype", "no_segment", "no_tracks", "cut_header"],
)
def test_not_matroska(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "x.mkv"
    path.write_bytes(content)
    with pytest.raises(MkvIndexError, match=match):
        read_mkv_tables(path)


def test_mp4_is_not_matroska(tmp_path: Path) -> None:
    path = tmp_path / "x.mp4"
    encode(path, "libx264", {"bf": "0"}, frames=5, fmt="mp4")
    with pytest.raises(MkvIndexError, match=r"x\.mp4: not a Matroska/WebM file"):
        read_mkv_tables(path)


# --------------------------------------------------------------------------
# cost


class _CountingFile(io.FileIO):
    read_bytes = 0
    reads = 0

    def read(self, size: int | None = -1, /) -> bytes:
        data = super().read(size)
        _CountingFile.read_bytes += len(data)
        _CountingFile.reads += 1
        return data


def test_reads_only_headers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Camera-like frames (tens of kB and more): the payloads are seeked over."""
    path = tmp_path / "big.mkv"
    encode(path, "libx264", {"qp": "0", "bf": "2", "g": "10"}, frames=20, audio=("aac",),
           size=(480, 270), noise=255)
    size = path.stat().st_size
    video = read_mkv_tables(path)[0]
    assert int(video.size.min()) > 50_000
    monkeypatch.setattr(Path, "open", lambda self, mode="r", buffering=-1:
                        _CountingFile(self, mode[0]))
    _CountingFile.read_bytes = _CountingFile.reads = 0
    read_mkv_tables(path)
    assert _CountingFile.read_bytes < size // 20, (_CountingFile.read_bytes, size)
    assert _CountingFile.reads < 60


def _loop_clip(clip: Path, path: Path, reps: int, period: int) -> None:
    """Mux the clip's packets ``reps`` times, shifted by ``period`` ms each time."""
    with av.open(str(clip)) as c, av.open(str(path), "w") as out:
        streams = [out.add_stream_from_template(s) for s in c.streams]
        packets = [p for p in c.demux() if p.size and p.pts is not None]
        first_dts = next(p.dts for p in packets if p.dts is not None)
        missing = sum(1 for p in packets if p.dts is None)
        items: list[tuple[int, int, int, bool, bytes, int]] = []
        for p in packets:
            assert p.pts is not None
            # FFmpeg has no dts for the first reordered frames; the muxer needs one
            dts = first_dts - (missing - len(items)) * 33 if p.dts is None else p.dts
            items.append((p.stream.index, p.pts, dts, p.is_keyframe, bytes(p), p.duration or 0))
        for rep in range(reps):
            for index, pts, dts, key, data, duration in items:
                q = av.Packet(data)
                q.stream = streams[index]
                q.time_base = Fraction(1, 1000)
                q.pts, q.dts, q.duration = pts + rep * period, dts + rep * period, duration
                q.is_keyframe = key
                out.mux(q)


def _pyav_columns(path: Path) -> dict[int, np.ndarray]:
    """stream index -> (n, 3) array of pts, size, key flag."""
    rows: dict[int, list[tuple[int, int, bool]]] = {}
    with av.open(str(path)) as c:
        for p in c.demux():
            if p.size and p.pts is not None:
                rows.setdefault(p.stream.index, []).append((p.pts, p.size, p.is_keyframe))
    return {k: np.array(v, dtype=np.int64) for k, v in rows.items()}


#: Repetitions of write_hour_mkv's 60-frame clip: an hour at 29.97 fps.  Speed is
#: measured in tests/bench/test_bench_index.py, which indexes the same file; the test
#: here only checks the results.
HOUR_REPS = 1800


def write_hour_mkv(directory: Path) -> Path:
    """An hour at 29.97 fps with AAC: 108k video and 171k audio blocks, as OBS writes them."""
    clip = directory / "clip.mkv"
    encode(clip, "libx264", {"preset": "ultrafast", "bf": "2", "g": "60",
                             "x264-params": "b-adapt=0:scenecut=0"},
           audio=("aac",), size=(48, 32), noise=0)
    path = directory / "hour.mkv"
    _loop_clip(clip, path, HOUR_REPS, period=2048)  # ms: past the clip's last audio packet
    return path


@pytest.mark.slow
def test_one_hour_index(tmp_path: Path) -> None:
    """Every block of an hour-long OBS-like recording against PyAV's packets."""
    path = write_hour_mkv(tmp_path)
    check_hour_tables(path, read_mkv_tables(path))


def check_hour_tables(path: Path, tables: list[TrackTable]) -> None:
    """The hour-long recording's tables against PyAV's packets (the benchmark's check too)."""
    video, audio = tables
    assert video.sample_count == 60 * HOUR_REPS
    assert audio.sample_count > 170_000
    for t, (index, ref) in zip(tables, sorted(_pyav_columns(path).items()), strict=True):
        assert t.track_id == index + 1
        np.testing.assert_array_equal(t.pts, ref[:, 0])
        np.testing.assert_array_equal(t.size, ref[:, 1])
        np.testing.assert_array_equal(t.sync, ref[:, 2].astype(bool))
