"""Probe results kept for the next job that uses the same version of a file.

A probe of a long 4K camera file reads its whole index and the first bytes of every
keyframe: seconds, and thousands of ranged GETs from a bucket. A job probes its sources at
submit (the preflight that answers the editor) and again when it starts; an edit exported
twice, or a show cut into several exports, probes them again. Results are kept by what
identifies one version of a file: a local file's path, size, modification time and inode
(a file rewritten in place or replaced by another gets probed afresh); an object's URL,
size and ETag.

Bounded by the size of the indexes kept (``max_bytes``), least recently used first out.
Thread-safe: the prober actor serves several probes at once. Errors are never kept (the
user may fix the file and try again at once).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

from .media import SourceInfo
from .probe import probe
from .sourcefile import LocalFile, SourceFile, StoredFile

DEFAULT_MAX_BYTES = 64 << 20
#: Bytes an index entry weighs, per sample (pts, duration, size, offset, flags, lookups).
BYTES_PER_SAMPLE = 64


def version_key(file: SourceFile) -> Hashable:
    """What identifies this version of ``file`` (OSError if a local file is gone)."""
    if isinstance(file, StoredFile):
        info = file.info
        return ("s3", info.url, info.size, info.etag, info.version_id)
    assert isinstance(file, LocalFile)
    st = file.path.stat()
    return ("file", str(file.path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


class ProbeCache:
    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, tuple[SourceInfo, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def probe(self, file: SourceFile) -> SourceInfo:
        """``probe(file)``, or what it returned for this version of the file before."""
        try:
            key = version_key(file)
        except OSError:
            return probe(file)  # let the probe say what is wrong with it
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return found[0]
            self.misses += 1
        info = probe(file)
        weight = BYTES_PER_SAMPLE * info.video.index.count
        if weight <= self.max_bytes:
            with self._lock:
                if key not in self._entries:
                    self._entries[key] = (info, weight)
                    self._bytes += weight
                while self._bytes > self.max_bytes:
                    _, (_, w) = self._entries.popitem(last=False)
                    self._bytes -= w
        return info
