"""Where a source's bytes come from: a file on a disk, or an object in S3.

The engine reads a source three ways, and each kind of file answers them its own best way:

- as a stream FFmpeg demuxes (codec parameters at probe, the audio, the output template):
  a local path goes to FFmpeg's own file I/O; an object goes as a :class:`RangedReader`
  (ranged GETs with a page cache and read-ahead);
- as a seekable file the indexers read box and element headers from (:meth:`open`);
- as the samples of a piece at offsets the index gives (:func:`read_samples`): seek and
  read on a disk; on S3 one list of ranges merged into a few large GETs, so a piece
  fetches the bytes it uses and almost nothing else.

Both kinds are small frozen values that pickle: a probe on one node hands the same
:class:`StoredFile` (and so the same pinned ETag) to every worker of a job, and all of them
read the one version the probe saw, or fail with ObjectChangedError.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .errors import CorruptMediaError
from .objectstore import ObjectInfo, RangedReader, ReadStats, read_ranges


@dataclass(frozen=True)
class LocalFile:
    """A file on a disk this process can see (a local or shared volume)."""

    path: Path
    size: int

    @classmethod
    def at(cls, path: Path | str) -> LocalFile:
        """The file at ``path`` now (OSError as ``stat`` raises it)."""
        path = Path(path)
        return cls(path, path.stat().st_size)

    @property
    def name(self) -> str:
        return self.path.name

    def open(self) -> BinaryIO:
        return self.path.open("rb")

    def demux_input(self) -> str:
        """What ``av.open`` gets: FFmpeg reads a local path itself, faster than through
        Python."""
        return str(self.path)


@dataclass(frozen=True)
class StoredFile:
    """One version of an S3 object, as a HEAD saw it (size and ETag pinned)."""

    info: ObjectInfo
    #: Requests and bytes in this process (benchmarks), of the file objects this value
    #: opened (probe, indexes, audio, template) and of its sample reads (pieces).
    stats: ReadStats = field(default_factory=ReadStats, compare=False, repr=False)
    sample_stats: ReadStats = field(default_factory=ReadStats, compare=False, repr=False)

    @property
    def path(self) -> Path:
        """The object's key as a path: for names and suffixes only, never opened."""
        return Path(self.info.ref.key)

    @property
    def size(self) -> int:
        return self.info.size

    @property
    def name(self) -> str:
        return self.info.ref.name

    @property
    def url(self) -> str:
        return self.info.url

    def open(self) -> BinaryIO:
        return RangedReader(self.info, stats=self.stats)

    def __reduce__(self) -> tuple[type[StoredFile], tuple[ObjectInfo]]:
        # Counters are per process (and hold a lock): a worker starts its own.
        return StoredFile, (self.info,)

    def demux_input(self) -> BinaryIO:
        return self.open()


SourceFile = LocalFile | StoredFile


def as_source_file(source: SourceFile | Path | str) -> SourceFile:
    """``source`` itself, or the local file at that path."""
    if isinstance(source, LocalFile | StoredFile):
        return source
    return LocalFile.at(source)


def read_samples(file: SourceFile, spans: Iterable[tuple[int, int]]
                 ) -> Generator[bytes, None, None]:
    """The bytes of each ``(offset, size)`` of ``file``, in order.

    Raises CorruptMediaError when the file ends inside a span (a truncated recording).
    """
    if isinstance(file, StoredFile):
        wanted = list(spans)
        fetched = read_ranges(file.info, wanted, stats=file.sample_stats)
        for (offset, size), data in zip(wanted, fetched, strict=True):
            if len(data) != size:
                raise _truncated(file, offset)
            yield data
        return
    with file.path.open("rb", buffering=0) as fh:
        for offset, size in spans:
            fh.seek(offset)
            data = fh.read(size)
            if len(data) != size:
                raise _truncated(file, offset)
            yield data


def _truncated(file: SourceFile, offset: int) -> CorruptMediaError:
    return CorruptMediaError(
        f"source file {file.name!r} is truncated: a sample at byte {offset} is incomplete")
