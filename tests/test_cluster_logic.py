"""The cluster's plain logic without Ray: status book, scheduling, messages, estimates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ray.exceptions import RayActorError

from cluster.coordinator import cut_groups, failure_message, progress_message
from cluster.errors import AdmissionError, JobConflictError, JobNotFoundError
from cluster.jobs import JobState, PiecePlacement, config_hash
from cluster.preflight import estimate_output_bytes
from cluster.scheduling import encode_memory, piece_tasks
from cluster.settings import MediaRoot, Settings, SettingsError, parse_media_roots, to_env
from cluster.status import StatusBook
from cluster.store import JobStore
from render.config import parse_config
from render.engine import prepare
from render.errors import CorruptMediaError
from render.plan import CopyPiece, EncodePiece
from serve_app.cli import main as cli_main
from tests.conftest import MediaRoot as Media

CFG = {"version": 1, "id": "export-logic", "sources": [{"filePath": "h264_a.mp4"},
                                                      {"filePath": "h264_b.mp4"}],
       "segments": [{"sourceIndex": 0, "startTime": 0.4, "endTime": 2.5},
                    {"sourceIndex": 1, "startTime": 2.5, "endTime": 4.1}],
       "output": {}}


def test_status_book_is_idempotent_final_and_reloads(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "exports")
    book = StatusBook(store)
    status, created = book.create("export-1", CFG, 0)
    assert created and status.status == JobState.PENDING and status.seq == 1
    again, created = book.create("export-1", dict(CFG, status="processing"), 0)
    assert not created and again.seq == 1  # the editor's status field is ignored
    with pytest.raises(JobConflictError):
        book.create("export-1", dict(CFG, projectName="other"), 0)
    book.update("export-1", status=JobState.PROCESSING, bytes_total=1000, frames_total=0,
                pixels_per_frame=1)
    book.report_work("export-1", "piece-0", bytes_=500)
    assert 0.4 < book.get("export-1").progress < 0.6
    book.update("export-1", status=JobState.COMPLETED, message="Export complete")
    book.update("export-1", status=JobState.FAILED, error="late")  # terminal is final
    book.report_work("export-1", "piece-0", bytes_=510)
    done = book.get("export-1")
    assert done.status == JobState.COMPLETED and done.progress == 1.0 and done.error is None
    on_disk = json.loads((tmp_path / "exports" / "export-1" / "status.json").read_text())
    assert on_disk["status"] == "completed" and on_disk["jobId"] == "export-1"
    reloaded = StatusBook(store)
    assert reloaded.get("export-1").status == JobState.COMPLETED
    assert reloaded.create("export-2", CFG, 0)[0].seq == 2
    with pytest.raises(JobNotFoundError):
        reloaded.get("export-3")
    with pytest.raises(JobNotFoundError):
        store.job_dir("../etc")


def test_config_hash_ignores_status_only() -> None:
    assert config_hash(CFG) == config_hash(dict(CFG, status="completed"))
    assert config_hash(CFG) != config_hash(dict(CFG, id="export-other"))


def test_settings_from_env_and_back() -> None:
    env = {"CUTFARM_MEDIA_ROOTS": "/data/media,/mnt/cam", "CUTFARM_PORT": "9000",
           "CUTFARM_API_TOKEN": "t", "CUTFARM_CORS_ORIGINS": "https://a, https://b",
           "CUTFARM_ACCESS_LOG": "1"}
    s = Settings.from_env(env)
    assert s.access_log and not Settings.from_env({}).access_log
    assert s.media_roots == (MediaRoot(Path("/data/media")), MediaRoot(Path("/mnt/cam")))
    assert s.port == 9000 and s.token == "t" and s.cors_origins == ("https://a",
                                                                        "https://b")
    assert Settings.from_env(to_env(s)) == s
    with pytest.raises(SettingsError, match="CUTFARM_PORT"):
        Settings.from_env({"CUTFARM_PORT": "http"})


@pytest.mark.parametrize("item", ["/mnt/cam=disk-a", "/x=Bad Name", "./cams=cam-b"])
def test_node_local_volume_roots_are_refused(item: str) -> None:
    """``PATH=NAME`` (a node-local volume) was removed: refused, saying what to use."""
    with pytest.raises(SettingsError) as exc:
        Settings.from_env({"CUTFARM_MEDIA_ROOTS": f"/data/media,{item}"})
    message = str(exc.value)
    assert message.startswith(f"CUTFARM_MEDIA_ROOTS: {item!r} has the form PATH=NAME")
    assert "node-local volumes are no longer supported" in message
    assert "a folder every node sees at the same path" in message and "s3://" in message
    # The same from the command line, naming the flag.
    with pytest.raises(SettingsError, match=r"^--media-root: .*no longer supported"):
        parse_media_roots(item, "--media-root")


def test_serve_refuses_a_node_local_volume_root(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("CUTFARM_MEDIA_ROOTS", raising=False)
    assert cli_main(["serve", "--media-root", "/srv/cam-a=cam-a"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cutfarm: --media-root: '/srv/cam-a=cam-a' has the form PATH=NAME")
    assert "node-local volumes are no longer supported" in err


def test_pieces_messages_and_estimates(media_root: Media) -> None:
    prep = prepare(parse_config(CFG), [media_root.root])
    plan = prep.plan
    groups = cut_groups(plan)
    # Cut 0 (edit-in: head of segment 0), cut 1 (tail of 0 + head of 1), cut 2 (tail of 1).
    assert len(groups) == 3
    assert progress_message(plan, set()) == "Re-encoding cut 1 of 3"
    assert progress_message(plan, set(groups[0])) == "Re-encoding cut 2 of 3"
    everything = {i for g in groups for i in g}
    assert progress_message(plan, everything) == "Assembling the output"
    est = estimate_output_bytes(prep)
    assert est > plan.copy_bytes
    tasks = piece_tasks(prep, "export-logic")
    assert [t.index for t in tasks] == [i for i, p in enumerate(plan.pieces)
                                        if isinstance(p, EncodePiece)]
    assert all(t.name.startswith("export-logic:seg") for t in tasks)
    fmt = plan.out_format
    assert all(t.kind == "encode" and t.num_cpus == 1.0
               and t.memory == encode_memory(fmt.width, fmt.height, fmt.pix_fmt) for t in tasks)
    assert any(isinstance(p, CopyPiece) for p in plan.pieces)


def test_failure_messages_are_sentences() -> None:
    assert failure_message(CorruptMediaError("source file 'a.mp4' is truncated")) == (
        "source file 'a.mp4' is truncated")
    assert "disk" in failure_message(AdmissionError("not enough disk space"))
    assert "worker stopped" in failure_message(RayActorError())
    assert "unexpectedly" in failure_message(KeyError("x"))


def test_reported_work_is_idempotent_and_retries_never_count_twice(tmp_path: Path) -> None:
    """Issue 12: a retried add_work call (or a retried task) counted its work twice."""
    book = StatusBook(JobStore(tmp_path / "exports"))
    book.create("export-1", CFG, 0)
    book.update("export-1", status=JobState.PROCESSING, frames_total=100, bytes_total=0,
                pixels_per_frame=1)
    book.report_work("export-1", "piece-0", frames=30)
    book.report_work("export-1", "piece-0", frames=30)  # the same call, retried
    book.report_work("export-1", "piece-1", frames=20)
    assert book.get("export-1").frames_done == 50
    book.report_work("export-1", "piece-0", frames=10)  # the task restarted from zero
    assert book.get("export-1").frames_done == 50
    book.report_work("export-1", "piece-0", frames=40)  # ... and went past its first try
    assert book.get("export-1").frames_done == 60
    book.update("export-1", status=JobState.PENDING, reset_work=True)  # runs again
    assert book.get("export-1").frames_done == 0
    book.report_work("export-1", "piece-0", frames=5)
    assert book.get("export-1").frames_done == 5


def test_the_status_document_does_not_grow_with_pieces(tmp_path: Path) -> None:
    book = StatusBook(JobStore(tmp_path / "exports"))
    book.create("export-1", CFG, 0)
    size = len(json.dumps(book.get("export-1").to_file()))
    for i in range(500):
        book.add_placement("export-1", PiecePlacement(index=i, kind="encode", node_id="n"))
    assert len(book.pieces("export-1")) == 500
    assert len(json.dumps(book.get("export-1").to_file())) == size


@pytest.mark.parametrize("damage", ["{not json", "", None])
def test_a_damaged_status_file_is_a_failed_job_that_is_swept(tmp_path: Path,
                                                            damage: str | None) -> None:
    """Issue 12: a corrupt status.json made the job vanish while its files stayed forever."""
    store = JobStore(tmp_path / "exports")
    StatusBook(store).create("export-1", CFG, 0)
    path = tmp_path / "exports" / "export-1" / "status.json"
    if damage is None:
        path.unlink()
    else:
        path.write_text(damage)
    reloaded = StatusBook(store)
    status = reloaded.get("export-1")
    assert status.status == JobState.FAILED and status.finished_at is not None
    assert status.error is not None and "status file" in status.error
    # Written back readable, so the next start (and the retention sweep) sees it as is.
    on_disk = json.loads(path.read_text())
    assert on_disk["status"] == "failed" and on_disk["error"] == status.error
    assert [s.job_id for s in reloaded.list([JobState.FAILED])] == ["export-1"]


def test_secrets_are_secret_and_can_come_from_files(tmp_path: Path) -> None:
    """Issue 12: the token travelled in clear in every repr of the settings."""
    token_file = tmp_path / "token"
    token_file.write_text("file-token\n")
    s = Settings.from_env({"CUTFARM_API_TOKEN_FILE": str(token_file),
                           "CUTFARM_WEBHOOK_SECRET": "hook-secret"})
    assert s.token == "file-token" and s.webhook_key == "hook-secret"
    assert "file-token" not in repr(s) and "hook-secret" not in repr(s)
    assert "file-token" not in str(s.model_dump())
    # The variable itself wins over its file; a file that cannot be read is named.
    assert Settings.from_env({"CUTFARM_API_TOKEN": "direct",
                              "CUTFARM_API_TOKEN_FILE": str(token_file)}).token == "direct"
    with pytest.raises(SettingsError, match="CUTFARM_API_TOKEN_FILE"):
        Settings.from_env({"CUTFARM_API_TOKEN_FILE": str(tmp_path / "missing")})
    # Building settings directly reads no environment at all.
    assert Settings().token is None


def test_download_links_are_not_signed_with_the_token_itself() -> None:
    import hashlib
    import hmac

    from serve_app.security import check_download, download_url

    url = download_url("export-1", "the-token", now=1000.0)
    sig = url.split("sig=")[1]
    expires = url.split("expires=")[1].split("&")[0]
    raw = hmac.new(b"the-token", f"download:export-1:{expires}".encode(),
                   hashlib.sha256).hexdigest()
    assert sig != raw
    fresh = download_url("export-1", "the-token")
    check_download("the-token", "export-1", None, fresh.split("expires=")[1].split("&")[0],
                   fresh.split("sig=")[1])  # a fresh link still passes


def test_media_work_runs_at_batch_priority_in_a_thread_of_its_own() -> None:
    import os
    import threading

    from cluster.priority import BATCH_NICE, at_batch_priority

    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen = at_batch_priority(lambda: os.getpriority(os.PRIO_PROCESS,
                                                    threading.get_native_id()))
    assert seen == BATCH_NICE
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before

    def broken() -> None:
        raise CorruptMediaError("bad piece")

    with pytest.raises(CorruptMediaError, match="bad piece"):
        at_batch_priority(broken)
