"""Camera files in a bucket: the engine and the service read them by byte ranges.

Everything runs against a real S3-compatible server over HTTP (moto in server mode, see
tests/conftest.py): the engine in process, then the whole service (Ray, Serve, HTTP) with
``s3://`` as its media root. Outputs are checked frame by frame and click by click exactly
as the disk-based tests check theirs, and against the same export read from disk.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from cluster.errors import JobNotFoundError
from cluster.jobs import JobState
from cluster.settings import MediaRoot, Settings, SettingsError
from cluster.status import StatusBook
from cluster.store import BucketStore
from render import mux
from render import objectstore as obs
from render.config import parse_config
from render.engine import Prepared, execute, prepare
from render.errors import CancelledError, ConfigError, SourceNotFoundError
from render.mux import StoredOutput
from render.plan import CopyPiece, EncodePiece
from render.sourcefile import LocalFile, StoredFile
from tests import mediagen as mg
from tests.conftest import S3_SECRET
from tests.conftest import MediaRoot as Media
from tests.http_support import poll, running_api
from tests.test_engine import MULTICAM, full_check, make_config

BUCKET = "cutfarm-sources"
ROOT = obs.S3Location(BUCKET, "studio")
FILES = ["h264_a.mp4", "h264_b.mp4", "hevc_open.mp4", "hevc_b.mp4"]


@pytest.fixture(scope="module")
def bucket(aws_env: None, media_root: Media) -> obs.S3Location:
    s3 = obs.s3_client()
    s3.create_bucket(Bucket=BUCKET)
    for name in FILES:
        s3.put_object(Bucket=BUCKET, Key=ROOT.resolve(name).key,
                      Body=(media_root.sources / name).read_bytes())
    return ROOT


def _export(roots: list[Any], cfg: dict[str, Any], out: Path) -> Prepared:
    prep = prepare(parse_config(cfg), roots)
    execute(prep, out)
    return prep


@pytest.mark.parametrize("files", [FILES[:2], FILES[2:]], ids=["h264", "hevc"])
def test_an_export_from_s3_is_the_export_from_disk(
        bucket: obs.S3Location, media_root: Media, tmp_path: Path, files: list[str]) -> None:
    cfg = make_config(files, MULTICAM)
    prep = _export([bucket], cfg, tmp_path / "s3.mp4")
    assert all(isinstance(s.file, StoredFile) for s in prep.sources.values())
    full_check(media_root, files, prep, tmp_path / "s3.mp4")
    assert {type(p) for p in prep.plan.pieces} == {CopyPiece, EncodePiece}
    # Tail pieces hand on the copied samples they decode (render/handoff.py): the check
    # above then holds for samples that came from their files, not from the store.
    assert prep.handoffs
    for copy, (encode, first) in prep.handoffs.items():
        c, e = prep.plan.pieces[copy], prep.plan.pieces[encode]
        assert isinstance(c, CopyPiece) and isinstance(e, EncodePiece)
        assert c.dec_start <= first < c.dec_stop
        assert any(r.source == c.source and r.decode_from <= first
                   and c.dec_stop <= r.decode_to for r in e.runs)
    # The same export as from disk: the store changes nothing but I/O.
    disk = _export([media_root.root], cfg, tmp_path / "disk.mp4")
    assert all(isinstance(s.file, LocalFile) for s in disk.sources.values())
    assert disk.handoffs == {}  # from a disk, the page cache serves the second read
    assert repr(disk.plan.pieces) == repr(prep.plan.pieces)
    assert (mg.decode_video(tmp_path / "s3.mp4").stamps
            == mg.decode_video(tmp_path / "disk.mp4").stamps)


def test_pieces_fetch_the_samples_they_use_and_little_else(
        bucket: obs.S3Location, media_root: Media, tmp_path: Path) -> None:
    """Copy and re-encode pieces read exactly their samples, in GETs wasting <= 5 %, and
    no sample twice: copies a re-encode reads anyway are handed on, not fetched again.

    (The whole-job bound, bytes requested against bytes used plus the moov, is measured
    on larger media by tests/bench/test_bench_s3.py: on files this small the fixed costs
    of opening a file dominate.)
    """
    files = FILES[:2]
    prep = _export([bucket], make_config(files, MULTICAM), tmp_path / "out.mp4")
    coalesced = []
    for i, src in prep.sources.items():
        assert isinstance(src.file, StoredFile)
        stats = src.file.sample_stats
        reads = _sample_reads(prep, i)
        assert stats.bytes_delivered == sum(int(s.sum()) for _, s in reads), files[i]
        # ... and that is every sample the plan uses, once.
        used = np.unique(np.concatenate([o for o, _ in reads]))
        assert stats.bytes_delivered == int(
            src.video.index.size[np.isin(src.video.offset, used)].sum()), files[i]
        assert stats.bytes_requested <= 1.05 * stats.bytes_delivered, (files[i], stats)
        # Coalesced: at most one GET per run of adjacent samples (a chunk), never one per
        # sample (audio chunks between them are skipped when they weigh over 3 %).
        chunks = sum(1 + int(np.count_nonzero(o[1:] != (o + s)[:-1])) for o, s in reads)
        samples = sum(len(o) for o, _ in reads)
        assert stats.requests <= chunks, (files[i], stats, chunks)
        coalesced.append(stats.requests < samples)
    assert any(coalesced), "a GET per sample everywhere: the test shows no coalescing"


def _sample_reads(prep: Prepared, source: int, *, handed_on: bool = True,
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(offsets, sizes) of each sample read the plan makes: copied, or fed to a decoder;
    ``handed_on``: copies handed on by a re-encode are not read from the source."""
    src = prep.sources[source]
    index = src.video.index
    decs: list[np.ndarray] = []
    for i, piece in enumerate(prep.plan.pieces):
        if isinstance(piece, CopyPiece) and piece.source == source:
            copied = np.asarray(piece.samples(index))
            if handed_on and i in prep.handoffs:  # these come from the re-encode's file
                copied = copied[copied < prep.handoffs[i][1]]
            decs.append(copied)
        elif isinstance(piece, EncodePiece):
            decs += [np.arange(r.decode_from, r.decode_to) for r in piece.runs
                     if r.source == source]
    return [(src.video.offset[d], index.size[d]) for d in decs]


def test_a_source_replaced_during_a_job_fails_it_cleanly(
        bucket: obs.S3Location, media_root: Media, tmp_path: Path) -> None:
    s3 = obs.s3_client()
    key = ROOT.resolve("swapped.mp4").key
    s3.put_object(Bucket=BUCKET, Key=key, Body=(media_root.sources / FILES[0]).read_bytes())
    prep = prepare(parse_config(make_config(["swapped.mp4"], [(0, 0.4, 2.5)])), [bucket])
    # Re-uploaded (another take) after the probe pinned the first version.
    s3.put_object(Bucket=BUCKET, Key=key, Body=(media_root.sources / FILES[1]).read_bytes())
    out = tmp_path / "out.mp4"
    with pytest.raises(obs.ObjectChangedError) as info:
        execute(prep, out)
    assert "s3://cutfarm-sources/studio/sources/swapped.mp4" in str(info.value)
    assert "changed" in str(info.value)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_names_resolve_in_folder_and_bucket_roots_in_order(
        bucket: obs.S3Location, media_root: Media, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "sources").mkdir(parents=True)
    cfg = parse_config(make_config([FILES[0]], [(0, 0.4, 1.0)]))
    assert isinstance(prepare(cfg, [empty, bucket]).sources[0].file, StoredFile)
    assert isinstance(prepare(cfg, [media_root.root, bucket]).sources[0].file, LocalFile)
    missing = parse_config(make_config(["nope.mp4"], [(0, 0.4, 1.0)]))
    with pytest.raises(SourceNotFoundError) as info:
        prepare(missing, [empty, bucket])
    text = str(info.value)
    assert f"{empty}/sources/" in text and "s3://cutfarm-sources/studio/sources/" in text
    assert info.value.field == "sources[0].filePath"
    for bad in ["../secret.mp4", "a/../../b.mp4"]:
        with pytest.raises(ConfigError, match=r"sources\[0\]\.filePath"):
            prepare(parse_config(make_config([bad], [(0, 0.4, 1.0)])), [empty, bucket])
    assert S3_SECRET not in text


def test_settings_take_bucket_roots() -> None:
    s = Settings.from_env({"CUTFARM_MEDIA_ROOTS": "s3://cams/studio-a,/srv/media",
                           "CUTFARM_NAMESPACE": "t"})
    assert s.media_roots[0] == MediaRoot(obs.S3Location("cams", "studio-a"))
    assert s.export_root == Path("/srv/media/exports")
    with pytest.raises(SettingsError,
                       match=r"CUTFARM_MEDIA_ROOTS: s3://cams is in S3.*no longer supported"):
        Settings.from_env({"CUTFARM_MEDIA_ROOTS": "s3://cams=fast"})
    with pytest.raises(SettingsError, match=r"^CUTFARM_EXPORT_ROOT: every media root is in S3"):
        Settings.from_env({"CUTFARM_MEDIA_ROOTS": "s3://cams"})
    only = Settings.from_env({"CUTFARM_MEDIA_ROOTS": "s3://cams",
                              "CUTFARM_EXPORT_ROOT": "/srv/out"})
    assert only.export_root == Path("/srv/out")
    with pytest.raises(SettingsError, match="CUTFARM_MEDIA_ROOTS"):
        Settings.from_env({"CUTFARM_MEDIA_ROOTS": "s3://Bad_Bucket/x"})
    with pytest.raises(SettingsError, match="CUTFARM_EXPORT_ROOT"):
        s.with_changes(media_roots=(MediaRoot(obs.S3Location("cams")),), export_dir=None)


def test_the_service_exports_from_a_bucket(bucket: obs.S3Location, media_root: Media,
                                           tmp_path: Path) -> None:
    files = FILES[:2]
    cfg = make_config(files, MULTICAM)
    cfg["id"] = "export-from-s3"
    exports = tmp_path / "exports"
    with running_api(tmp_path, media_roots=(MediaRoot(bucket),), export_dir=exports) as api, \
            api.client() as client:
        r = client.post("/api/export", json=cfg)
        assert r.status_code == 200, r.text
        done = poll(client, "export-from-s3", timeout=300)
        assert done["status"] == "completed", done
        body = client.get(done["downloadUrl"]).content
        missing = client.post("/api/export", json={**cfg, "id": "export-missing", "sources": [
            {"filePath": "nope.mp4"}, {"filePath": files[1]}]})
        assert missing.status_code == 400, missing.text
        assert "s3://cutfarm-sources/studio/sources/" in missing.text
    out = exports / "export-from-s3" / "output.mp4"
    assert body == out.read_bytes()
    local = tmp_path / "local.mp4"
    prep = _export([bucket], cfg, local)
    assert mg.decode_video(out).stamps == mg.decode_video(local).stamps
    full_check(media_root, files, prep, out)


def test_a_damaged_hand_on_file_is_read_from_the_source_instead(
        bucket: obs.S3Location, media_root: Media, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A hand-on file cut short (a piece killed while writing it) or gone costs a read from
    the store, never a wrong or missing sample."""
    import render.engine as engine

    real = engine.assemble
    damaged: list[Path] = []

    def assemble_after_damage(*args: Any, **kwargs: Any) -> Any:
        for n, path in enumerate(sorted(tmp_path.rglob("*.copy-*"))):
            damaged.append(path)
            if n % 2:
                path.unlink()
            else:
                with path.open("r+b") as fh:
                    fh.truncate(path.stat().st_size - 1)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "assemble", assemble_after_damage)
    files = FILES[:2]
    prep = prepare(parse_config(make_config(files, MULTICAM)), [bucket])
    out = tmp_path / "out.mp4"
    execute(prep, out, work_dir=tmp_path)
    assert len(damaged) == len(prep.handoffs) > 0
    full_check(media_root, files, prep, out)
    for i, src in prep.sources.items():
        assert isinstance(src.file, StoredFile)
        every = sum(int(s.sum()) for _, s in _sample_reads(prep, i, handed_on=False))
        assert src.file.sample_stats.bytes_delivered == every, files[i]


def test_the_service_exports_from_a_bucket_into_a_bucket(
        bucket: obs.S3Location, media_root: Media, tmp_path: Path) -> None:
    """Both ends in S3: no shared work folder, so re-encoded pieces and the copies they hand
    on (render/handoff.py) travel to the concat actor through Ray's object store."""
    files = FILES[:2]
    cfg = {**make_config(files, MULTICAM), "id": "export-s3-to-s3"}
    assert prepare(parse_config(cfg), [bucket]).handoffs  # the path under test is taken
    exports = obs.S3Location(BUCKET, "both/exports")
    with running_api(tmp_path, media_roots=(MediaRoot(bucket),), export_dir=exports) as api, \
            api.client() as client:
        assert client.post("/api/export", json=cfg).status_code == 200
        done = poll(client, "export-s3-to-s3", timeout=300)
        assert done["status"] == "completed", done
        body = client.get(done["downloadUrl"], follow_redirects=True).content
    out = tmp_path / "out.mp4"
    out.write_bytes(body)
    full_check(media_root, files, prepare(parse_config(cfg), [media_root.root]), out)
    assert not obs.s3_client().list_multipart_uploads(Bucket=BUCKET, Prefix="both/").get(
        "Uploads")


def test_the_engine_writes_an_export_into_a_bucket(
        bucket: obs.S3Location, media_root: Media, tmp_path: Path) -> None:
    files = FILES[:2]
    cfg = make_config(files, MULTICAM)
    prep = prepare(parse_config(cfg), [bucket])
    ref = ROOT.object("exports/engine/output.mp4")
    execute(prep, StoredOutput(ref), work_dir=tmp_path)
    out = tmp_path / "downloaded.mp4"
    s3 = obs.s3_client()
    out.write_bytes(s3.get_object(Bucket=BUCKET, Key=ref.key)["Body"].read())
    full_check(media_root, files, prep, out)
    head = out.read_bytes()[:64]
    assert head[4:8] == b"ftyp" and b"moov" in out.read_bytes()[:1 << 20]  # moov first
    assert s3.head_object(Bucket=BUCKET, Key=ref.key)["ContentType"] == "video/mp4"
    assert not list(tmp_path.glob(".cutfarm-*"))  # the engine's scratch is gone


def test_a_failed_export_leaves_nothing_in_the_bucket(
        bucket: obs.S3Location, media_root: Media, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    prep = prepare(parse_config(make_config(FILES[:2], MULTICAM)), [bucket])
    ref = ROOT.object("exports/cancelled/output.mp4")
    cancel = threading.Event()
    real = mux._copy_samples

    def cancelled_midway(*args: Any) -> Iterator[bytes]:
        for data in real(*args):
            yield data
            cancel.set()  # midway through assembling: the upload has begun

    monkeypatch.setattr(mux, "_copy_samples", cancelled_midway)
    with pytest.raises(CancelledError):
        execute(prep, StoredOutput(ref), work_dir=tmp_path, cancel=cancel)
    s3 = obs.s3_client()
    with pytest.raises(obs.ObjectNotFoundError):
        obs.stat(ref)
    assert not s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads")


def test_a_reservation_too_small_is_written_again_with_more_room(
        bucket: obs.S3Location, media_root: Media, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The muxer's index outgrew its reservation: an upload cannot be rewritten in place
    (faststart), so the export is written again with twice the room."""
    from render import mux

    scales: list[int] = []
    real = mux._options

    def tight(*args: Any, **kwargs: Any) -> dict[str, str]:
        options = real(*args, **kwargs)
        scale = kwargs.get("scale", 1)
        scales.append(scale)
        if scale == 1:
            options["moov_size"] = "600"  # far too small for any index
        return options

    monkeypatch.setattr(mux, "_options", tight)
    files = FILES[:2]
    prep = prepare(parse_config(make_config(files, MULTICAM)), [bucket])
    ref = ROOT.object("exports/tight/output.mp4")
    execute(prep, StoredOutput(ref), work_dir=tmp_path)
    assert scales == [1, 2]
    out = tmp_path / "downloaded.mp4"
    out.write_bytes(obs.s3_client().get_object(Bucket=BUCKET, Key=ref.key)["Body"].read())
    full_check(media_root, files, prep, out)
    assert not obs.s3_client().list_multipart_uploads(Bucket=BUCKET).get("Uploads")


def test_the_service_exports_into_a_bucket(bucket: obs.S3Location, media_root: Media,
                                           tmp_path: Path) -> None:
    """Sources on disk, exports in S3: upload while assembling, signed-URL downloads, job
    documents beside the output, found again by a restarted cluster; deletes leave
    nothing behind."""
    files = FILES[:2]
    exports = obs.S3Location(BUCKET, "farm/exports")
    cfg = {**make_config(files, MULTICAM), "id": "export-into-s3",
           "projectName": 'Épisode "1"'}
    settings = {"media_roots": (MediaRoot(media_root.root),), "export_dir": exports}
    s3 = obs.s3_client()
    with running_api(tmp_path, **settings) as api, api.client() as client:
        assert client.post("/api/export", json=cfg).status_code == 200
        done = poll(client, "export-into-s3", timeout=300)
        assert done["status"] == "completed", done
        keys = {o["Key"] for o in s3.list_objects_v2(
            Bucket=BUCKET, Prefix="farm/exports/export-into-s3/")["Contents"]}
        assert keys == {f"farm/exports/export-into-s3/{n}"
                        for n in ("config.json", "status.json", "output.mp4")}
        r = client.get(done["downloadUrl"], follow_redirects=False)
        assert r.status_code == 307, r.text
        signed = r.headers["location"]
        assert "X-Amz-Signature=" in signed and S3_SECRET not in signed
        body = httpx.get(signed, timeout=60)
        assert body.status_code == 200
        assert "filename*=UTF-8''%C3%89pisode" in body.headers["content-disposition"]
        part = httpx.get(signed, headers={"Range": "bytes=100-199"}, timeout=60)
        assert part.status_code == 206 and part.content == body.content[100:200]
        head = client.head(done["downloadUrl"])
        assert head.status_code == 200
        assert int(head.headers["content-length"]) == len(body.content)
        # The editor's plain GET follows the redirect like a browser does.
        assert client.get(done["downloadUrl"], follow_redirects=True).content == body.content
    out = tmp_path / "out.mp4"
    out.write_bytes(body.content)
    prep = prepare(parse_config(cfg), [media_root.root])
    full_check(media_root, files, prep, out)
    assert not s3.list_multipart_uploads(Bucket=BUCKET, Prefix="farm/").get("Uploads")

    # A new cluster on the same bucket finds the job; deleting it removes every object.
    with running_api(tmp_path, **settings) as api, api.client() as client:
        listed = client.get("/api/export").json()
        assert "export-into-s3" in json.dumps(listed)
        assert client.get("/api/export/export-into-s3/status").json()["status"] == "completed"
        assert client.delete("/api/export/export-into-s3").status_code == 200
        assert client.get("/api/export/export-into-s3/status").status_code == 404
    assert not s3.list_objects_v2(Bucket=BUCKET, Prefix="farm/exports/export-into-s3/"
                                  ).get("Contents")


JOB_CFG = {"version": 1, "id": "export-1", "sources": [{"filePath": "a.mp4"}],
           "segments": [{"sourceIndex": 0, "startTime": 0, "endTime": 1}],
           "output": {"format": "mp4"}}


@pytest.mark.parametrize("damage", [b"{not json", None])
def test_a_bucket_store_keeps_jobs_like_a_folder(bucket: obs.S3Location,
                                                 damage: bytes | None) -> None:
    """The job documents in a bucket: the status book reloads them, a damaged status is a
    failed job (written back readable), progress writes are thinned, removals are whole."""
    root = obs.S3Location(BUCKET, f"store-{'none' if damage is None else 'bad'}")
    store = BucketStore(root)
    book = StatusBook(store)
    book.create("export-1", JOB_CFG, 0)
    assert store.read_config("export-1") == JOB_CFG
    assert store.read_status("export-1") is not None
    s3 = obs.s3_client()
    status_key = root.object("export-1/status.json").key
    first = s3.head_object(Bucket=BUCKET, Key=status_key)["ETag"]
    for _ in range(3):  # progress only: at most one write per BUCKET_PROGRESS_INTERVAL
        store.write_status_data("export-1", {"progress": "tick"}, durable=False)
    assert s3.head_object(Bucket=BUCKET, Key=status_key)["ETag"] == first
    if damage is None:
        s3.delete_object(Bucket=BUCKET, Key=status_key)
    else:
        s3.put_object(Bucket=BUCKET, Key=status_key, Body=damage)
    reloaded = StatusBook(store)
    status = reloaded.get("export-1")
    assert status.status == JobState.FAILED and status.error is not None
    assert "status file" in status.error
    assert json.loads(s3.get_object(Bucket=BUCKET, Key=status_key)["Body"].read()
                      )["status"] == "failed"
    # An upload a killed writer left open, and an output: removed with the outputs only.
    key = root.object("export-1/output.mp4").key
    s3.create_multipart_upload(Bucket=BUCKET, Key=key)
    s3.put_object(Bucket=BUCKET, Key=key + ".old", Body=b"x")
    store.remove_outputs("export-1")
    assert not s3.list_multipart_uploads(Bucket=BUCKET, Prefix=root.prefix).get("Uploads")
    left = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=root.prefix)["Contents"]}
    assert left == {root.object("export-1/config.json").key, status_key}
    store.remove_job("export-1")
    assert not s3.list_objects_v2(Bucket=BUCKET, Prefix=root.prefix).get("Contents")
    store.write_status_data("export-1", status.to_file(), durable=True)  # a late write
    assert not s3.list_objects_v2(Bucket=BUCKET, Prefix=root.prefix).get("Contents")
    with pytest.raises(JobNotFoundError):
        store.read_config("../export-1")


@pytest.mark.parametrize("layout", ["coarse", "fine"])
def test_a_masked_reader_reads_everything_but_the_masked_samples(
        bucket: obs.S3Location, layout: str) -> None:
    """Camera files interleave audio every ~second (coarse), FFmpeg/OBS every frame (fine)."""
    rng = np.random.default_rng(11)
    data = rng.integers(0, 256, 4 << 20, dtype=np.uint8).tobytes()
    ref = ROOT.object(f"blobs/masked-{layout}.bin")
    obs.s3_client().put_object(Bucket=BUCKET, Key=ref.key, Body=data)
    if layout == "coarse":  # 200-300 KB of "video" between 2-5 KB of "audio"
        sizes, gaps = rng.integers(200_000, 300_000, 15), rng.integers(2000, 5000, 15)
    else:  # 2-9 KB of video between 0-3 KB of audio
        sizes, gaps = rng.integers(2000, 9000, 300), rng.integers(0, 3000, 300)
    offsets = 4096 + np.cumsum(gaps + sizes) - sizes
    expected = bytearray(data)
    for o, s in zip(offsets, sizes, strict=True):
        expected[o:o + s] = bytes(int(s))
    file = StoredFile(obs.stat(ref))
    reader = file.demux_input((offsets, sizes))
    assert reader.read() == bytes(expected)
    unmasked = len(data) - int(sizes.sum())
    # The masked bytes are never fetched, and each unmasked span (4 MiB at most) is one GET.
    assert file.stats.bytes_requested == unmasked, file.stats
    spans = int(np.count_nonzero(gaps)) + 1  # an empty gap joins two masked samples
    assert file.stats.requests <= spans, (file.stats, spans)
    for _ in range(200):  # seeks and reads of every size, as a demuxer makes them
        pos = int(rng.integers(0, len(data)))
        n = int(rng.integers(0, 70_000))
        reader.seek(pos)
        assert reader.read(n) == bytes(expected[pos:pos + n])
