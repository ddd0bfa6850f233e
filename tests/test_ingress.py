"""Both ways HTTP reaches the API: Serve's proxy actor, and direct ingress into the replica.

The other HTTP tests run with direct ingress (what `cutfarm serve` uses with its own Ray);
here one whole export also runs through the proxy (what an attached cluster uses), and the
direct mode is shown to answer on the public port from the replica itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from serve_app.ingress import DIRECT_FLAG, ingress_environment
from serve_app.server import serving_url_or
from tests import mediagen as mg
from tests.http_support import poll, running_api


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ingress")
    (root / "sources").mkdir()
    mg.make_camera(root / "sources" / "cam.mp4", mg.CameraSpec(camera=1, seconds=3))
    return root


CONFIG = {"version": 1, "id": "export-ingress", "sources": [{"filePath": "cam.mp4"}],
          "segments": [{"sourceIndex": 0, "startTime": 0.5, "endTime": 2.2}],
          "output": {"format": "mp4", "codec": "copy"}}


@pytest.mark.parametrize("ingress", ["proxy", "direct"])
def test_an_export_end_to_end(root: Path, ingress: str) -> None:
    with running_api(root, ingress=ingress) as api, api.client() as client:
        proxy = serving_url_or("")
        # Direct: the replica holds the public port, Serve's proxy listens elsewhere.
        assert (proxy == api.base) is (ingress == "proxy")
        assert client.post("/api/export", json=CONFIG).status_code == 200
        done = poll(client, "export-ingress")
        assert done["status"] == "completed", done
        body = client.get(done["downloadUrl"]).content
        part = client.get(done["downloadUrl"], headers={"Range": "bytes=0-99"})
        assert part.status_code == 206 and part.content == body[:100]
        out = root / "exports" / "export-ingress" / "output.mp4"
        assert body == out.read_bytes()
        assert mg.decode_video(out).stamps == [(1, n) for n in range(15, 66)]
        assert client.delete("/api/export/export-ingress").status_code == 200


def test_ingress_environment_is_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DIRECT_FLAG, raising=False)
    with ingress_environment("direct", 8123):
        assert os.environ[DIRECT_FLAG] == "1"
        assert os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] == "8123"
        assert os.environ["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"] == "8124"
    assert DIRECT_FLAG not in os.environ
    with ingress_environment("proxy", 8123):
        assert DIRECT_FLAG not in os.environ


def test_nothing_answers_on_a_dead_port_is_one_sentence() -> None:
    from serve_app.errors import ServeRefusedError
    from serve_app.server import free_port, wait_direct_ingress

    with pytest.raises(ServeRefusedError, match="direct ingress"):
        wait_direct_ingress(f"http://127.0.0.1:{free_port()}", "10.0.0.1:6379", timeout=0.5)
