"""render.objectstore against a real S3-compatible server over HTTP (moto in server mode).

Nothing here mocks boto3: the module starts ``python -m moto.server`` as a subprocess and
points boto3 at it through ``AWS_ENDPOINT_URL``, exactly as a deployment points it at
MinIO or R2. Failures are injected where we do not own the code -- on the wire -- by a
small HTTP proxy in front of moto that can answer 503, cut a response body short, or
stall it past the client's read timeout.
"""

from __future__ import annotations

import http.client
import io
import os
import random
import re
import socket
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from render import mp4index
from render import objectstore as obs
from render.config import parse_config
from render.engine import execute, prepare
from render.errors import ConfigError, MediaError, SourceNotFoundError
from render.paths import resolve_source
from tests import mediagen as mg
from tests.conftest import S3_SECRET as SECRET
from tests.conftest import MediaRoot as Media
from tests.test_engine import MULTICAM, full_check, make_config

BUCKET = "cutfarm-media"
ROOT = obs.S3Location(BUCKET, "studio/a")
KiB = 1024
MiB = 1 << 20
FAST_RETRY = obs.RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05)


def small_reader(target: obs.ObjectRef | obs.ObjectInfo, **kwargs: Any) -> obs.RangedReader:
    """Small sizes so a file of a few hundred KB crosses many pages, blocks and evictions."""
    return obs.RangedReader(target, min_fetch=4 * KiB, block_size=16 * KiB,
                            cache_size=64 * KiB, **kwargs)


# -- a real S3-compatible server: moto_endpoint and aws_env in tests/conftest.py -----------


@pytest.fixture(scope="module")
def s3(aws_env: None) -> Any:
    client = obs.s3_client()
    client.create_bucket(Bucket=BUCKET)
    return client


@dataclass(frozen=True)
class Uploaded:
    path: Path
    data: bytes
    info: obs.ObjectInfo


@pytest.fixture(scope="module")
def camera(s3: Any, tmp_path_factory: pytest.TempPathFactory) -> Uploaded:
    path = tmp_path_factory.mktemp("media") / "cam.mp4"
    mg.make_camera(path, mg.CameraSpec(camera=1, seconds=3))
    data = path.read_bytes()
    ref = ROOT.resolve("cam.mp4")
    s3.put_object(Bucket=BUCKET, Key=ref.key, Body=data)
    return Uploaded(path, data, obs.stat(ref))


@pytest.fixture(scope="module")
def blob(s3: Any) -> tuple[obs.ObjectRef, bytes]:
    data = np.random.default_rng(7).integers(0, 256, 600 * KiB, dtype=np.uint8).tobytes()
    ref = ROOT.object("blobs/random.bin")
    s3.put_object(Bucket=BUCKET, Key=ref.key, Body=data)
    return ref, data


# -- failures on the wire ---------------------------------------------------------------------

_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
        "trailers", "transfer-encoding", "upgrade", "expect", "content-length"}
_DENIED = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
           b"<Message>Access Denied</Message></Error>")
_SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")


@dataclass(frozen=True)
class Fault:
    # "503": answer SlowDown; "403": AccessDenied; "cut": close after `after` bytes;
    # "stall": hang then close
    kind: str
    after: int = 0
    seconds: float = 0.0
    method: str = "GET"  # GETs only when they carry a Range (HEADs pass)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # resets are what we are here for
            super().handle_error(request, client_address)


class FaultProxy:
    """HTTP proxy in front of moto; the next queued fault hits the next request it names."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.faults: deque[Fault] = deque()
        # Random faults: each ranged GET with no queued fault fails with this probability.
        self.chaos: tuple[random.Random, float] | None = None
        self.chaos_hits = 0
        # (method, path, Range, If-Match) of every request, in arrival order.
        self.log: list[tuple[str, str, str | None, str | None]] = []
        self.lock = threading.Lock()
        self.server = _QuietServer(("127.0.0.1", 0), _ProxyHandler)
        self.server.daemon_threads = True
        self.server.proxy = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def ranges(self) -> list[str]:
        with self.lock:
            return [r for method, _, r, _ in self.log if method == "GET" and r]

    def if_match(self) -> set[str | None]:
        with self.lock:
            return {tag for method, _, _, tag in self.log if method == "GET"}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._forward()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

    def _forward(self) -> None:
        proxy: FaultProxy = self.server.proxy  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        rng = self.headers.get("Range")
        with proxy.lock:
            proxy.log.append((self.command, self.path, rng, self.headers.get("If-Match")))
            due = proxy.faults[0] if proxy.faults else None
            if due is not None and due.method == self.command and (rng or due.method != "GET"):
                fault = proxy.faults.popleft()
            else:
                fault = None
            if fault is None and proxy.chaos is not None and self.command == "GET" and rng:
                dice, p = proxy.chaos
                if dice.random() < p:
                    proxy.chaos_hits += 1
                    fault = (Fault("503") if dice.random() < 0.5
                             else Fault("cut", after=dice.randrange(4096)))
        if fault is not None and fault.kind == "503":
            self._answer(503, [("Content-Type", "application/xml")], _SLOWDOWN)
            return
        if fault is not None and fault.kind == "403":
            self._answer(403, [("Content-Type", "application/xml")], _DENIED,
                         head=self.command == "HEAD")
            return
        conn = http.client.HTTPConnection(*proxy.upstream, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            kept = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP]
        finally:
            conn.close()
        if fault is None:
            self._answer(resp.status, kept, data, head=self.command == "HEAD",
                         length=resp.getheader("Content-Length"))
            return
        self._answer(resp.status, kept, data[:fault.after], length=str(len(data)))
        time.sleep(fault.seconds)
        self.close_connection = True  # the rest of the body never comes

    def _answer(self, status: int, headers: list[tuple[str, str]], data: bytes, *,
                head: bool = False, length: str | None = None) -> None:
        self.send_response_only(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", length if length is not None else str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)
        self.wfile.flush()


@pytest.fixture
def proxy(moto_endpoint: str, aws_env: None, monkeypatch: pytest.MonkeyPatch,
          ) -> Iterator[FaultProxy]:
    p = FaultProxy(moto_endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", p.url)
    try:
        yield p
    finally:
        monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
        obs.clear_clients()  # a client made for the proxy must not outlive it
        p.close()


# -- locations and names ----------------------------------------------------------------------


@pytest.mark.parametrize(("url", "bucket", "prefix"), [
    ("s3://media", "media", ""),
    ("s3://media/", "media", ""),
    ("s3://my.bucket-1/studio/a/", "my.bucket-1", "studio/a"),
    ("S3://media/Studio A", "media", "Studio A"),
])
def test_parse_location(url: str, bucket: str, prefix: str) -> None:
    loc = obs.S3Location.parse(url)
    assert (loc.bucket, loc.prefix) == (bucket, prefix)
    assert obs.S3Location.parse(loc.url) == loc


@pytest.mark.parametrize(("url", "says"), [
    ("https://media/x", "is not an s3://bucket/prefix URL"),
    ("/srv/media", "is not an s3://bucket/prefix URL"),
    ("s3://", "names no bucket"),
    ("s3://Media", "lowercase"),
    ("s3://ab", "3-63"),
    ("s3://a..b", "'..'"),
    ("s3://192.168.1.10", "IP address"),
    ("s3://xn--media", "reserved"),
    ("s3://media/a//b", "empty, '.' or '..'"),
    ("s3://media/a/../b", "empty, '.' or '..'"),
    ("s3://media/a\\b", "backslashes"),
    ("s3://media/a\nb", "control characters"),
    ("s3://media/x?X-Amz-Signature=" + SECRET, "no query string"),
    ("s3://AKIDEXAMPLE:" + SECRET + "@media/x", "must not carry credentials"),
])
def test_parse_location_refusals(url: str, says: str) -> None:
    with pytest.raises(obs.InvalidLocationError) as info:
        obs.S3Location.parse(url)
    assert says in str(info.value)
    assert SECRET not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_resolve_maps_names_under_sources() -> None:
    assert ROOT.resolve("cam.mp4") == obs.ObjectRef(BUCKET, "studio/a/sources/cam.mp4")
    assert ROOT.resolve("day 2/Cam B.MP4").key == "studio/a/sources/day 2/Cam B.MP4"
    # As on disk: backslashes separate folders; '.' and doubled slashes collapse.
    assert ROOT.resolve("day2\\cam.mp4").key == "studio/a/sources/day2/cam.mp4"
    assert ROOT.resolve("./day2//cam.mp4").key == "studio/a/sources/day2/cam.mp4"
    assert obs.S3Location("media").resolve("x.mp4").url == "s3://media/sources/x.mp4"


@pytest.mark.parametrize("name", ["", "..", "../cam.mp4", "a/../../cam.mp4", "..\\cam.mp4",
                                  "/etc/passwd", "\\\\server\\share\\cam.mp4", "a\x00b",
                                  "cam\n.mp4", "cam\x7f.mp4", ".", "./"])
def test_resolve_refusals_match_local_roots(name: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as remote:
        ROOT.resolve(name, field="sources[0].filePath")
    assert remote.value.field == "sources[0].filePath"
    (tmp_path / "sources").mkdir()
    local: Exception | None = None
    try:
        resolve_source(name, [tmp_path], field="sources[0].filePath")
    except Exception as exc:  # the disk's verdict, whatever it is
        local = exc
    if isinstance(local, ConfigError):
        assert str(remote.value) == str(local)  # the same sentence for the same mistake


def test_resolve_refuses_keys_too_long() -> None:
    with pytest.raises(ConfigError, match="at most 1024 bytes"):
        ROOT.resolve("é" * 600)


# -- the client -------------------------------------------------------------------------------


def test_client_comes_from_standard_configuration(aws_env: None, moto_endpoint: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    assert obs.s3_client() is obs.s3_client()  # one per process
    client = obs.new_client()
    assert client.meta.endpoint_url == moto_endpoint
    assert client.meta.config.retries["mode"] == "standard"
    assert client.meta.config.retries["total_max_attempts"] == 5
    # The service-specific variable wins over the general one: botocore's own resolution.
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_RETRY_MODE", "adaptive")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    client = obs.new_client()
    assert client.meta.endpoint_url == "http://127.0.0.1:9"
    assert client.meta.config.retries["mode"] == "adaptive"
    assert client.meta.config.retries["total_max_attempts"] == 3


def test_a_profile_can_name_the_endpoint(s3: Any, moto_endpoint: str, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config"
    config.write_text(f"[profile minio]\nendpoint_url = {moto_endpoint}\n"
                      "s3 =\n  addressing_style = path\n")
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "minio")
    client = obs.new_client()
    assert client.meta.endpoint_url == moto_endpoint
    assert client.head_bucket(Bucket=BUCKET)["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_missing_profile_is_a_clear_error(aws_env: None, monkeypatch: pytest.MonkeyPatch,
                                          ) -> None:
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    with pytest.raises(obs.ObjectAccessError, match="'no-such-profile' is not in"):
        obs.new_client()


# -- reading ----------------------------------------------------------------------------------


def test_reads_whole_and_partial_ranges(camera: Uploaded) -> None:
    with obs.RangedReader(camera.info.ref) as reader:
        assert reader.size == len(camera.data)
        assert reader.info.etag == camera.info.etag
        assert reader.read() == camera.data
        assert reader.read(10) == b""  # at the end
        reader.seek(-100, io.SEEK_END)
        assert reader.read(1000) == camera.data[-100:]
        reader.seek(12345)
        assert reader.read(777) == camera.data[12345:13122]
        assert reader.tell() == 13122
        buf = bytearray(50)
        reader.seek(3)
        assert reader.readinto(buf) == 50
        assert bytes(buf) == camera.data[3:53]
    with pytest.raises(ValueError, match="closed"):
        reader.read(1)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 620 * KiB), st.integers(0, 40 * KiB),
                          st.sampled_from([io.SEEK_SET, io.SEEK_CUR, io.SEEK_END])),
                min_size=1, max_size=12))
def test_random_seeks_and_reads_match_the_bytes(blob: tuple[obs.ObjectRef, bytes],
                                                ops: list[tuple[int, int, int]]) -> None:
    ref, data = blob
    local = io.BytesIO(data)
    with small_reader(ref) as reader:
        for target, size, whence in ops:
            base = {io.SEEK_SET: 0, io.SEEK_CUR: local.tell(), io.SEEK_END: len(data)}[whence]
            assert reader.seek(target - base, whence) == local.seek(target - base, whence)
            assert reader.read(size) == local.read(size)
            assert reader.tell() == local.tell()


def test_sequential_reads_grow_into_blocks_with_read_ahead(blob: tuple[obs.ObjectRef, bytes],
                                                         ) -> None:
    ref, data = blob
    with small_reader(ref, read_ahead=2) as reader:
        chunks = [reader.read(3000) for _ in range(len(data) // 3000 + 1)]
        stats = reader.stats
    assert b"".join(chunks) == data
    # 4 KiB doubling to 16 KiB blocks: ~40 GETs for 600 KiB instead of 205 reads' worth.
    assert stats.requests <= len(data) // (16 * KiB) + 8
    assert stats.bytes_requested <= len(data) + 16 * KiB  # HEAD is free; no page twice


def test_a_small_read_after_a_seek_fetches_one_page(blob: tuple[obs.ObjectRef, bytes]) -> None:
    ref, data = blob
    with obs.RangedReader(ref) as reader:  # default sizes: 64 KiB pages, 8 MiB blocks
        before = reader.stats.bytes_requested
        reader.seek(300_000)
        assert reader.read(16) == data[300_000:300_016]
        assert reader.stats.bytes_requested - before == 64 * KiB


def test_pyav_decodes_every_frame_from_the_reader(camera: Uploaded) -> None:
    expected = mg.decode_video(camera.path)
    stamps = []
    with small_reader(camera.info) as reader:
        with av.open(reader, "r", metadata_errors="ignore") as container:
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                stamps.append(mg.read_stamp(frame))
        assert not reader.closed  # PyAV leaves the file objects it is given to their owner
    assert stamps == expected.stamps
    assert len(stamps) == 90 and stamps[-1] == (1, 89)


def _audio_after_seek(source: Any, seconds: float) -> tuple[int, np.ndarray]:
    with av.open(source, "r", metadata_errors="ignore") as container:
        stream = container.streams.audio[0]
        assert stream.time_base is not None
        container.seek(int(seconds / stream.time_base), stream=stream, backward=True)
        frame = next(container.decode(stream))
        assert frame.pts is not None
        return frame.pts, frame.to_ndarray()


def test_pyav_seeks_in_audio_through_the_reader(camera: Uploaded) -> None:
    pts, samples = _audio_after_seek(small_reader(camera.info), 1.7)
    local_pts, local_samples = _audio_after_seek(str(camera.path), 1.7)
    assert pts == local_pts
    np.testing.assert_array_equal(samples, local_samples)


def test_mp4_index_reads_only_box_headers_and_moov(camera: Uploaded) -> None:
    """What mp4index would do given the reader instead of a path (see the report)."""
    with obs.RangedReader(camera.info) as reader:
        top = mp4index._scan_top_level(reader, reader.size, reader.name)
        tables = mp4index._parse_file(top, reader.size, None).tables
        requested = reader.stats.bytes_requested
    expected = mp4index.read_sample_tables(camera.path)
    assert [t.track_id for t in tables] == [t.track_id for t in expected]
    for got, want in zip(tables, expected, strict=True):
        np.testing.assert_array_equal(got.offset, want.offset)
        np.testing.assert_array_equal(got.size, want.size)
    # The moov plus a 64 KiB page per box header read, whatever the size of the mdat.
    assert requested <= len(top.moov) + 3 * 64 * KiB


def _gop_ranges(path: Path, gop: int) -> list[tuple[int, int]]:
    table = mp4index.read_video_table(path)
    keys = np.flatnonzero(table.sync)
    stop = keys[gop + 1] if gop + 1 < len(keys) else len(table.offset)
    return [(int(table.offset[i]), int(table.size[i])) for i in range(keys[gop], stop)]


def test_read_ranges_streams_a_gop_within_the_byte_budget(camera: Uploaded) -> None:
    ranges = _gop_ranges(camera.path, 1)
    asked = sum(size for _, size in ranges)
    stats = obs.ReadStats()
    got = list(obs.read_ranges(camera.info, ranges, stats=stats))
    assert got == [camera.data[o:o + n] for o, n in ranges]
    assert stats.bytes_delivered == asked
    assert stats.bytes_requested <= 1.03 * asked
    assert stats.requests == len(obs.plan_requests(ranges))
    # This tiny file interleaves audio after every frame (~15 % of the bytes), so the
    # default budget keeps the samples apart; a looser one merges the whole GOP.
    stats = obs.ReadStats()
    got = list(obs.read_ranges(camera.info, ranges, stats=stats, waste_ratio=0.3))
    assert got == [camera.data[o:o + n] for o, n in ranges]
    assert stats.requests == 1 and stats.bytes_requested <= 1.3 * asked


def test_a_4k_camera_layout_is_read_with_a_few_large_gets() -> None:
    """One GOP a second: 12.5 MB of video chunks (100 Mbit/s) between 48 KB audio chunks."""
    ranges, pos = [], 0
    for _ in range(10):
        pos += 48_000  # the audio chunk the plan does not want
        for _ in range(30):  # the video samples of one second, back to back
            ranges.append((pos, 416_666))
            pos += 416_666
    plan = obs.plan_requests(ranges)
    asked = sum(size for _, size in ranges)
    assert len(plan) <= -(-(pos - 48_000) // (16 * MiB)) + 1  # 16 MiB GETs, gaps merged
    assert sum(r.size for r in plan) <= 1.005 * asked


def test_read_ranges_keeps_order_splits_and_empties(blob: tuple[obs.ObjectRef, bytes]) -> None:
    ref, data = blob
    ranges = [(0, 0), (500, 100), (100, 50), (100, 50), (600, 0), (1000, 300 * KiB),
              (len(data) - 10, 10), (0, 1)]
    with obs.RangedReader(ref) as reader:
        got = list(reader.read_ranges(ranges, max_request=64 * KiB, read_ahead=2))
    assert got == [data[o:o + n] for o, n in ranges]
    with pytest.raises(ValueError, match="past the end"):
        obs.read_ranges(ref, [(len(data) - 1, 2)])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**7), st.integers(0, 3 * 10**5)), max_size=60),
       st.integers(0, 2 * 10**5), st.sampled_from([0.0, 0.03, 0.5]))
def test_request_plan_bounds_waste_and_covers_every_range(
        ranges: list[tuple[int, int]], max_gap: int, ratio: float) -> None:
    plan = obs.plan_requests(ranges, max_gap=max_gap, max_request=MiB, waste_ratio=ratio)
    pieces = [p for r in plan for p in r.pieces]
    assert [p[0] for p in pieces] == sorted(p[0] for p in pieces)  # the caller's order
    for request in plan:
        assert request.size <= MiB
        assert request.size <= (1 + ratio) * request.useful + 1e-9
        for _, offset, size in request.pieces:
            assert size == 0 or request.start <= offset <= offset + size <= request.end
    covered: dict[int, int] = {}
    for index, _, size in pieces:
        covered[index] = covered.get(index, 0) + size
    assert covered == {i: size for i, (_, size) in enumerate(ranges)}


def test_sizes_are_checked_up_front() -> None:
    ref = obs.ObjectRef(BUCKET, "x")
    with pytest.raises(ValueError, match="multiple of min_fetch"):
        obs.RangedReader(ref, client=object(), block_size=100_000)
    with pytest.raises(ValueError, match="two blocks"):
        obs.RangedReader(ref, client=object(), cache_size=8 * MiB)
    with pytest.raises(ValueError, match="at least 5242880"):
        obs.MultipartWriter(ref, client=object(), part_size=MiB)


def test_clone_shares_the_pin_and_the_counters(camera: Uploaded) -> None:
    with obs.RangedReader(camera.info) as reader, reader.clone() as other:
        assert other.info == reader.info
        other.seek(100)
        assert other.read(10) == camera.data[100:110]
        assert reader.stats.requests == 1 and reader.stats is other.stats


# -- versions and errors ----------------------------------------------------------------------


def test_object_overwritten_mid_read_fails_with_object_changed(s3: Any) -> None:
    ref = ROOT.object("changing/cam.mp4")
    first = os.urandom(200 * KiB)
    s3.put_object(Bucket=BUCKET, Key=ref.key, Body=first)
    with small_reader(ref) as reader:
        assert reader.read(1000) == first[:1000]
        s3.put_object(Bucket=BUCKET, Key=ref.key, Body=os.urandom(200 * KiB))
        assert reader.read(1000) == first[1000:2000]  # still cached: the same version
        reader.seek(150 * KiB)
        with pytest.raises(obs.ObjectChangedError) as info:
            reader.read(10)
    assert isinstance(info.value, MediaError)
    assert ref.url in str(info.value) and "changed" in str(info.value)
    with pytest.raises(obs.ObjectChangedError):
        list(obs.read_ranges(reader.info, [(0, 10)]))


def test_missing_objects_and_buckets_are_source_not_found(s3: Any) -> None:
    with pytest.raises(obs.ObjectNotFoundError, match=r"s3://cutfarm-media/nope\.mp4 does not"):
        obs.RangedReader(obs.ObjectRef(BUCKET, "nope.mp4"))
    with pytest.raises(SourceNotFoundError, match="bucket 'no-such-bucket'"):
        list(obs.read_ranges(obs.ObjectRef("no-such-bucket", "x"), [(0, 1)]))


def test_find_source_looks_in_every_root_and_spots_misplaced_files(s3: Any,
                                                                 camera: Uploaded) -> None:
    other = obs.S3Location(BUCKET, "studio/b")
    assert obs.find_source("cam.mp4", [other, ROOT]).ref == ROOT.resolve("cam.mp4")
    s3.put_object(Bucket=BUCKET, Key="studio/b/loose.mp4", Body=b"x")
    with pytest.raises(obs.ObjectNotFoundError) as info:
        obs.find_source("loose.mp4", [ROOT, other], field="sources[1].filePath")
    assert str(info.value) == (
        "sources[1].filePath: source file 'loose.mp4' was not found in "
        "s3://cutfarm-media/studio/a/sources/ or s3://cutfarm-media/studio/b/sources/; "
        "it is in s3://cutfarm-media/studio/b/ itself: move it into "
        "s3://cutfarm-media/studio/b/sources/")
    assert info.value.field == "sources[1].filePath"


# -- retries on the wire ----------------------------------------------------------------------


def test_throttling_is_retried(proxy: FaultProxy, blob: tuple[obs.ObjectRef, bytes]) -> None:
    ref, data = blob
    proxy.faults.extend([Fault("503"), Fault("503")])
    with obs.RangedReader(ref, client=obs.new_client(), retry=FAST_RETRY) as reader:
        reader.seek(1000)
        assert reader.read(5000) == data[1000:6000]
        assert reader.stats.retries == 2  # botocore's standard mode took both
    assert proxy.ranges() == ["bytes=0-65535"] * 3
    assert proxy.if_match() == {reader.info.etag}  # every GET is pinned to the version


def test_a_body_cut_short_resumes_from_where_it_stopped(
        proxy: FaultProxy, blob: tuple[obs.ObjectRef, bytes]) -> None:
    ref, data = blob
    proxy.faults.extend([Fault("cut", after=300 * KiB), Fault("cut", after=100 * KiB)])
    stats = obs.ReadStats()
    got = b"".join(obs.read_ranges(ref, [(0, len(data))], client=obs.new_client(),
                                   retry=FAST_RETRY, stats=stats))
    assert got == data
    assert stats.retries == 2
    starts = [int(r.removeprefix("bytes=").split("-")[0]) for r in proxy.ranges()]
    ends = {r.split("-")[1] for r in proxy.ranges()}
    assert ends == {str(len(data) - 1)}  # every GET asks for the rest, not the whole again
    assert starts[0] == 0 and 0 < starts[1] <= 300 * KiB < starts[2] <= 400 * KiB


def test_a_stalled_body_times_out_and_resumes(proxy: FaultProxy,
                                              blob: tuple[obs.ObjectRef, bytes]) -> None:
    ref, data = blob
    proxy.faults.append(Fault("stall", after=300 * KiB, seconds=3.0))
    client = obs.new_client(read_timeout=0.5)
    t0 = time.monotonic()
    with obs.RangedReader(ref, client=client, retry=FAST_RETRY, read_ahead=0) as reader:
        assert reader.read() == data  # one read of it all: straight from the store
        assert reader.stats.retries == 1
    assert time.monotonic() - t0 < 2.5  # did not wait for the stalled server
    # Resumed, not restarted (bodies are read 256 KiB at a time: today the second GET
    # starts at 256 KiB, the stalled read's partial chunk being fetched again).
    first, second = proxy.ranges()
    assert first == f"bytes=0-{len(data) - 1}" and second.endswith(f"-{len(data) - 1}")
    assert 0 < int(second.removeprefix("bytes=").split("-")[0]) <= 300 * KiB


def test_an_export_through_a_store_that_fails_now_and_then_is_exact(
        proxy: FaultProxy, s3: Any, media_root: Media, tmp_path: Path) -> None:
    """One ranged GET in eight answers SlowDown or drops the connection mid-body, across a
    whole export (probe, indexes, audio, pieces): every read retries or resumes and the
    output is frame-exact, clicks and all."""
    files = ["h264_a.mp4", "h264_b.mp4"]
    root = obs.S3Location("cutfarm-chaos", "studio")
    s3.create_bucket(Bucket=root.bucket)
    for name in files:
        s3.put_object(Bucket=root.bucket, Key=root.resolve(name).key,
                      Body=(media_root.sources / name).read_bytes())
    obs.clear_clients()  # the engine's own clients, through the proxy
    proxy.chaos = (random.Random(8), 1 / 8)
    prep = prepare(parse_config(make_config(files, MULTICAM)), [root])
    execute(prep, tmp_path / "out.mp4")
    proxy.chaos = None
    assert proxy.chaos_hits >= 10, proxy.chaos_hits  # the faults did happen
    full_check(media_root, files, prep, tmp_path / "out.mp4")


def test_access_denied_names_the_object_and_what_to_check(
        proxy: FaultProxy, camera: Uploaded) -> None:
    """A bucket policy that refuses us: the export is refused with a sentence naming the
    object, not a traceback, and no retry storm (403 is not transient)."""
    proxy.faults.append(Fault("403", method="HEAD"))
    obs.clear_clients()  # the engine's own clients, through the proxy
    config = parse_config({"version": 1, "id": "export-denied",
                           "sources": [{"filePath": "cam.mp4"}],
                           "segments": [{"sourceIndex": 0, "startTime": 0, "endTime": 1}],
                           "output": {"format": "mp4"}})
    with pytest.raises(obs.ObjectAccessError) as info:
        prepare(config, [ROOT])
    assert str(info.value) == (
        "sources[0].filePath: the object store refused access to "
        f"{ROOT.resolve('cam.mp4').url} (403); check the server's credentials and the "
        "bucket's policy")
    assert info.value.field == "sources[0].filePath"
    assert [m for m, *_ in proxy.log] == ["HEAD"]


def test_missing_credentials_are_a_clear_error(aws_env: None,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(obs.ObjectAccessError, match="no usable credentials for s3://") as info:
        obs.stat(obs.ObjectRef(BUCKET, "x"), client=obs.new_client(), retry=FAST_RETRY)
    assert SECRET not in str(info.value)


def test_a_store_that_stays_down_fails_clearly(proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch,
                                               blob: tuple[obs.ObjectRef, bytes]) -> None:
    ref, _ = blob
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    proxy.faults.extend([Fault("503")] * 20)
    info = obs.stat(ref)  # HEADs pass
    with pytest.raises(obs.StoreUnavailableError) as caught:
        list(obs.read_ranges(info, [(0, 10)], client=obs.new_client(), retry=FAST_RETRY))
    text = str(caught.value)
    assert ref.url in text and "503 SlowDown" in text and "4 attempts" in text
    assert SECRET not in text and "testing-key-id" not in text
    assert len(proxy.ranges()) == 4 * 2  # our 4 attempts, each with botocore's 2


# -- writing ----------------------------------------------------------------------------------


def _object_bytes(s3: Any, ref: obs.ObjectRef) -> bytes:
    body: bytes = s3.get_object(Bucket=ref.bucket, Key=ref.key)["Body"].read()
    return body


def test_multipart_upload_sends_the_head_last(proxy: FaultProxy, s3: Any) -> None:
    ref = ROOT.object("exports/job1/out.mp4")
    body = os.urandom(12 * MiB)
    header = b"ftyp-and-the-moov-written-at-the-end" * 20
    proxy.faults.append(Fault("503", method="PUT"))  # the first part is throttled once
    with obs.MultipartWriter(ref, client=obs.new_client(), part_size=5 * MiB,
                             head_size=5 * MiB, content_type="video/mp4") as out:
        out.write(b"\0" * len(header))  # room reserved for the index, like moov_size
        out.write(body[:3 * MiB])
        out.write(body[3 * MiB:])
        with pytest.raises(obs.ObjectNotFoundError):
            obs.stat(ref)  # nothing visible before complete()
        with pytest.raises(io.UnsupportedOperation, match="already uploaded"):
            out.seek(6 * MiB)
            out.write(b"x")
        out.seek(0)
        out.write(header)  # the muxer fills its reservation once it knows the index
        out.seek(0, io.SEEK_END)
        done = out.complete()
    assert done.size == len(header) + len(body)
    assert _object_bytes(s3, ref) == header + body[: 12 * MiB]
    assert out.part_order == [2, 3, 1]
    with proxy.lock:
        uploads = [re.search(r"partNumber=(\d+)", p) for m, p, _, _ in proxy.log if m == "PUT"]
    numbers = [int(m.group(1)) for m in uploads if m]
    # Parts 2 and 3 go up together: whichever reached the server first met the 503 and
    # was sent again; the head (part 1) goes last.
    assert numbers[-1] == 1 and sorted(numbers[:-1]) in ([2, 2, 3], [2, 3, 3])
    assert s3.head_object(Bucket=BUCKET, Key=ref.key)["ContentType"] == "video/mp4"


def test_an_error_aborts_the_upload_and_leaves_nothing(s3: Any) -> None:
    ref = ROOT.object("exports/job2/out.mp4")
    with pytest.raises(RuntimeError, match="cancelled"), obs.MultipartWriter(
            ref, part_size=5 * MiB, head_size=5 * MiB) as out:
        out.write(os.urandom(11 * MiB))  # one part is uploading or uploaded
        raise RuntimeError("cancelled")
    assert not s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads")
    with pytest.raises(obs.ObjectNotFoundError):
        obs.stat(ref)


def test_leaving_without_complete_uploads_nothing(s3: Any) -> None:
    ref = ROOT.object("exports/job3/out.mp4")
    with obs.MultipartWriter(ref) as out:
        out.write(b"abc")
    with pytest.raises(obs.ObjectNotFoundError):
        obs.stat(ref)
    assert not s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads")


def test_a_small_object_is_one_put(s3: Any) -> None:
    ref = ROOT.object("exports/job4/tiny.json")
    with obs.MultipartWriter(ref) as out:
        out.write(b'{"ok": ')
        out.write(b"true}")
        info = out.complete()
    assert out.part_order == []
    assert _object_bytes(s3, ref) == b'{"ok": true}'
    assert info.etag == s3.head_object(Bucket=BUCKET, Key=ref.key)["ETag"]


def _remux(source: Path, sink: Any) -> None:
    with av.open(str(source)) as inp, av.open(
            sink, "w", format="mp4", options={"moov_size": "65536"}) as out:
        vin = inp.streams.video[0]
        vout = out.add_stream_from_template(vin)
        for packet in inp.demux(vin):
            if packet.dts is not None:
                packet.stream = vout
                out.mux(packet)


def test_ffmpeg_muxes_into_the_writer_with_a_reserved_moov(s3: Any, camera: Uploaded,
                                                          tmp_path: Path) -> None:
    ref = ROOT.object("exports/job5/remux.mp4")
    with obs.MultipartWriter(ref) as sink:
        _remux(camera.path, sink)
        assert not sink.closed
        sink.complete()
    path = tmp_path / "remux.mp4"
    path.write_bytes(_object_bytes(s3, ref))
    head = path.read_bytes()[:70_000]
    assert head[4:8] == b"ftyp" and b"moov" in head  # the index in the reserved space
    assert mg.decode_video(path).stamps == mg.decode_video(camera.path).stamps


# -- presigned downloads ----------------------------------------------------------------------


def test_presigned_urls_are_botocores_sigv4_with_our_expiry(
        s3: Any, camera: Uploaded, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """moto checks no signature, so the signing is checked against botocore's own SigV4
    presigner, set up from scratch with the same keys and a fixed clock: same URL, query
    signing (not the legacy v2 scheme), the expiry asked for; a changed parameter gives
    another signature."""
    import boto3
    import botocore.auth
    from botocore.config import Config

    at = datetime(2026, 12, 1, 12, 0, 0)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: at)
    name = "Show 7.mp4"
    ours = obs.presigned_get(camera.info.ref, expires=600, filename=name)
    reference = boto3.client(
        "s3", endpoint_url=moto_endpoint, region_name="us-east-1",
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        config=Config(signature_version="s3v4"))
    params = {"Bucket": camera.info.ref.bucket, "Key": camera.info.ref.key,
              "ResponseContentDisposition": obs.content_disposition(name)}
    assert ours == reference.generate_presigned_url("get_object", Params=params, ExpiresIn=600)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(ours).query))
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert query["X-Amz-Date"] == "20261201T120000Z" and query["X-Amz-Expires"] == "600"
    assert SECRET not in ours
    other = reference.generate_presigned_url(
        "get_object", Params={**params, "ResponseContentDisposition": "attachment"},
        ExpiresIn=600)
    assert dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(other).query))[
        "X-Amz-Signature"] != query["X-Amz-Signature"]


def test_presigned_get_downloads_under_the_given_name(s3: Any, camera: Uploaded) -> None:
    name = 'Épisode 12 "final" 100%.mp4'
    url = obs.presigned_get(camera.info.ref, expires=300, filename=name)
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == camera.data
        disposition = response.headers["Content-Disposition"]
    assert disposition == obs.content_disposition(name)
    assert disposition == ("attachment; filename=\"Episode 12 _final_ 100_.mp4\"; "
                           "filename*=UTF-8''%C3%89pisode%2012%20%22final%22%20100%25.mp4")
    with pytest.raises(ValueError, match="expires"):
        obs.presigned_get(camera.info.ref, expires=8 * 24 * 3600)


def test_unreachable_store_is_unavailable_not_a_traceback(aws_env: None,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(obs.StoreUnavailableError, match=r"did not answer|kept failing"):
        obs.stat(obs.ObjectRef(BUCKET, "x"), client=obs.new_client(connect_timeout=1),
                 retry=FAST_RETRY)

