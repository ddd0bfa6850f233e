"""Probe results are kept per version of a file (render/probecache.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from render import objectstore as obs
from render.errors import CorruptMediaError
from render.probecache import BYTES_PER_SAMPLE, ProbeCache, version_key
from render.sourcefile import LocalFile, StoredFile
from tests.conftest import MediaRoot as Media


def _copy(media_root: Media, name: str, tmp_path: Path, as_name: str = "cam.mp4") -> Path:
    path = tmp_path / as_name
    shutil.copyfile(media_root.sources / name, path)
    return path


def test_the_same_file_is_probed_once(media_root: Media, tmp_path: Path) -> None:
    path = _copy(media_root, "h264_a.mp4", tmp_path)
    cache = ProbeCache()
    first = cache.probe(LocalFile.at(path))
    again = cache.probe(LocalFile.at(path))
    assert again is first
    assert (cache.hits, cache.misses) == (1, 1)


def test_a_changed_file_is_probed_again(media_root: Media, tmp_path: Path) -> None:
    path = _copy(media_root, "h264_a.mp4", tmp_path)
    cache = ProbeCache()
    first = cache.probe(LocalFile.at(path))
    # Another recording under the same name (same size or not): a new version.
    shutil.copyfile(media_root.sources / "h264_b.mp4", path)
    second = cache.probe(LocalFile.at(path))
    assert second is not first and cache.misses == 2
    # Only touched: its modification time alone makes it another version.
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert cache.probe(LocalFile.at(path)) is not second
    assert cache.misses == 3


def test_errors_are_not_kept(media_root: Media, tmp_path: Path) -> None:
    path = _copy(media_root, "truncated.mp4", tmp_path)
    cache = ProbeCache()
    for _ in range(2):
        with pytest.raises(CorruptMediaError):
            cache.probe(LocalFile.at(path))
    assert cache.misses == 2
    shutil.copyfile(media_root.sources / "h264_a.mp4", path)  # the user fixes the file
    assert cache.probe(LocalFile.at(path)).video.index.count > 0


def test_the_cache_keeps_within_its_bytes(media_root: Media, tmp_path: Path) -> None:
    a = _copy(media_root, "h264_a.mp4", tmp_path, "a.mp4")
    b = _copy(media_root, "h264_b.mp4", tmp_path, "b.mp4")
    probe_a = ProbeCache().probe(LocalFile.at(a))
    weight = BYTES_PER_SAMPLE * probe_a.video.index.count
    cache = ProbeCache(max_bytes=weight + weight // 2)  # room for one of them
    cache.probe(LocalFile.at(a))
    cache.probe(LocalFile.at(b))  # pushes a out
    cache.probe(LocalFile.at(b))
    cache.probe(LocalFile.at(a))
    assert (cache.hits, cache.misses) == (1, 3)


def test_an_object_version_is_its_etag() -> None:
    ref = obs.ObjectRef("cams", "show/sources/a.mp4")
    one = StoredFile(obs.ObjectInfo(ref, 100, '"e1"'))
    assert version_key(one) == version_key(StoredFile(obs.ObjectInfo(ref, 100, '"e1"')))
    assert version_key(one) != version_key(StoredFile(obs.ObjectInfo(ref, 100, '"e2"')))
    other = obs.ObjectRef("cams", "show/sources/b.mp4")
    assert version_key(one) != version_key(StoredFile(obs.ObjectInfo(other, 100, '"e1"')))
