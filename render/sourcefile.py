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

import io
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

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

    @property
    def demux_options(self) -> dict[str, str]:
        """FFmpeg's options for opening it (its defaults)."""
        return {}

    def demux_input(self, skip: tuple[npt.ArrayLike, npt.ArrayLike] | None = None) -> str:
        """What ``av.open`` gets: FFmpeg reads a local path itself, faster than through
        Python (``skip`` matters only for a stored file)."""
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

    @property
    def demux_options(self) -> dict[str, str]:
        """FFmpeg's options for opening it: probe no further than the first packets (the
        codec parameters are the moov's; FFmpeg would read 5 MB of media by default)."""
        return {"probesize": "32"}

    def demux_input(self, skip: tuple[npt.ArrayLike, npt.ArrayLike] | None = None
                    ) -> BinaryIO:
        """A file for FFmpeg; ``skip``: (offsets, sizes) of samples it will not read (the
        video's, when demuxing the audio), never fetched."""
        return MaskedReader(self, *skip) if skip is not None else self.open()


SourceFile = LocalFile | StoredFile


def as_source_file(source: SourceFile | Path | str) -> SourceFile:
    """``source`` itself, or the local file at that path."""
    if isinstance(source, LocalFile | StoredFile):
        return source
    return LocalFile.at(source)


def read_samples(file: SourceFile, spans: Iterable[tuple[int, int]], *, in_flight: int = 4,
                 stats: ReadStats | None = None) -> Generator[bytes, None, None]:
    """The bytes of each ``(offset, size)`` of ``file``, in order; from a bucket, with up
    to ``in_flight`` GETs under way, counted in ``stats`` (the file's ``sample_stats``
    unless given).

    Raises CorruptMediaError when the file ends inside a span (a truncated recording).
    """
    if isinstance(file, StoredFile):
        wanted = list(spans)
        fetched = read_ranges(file.info, wanted, read_ahead=in_flight - 1,
                              stats=file.sample_stats if stats is None else stats)
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


#: A masked reader fetches the unmasked spans it may need in batches: the next 4 spans
#: after a seek (opening a file, a segment's start), doubling up to 64 while the demuxer
#: reads on, and never more than MASK_BATCH_BYTES in one batch. Counted in spans, not in
#: bytes of the file, so that a batch asks for a few audio chunks whether the video between
#: them is 2 KB or 2 MB a frame, and what it fetches past a segment's end stays small.
MASK_FIRST_SPANS = 4
MASK_BATCH_SPANS = 64
MASK_BATCH_BYTES = 4 << 20
#: ... keeps up to this many of the bytes it fetched (a demuxer seeks back a little at
#: every segment) ...
MASK_KEPT_BYTES = 32 << 20
#: ... and fetches each span apart, however small, with this many GETs under way: merging
#: two audio chunks would fetch the video frame between them, and in a finely interleaved
#: file (a few hundred bytes of audio after every frame) that is the video all over again.
MASK_IN_FLIGHT = 16


class MaskedReader(io.RawIOBase, BinaryIO):
    """A stored source for a demuxer that reads only some of its streams.

    FFmpeg reads an MP4 through a 32 KiB buffer, so demuxing only the audio of a segment
    still reads every video sample in it. Here the video samples' bytes (known from the
    index) read as zeros and are not fetched -- the demuxer skips those packets unread --
    and the bytes between them (audio, boxes) are fetched in batches, several GETs in
    flight. Memory: ``MASK_KEPT_BYTES`` plus one batch.
    """

    def __init__(self, file: StoredFile, offsets: npt.ArrayLike, sizes: npt.ArrayLike) -> None:
        super().__init__()
        order = np.argsort(np.asarray(offsets, dtype=np.int64), kind="stable")
        self._starts = np.asarray(offsets, dtype=np.int64)[order]
        self._ends = self._starts + np.asarray(sizes, dtype=np.int64)[order]
        self._file = file
        self._pos = 0
        self._have: list[tuple[int, bytes]] = []  # fetched (offset, bytes), oldest first
        self._batch = MASK_FIRST_SPANS
        self._reached = -1  # end of the last batch

    @property
    def name(self) -> str:
        return self._file.name

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET, /) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._file.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any, /) -> int:
        view = memoryview(buffer).cast("B")
        end = min(self._pos + len(view), self._file.size)
        pos = self._pos
        while pos < end:
            i = int(np.searchsorted(self._ends, pos, side="right"))
            if i < len(self._starts) and self._starts[i] <= pos:  # inside a video sample
                stop = min(end, int(self._ends[i]))
                view[pos - self._pos:stop - self._pos] = bytes(stop - pos)
            else:
                stop = min(end, int(self._starts[i]) if i < len(self._starts) else end)
                data = self._bytes(pos, stop)
                view[pos - self._pos:stop - self._pos] = data
            pos = stop
        n = end - self._pos
        self._pos = end
        return max(n, 0)

    def _bytes(self, lo: int, hi: int) -> bytes:
        for off, data in reversed(self._have):
            if off <= lo and hi <= off + len(data):
                return data[lo - off:hi - off]
        self._fetch_from(lo, hi)
        return self._bytes(lo, hi)

    def _gaps(self, lo: int, count: int, budget: int) -> list[tuple[int, int]]:
        """Up to ``count`` unmasked spans from ``lo`` on, as (offset, size), cut off once
        they hold ``budget`` bytes."""
        out: list[tuple[int, int]] = []
        pos = lo
        i = int(np.searchsorted(self._ends, pos, side="right"))
        size = self._file.size
        while pos < size and len(out) < count and budget > 0:
            if i < len(self._starts) and self._starts[i] <= pos:
                pos = int(self._ends[i])
                i += 1
                continue
            stop = min(size, int(self._starts[i]) if i < len(self._starts) else size,
                       pos + budget)
            out.append((pos, stop - pos))
            budget -= stop - pos
            pos = stop
        return out

    def _fetch_from(self, lo: int, hi: int) -> None:
        # Reading on from the last batch (only masked bytes skipped between) doubles the
        # batch; anything else is a seek.
        onwards = lo >= self._reached >= 0 and not self._gaps(self._reached, 1, lo - self._reached)
        self._batch = min(2 * self._batch, MASK_BATCH_SPANS) if onwards else MASK_FIRST_SPANS
        ranges = self._gaps(lo, self._batch, max(MASK_BATCH_BYTES, hi - lo))
        self._reached = ranges[-1][0] + ranges[-1][1]
        fetched = read_ranges(self._file.info, ranges, stats=self._file.stats,
                              max_gap=0, waste_ratio=0.0, read_ahead=MASK_IN_FLIGHT - 1)
        self._have += [(a, bytes(data)) for (a, _), data in zip(ranges, fetched, strict=True)]
        kept = 0
        for k in range(len(self._have) - 1, -1, -1):
            kept += len(self._have[k][1])
            if kept > MASK_KEPT_BYTES:
                del self._have[:k]
                break
