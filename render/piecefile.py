"""A piece file: encoded video packets of one re-encoded piece, exactly as the encoder gave them.

Pieces are made by one worker and joined by another (the concat step may run on another
node), so they travel as files. A container would re-time or rewrite packets on the way;
this format stores the packets' bytes, pts/dts/duration and keyframe flag verbatim, plus the
encoder's extradata, and nothing else:

    b"CFPIECE1" | u32 header length | header JSON | records...
    record = <q pts> <q dts> <q duration> <I size> <B flags> | size bytes

A piece is written to ``<name>.part`` and renamed when complete, so a reader never sees a
half-written piece under its final name. In one process the audio's packets also go
straight to the muxer while they are encoded, through a PacketChannel.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Protocol

MAGIC = b"CFPIECE1"
_RECORD = struct.Struct("<qqqIB")
_FLAG_KEY = 1


@dataclass(frozen=True)
class PieceHeader:
    codec: str
    extradata: bytes
    time_base: Fraction
    width: int
    height: int
    frames: int = 0


@dataclass(frozen=True)
class StoredPacket:
    pts: int
    dts: int
    duration: int
    is_keyframe: bool
    data: bytes


class PieceWriter:
    """Write packets; ``close()`` publishes the file, ``abort()`` removes it."""

    def __init__(self, path: Path, header: PieceHeader) -> None:
        self.path = path
        self.tmp = path.with_name(path.name + ".part")
        self.header = header
        self._fh: BinaryIO | None = None
        self.count = 0

    def __enter__(self) -> PieceWriter:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        if et is None:
            self.close()
        else:
            self.abort()

    def _open(self, header: PieceHeader) -> BinaryIO:
        fh = self.tmp.open("wb")
        meta = json.dumps({
            "codec": header.codec,
            "extradata": header.extradata.hex(),
            "time_base": [header.time_base.numerator, header.time_base.denominator],
            "width": header.width,
            "height": header.height,
        }).encode()
        fh.write(MAGIC + struct.pack("<I", len(meta)) + meta)
        return fh

    def set_extradata(self, extradata: bytes) -> None:
        """Encoders may only produce extradata once opened; set it before the first write."""
        if self._fh is not None:
            raise RuntimeError("extradata must be set before the first packet")
        self.header = PieceHeader(self.header.codec, extradata, self.header.time_base,
                                  self.header.width, self.header.height)

    def write(self, pts: int, dts: int, duration: int, is_keyframe: bool, data: bytes) -> None:
        if self._fh is None:
            self._fh = self._open(self.header)
        self._fh.write(_RECORD.pack(pts, dts, duration, len(data), _FLAG_KEY if is_keyframe else 0))
        self._fh.write(data)
        self.count += 1

    def close(self) -> None:
        if self._fh is None:
            self._fh = self._open(self.header)
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self.tmp.replace(self.path)

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
        self.tmp.unlink(missing_ok=True)


def read_header(path: Path) -> PieceHeader:
    with path.open("rb") as fh:
        return _read_header(fh, path)


def _read_header(fh: BinaryIO, path: Path) -> PieceHeader:
    magic = fh.read(len(MAGIC))
    if magic != MAGIC:
        raise ValueError(f"{path.name} is not a piece file")
    (n,) = struct.unpack("<I", fh.read(4))
    meta = json.loads(fh.read(n))
    return PieceHeader(
        codec=str(meta["codec"]),
        extradata=bytes.fromhex(meta["extradata"]),
        time_base=Fraction(int(meta["time_base"][0]), int(meta["time_base"][1])),
        width=int(meta["width"]),
        height=int(meta["height"]),
    )


def read_packets(path: Path) -> Iterator[StoredPacket]:
    with path.open("rb") as fh:
        _read_header(fh, path)
        while True:
            head = fh.read(_RECORD.size)
            if not head:
                return
            if len(head) < _RECORD.size:
                raise ValueError(f"piece {path.name} is truncated")
            pts, dts, duration, size, flags = _RECORD.unpack(head)
            data = fh.read(size)
            if len(data) < size:
                raise ValueError(f"piece {path.name} is truncated")
            yield StoredPacket(pts, dts, duration, bool(flags & _FLAG_KEY), data)


class PacketSink(Protocol):
    """Where a piece's packets go as they are encoded: a piece file, or a channel."""

    def write(self, pts: int, dts: int, duration: int, is_keyframe: bool,
              data: bytes) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


class ChannelClosed(Exception):
    """The other end of a PacketChannel gave up (its own error says why)."""


class PacketChannel:
    """A piece's packets from the thread that encodes them to the thread that muxes them,
    in order, at most ``capacity`` waiting, and to a piece file at ``spill``.

    In one process the muxer need not wait for the whole audio track: the audio is
    encoded while the video is assembled, each on its own core. A second ``packets()``
    (the muxer writing the output again) reads the file once it is complete, and from then
    on the writer queues nothing. Either end may stop: a writer's ``abort`` or a reader's
    ``cancel`` makes the other end raise ChannelClosed.
    """

    _END = object()

    def __init__(self, spill: Path, header: PieceHeader, capacity: int = 512) -> None:
        self.spill = spill
        self._file = PieceWriter(spill, header)
        self._queue: queue.Queue[object] = queue.Queue(capacity)
        self._cancelled = threading.Event()
        self._detached = threading.Event()  # no live reader: write the file only
        self._done = threading.Event()
        self._reads = 0

    # the encoding end (PacketSink)
    def write(self, pts: int, dts: int, duration: int, is_keyframe: bool, data: bytes) -> None:
        self._file.write(pts, dts, duration, is_keyframe, data)
        self._put(StoredPacket(pts, dts, duration, is_keyframe, data))

    def close(self) -> None:
        self._file.close()
        self._done.set()
        self._put(self._END)

    def abort(self) -> None:
        self._file.abort()
        self._cancelled.set()
        self._done.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(ChannelClosed("the writer stopped"))

    def _put(self, item: object) -> None:
        while not self._cancelled.is_set():
            if self._detached.is_set():
                return
            with contextlib.suppress(queue.Full):
                self._queue.put(item, timeout=0.1)
                return
        raise ChannelClosed("the reader stopped")

    # the muxing end
    def packets(self) -> Iterator[StoredPacket]:
        self._reads += 1
        if self._reads == 1:
            return self._live()
        self._detached.set()  # the first reader is abandoned
        return self._replay()

    def _live(self) -> Iterator[StoredPacket]:
        try:
            while True:
                try:
                    item = self._queue.get(timeout=0.1)
                except queue.Empty:
                    if self._cancelled.is_set():
                        raise ChannelClosed("the writer stopped") from None
                    continue
                if item is self._END:
                    return
                if isinstance(item, ChannelClosed):
                    raise item
                assert isinstance(item, StoredPacket)
                yield item
        finally:
            self._detached.set()

    def _replay(self) -> Iterator[StoredPacket]:
        while not self._done.wait(0.1):
            if self._cancelled.is_set():
                break
        if self._cancelled.is_set() or not self.spill.exists():
            raise ChannelClosed("the writer stopped")
        yield from read_packets(self.spill)

    def cancel(self) -> None:
        self._cancelled.set()
