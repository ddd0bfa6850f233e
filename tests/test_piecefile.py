"""PacketChannel (render/piecefile.py): the audio handed to the muxer while it is encoded.

Real threads, a real spill file; each test bounds its waits so a deadlock fails the test
instead of hanging the suite.
"""

from __future__ import annotations

import threading
from fractions import Fraction
from pathlib import Path

import pytest

from render.piecefile import ChannelClosed, PacketChannel, PieceHeader, read_packets

HEADER = PieceHeader("aac", b"", Fraction(1, 48000), 0, 0)
COUNT = 2000  # well beyond the queue's capacity: the writer must wait for the reader


def _writer(channel: PacketChannel, count: int = COUNT,
            fail_at: int | None = None) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            for i in range(count):
                if i == fail_at:
                    raise RuntimeError("the audio source is damaged")
                channel.write(i * 1024, i * 1024, 1024, True, i.to_bytes(4, "big"))
            channel.close()
        except BaseException as exc:
            channel.abort()
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def _ended(thread: threading.Thread) -> bool:
    thread.join(20)
    return not thread.is_alive()


def _numbers(packets: list[object]) -> list[int]:
    return [int.from_bytes(p.data, "big") for p in packets]  # type: ignore[attr-defined]


def test_the_reader_gets_every_packet_in_order_while_it_is_written(tmp_path: Path) -> None:
    channel = PacketChannel(tmp_path / "audio.piece", HEADER, capacity=16)
    thread, errors = _writer(channel)
    got = list(channel.packets())
    assert _ended(thread) and not errors
    assert _numbers(got) == list(range(COUNT))
    assert [p.pts for p in got] == [i * 1024 for i in range(COUNT)]
    assert _numbers(list(read_packets(tmp_path / "audio.piece"))) == list(range(COUNT))


def test_a_second_reading_replays_the_file_even_when_the_first_was_abandoned(
        tmp_path: Path) -> None:
    # The muxer writing the output again (a surprise, a small index reservation) drops its
    # first reader half-way, with the writer waiting on a full queue.
    channel = PacketChannel(tmp_path / "audio.piece", HEADER, capacity=16)
    thread, errors = _writer(channel)
    first = channel.packets()
    assert _numbers([next(first) for _ in range(100)]) == list(range(100))
    again: list[object] = []
    reader = threading.Thread(target=lambda: again.extend(channel.packets()), daemon=True)
    reader.start()
    assert _ended(reader) and _ended(thread) and not errors
    assert _numbers(again) == list(range(COUNT))


@pytest.mark.parametrize("reading", ["live", "replay"])
def test_a_failed_writer_stops_the_reader(tmp_path: Path, reading: str) -> None:
    channel = PacketChannel(tmp_path / "audio.piece", HEADER, capacity=16)
    if reading == "replay":
        channel.packets()  # a first reading, never read
    thread, errors = _writer(channel, fail_at=700)
    with pytest.raises(ChannelClosed):
        list(channel.packets())
    assert _ended(thread) and [str(e) for e in errors] == ["the audio source is damaged"]
    assert not (tmp_path / "audio.piece").exists()  # no half a track left as if whole


def test_a_reader_that_gives_up_stops_the_writer(tmp_path: Path) -> None:
    channel = PacketChannel(tmp_path / "audio.piece", HEADER, capacity=16)
    thread, errors = _writer(channel)
    packets = channel.packets()
    next(packets)
    channel.cancel()
    assert _ended(thread)
    assert len(errors) == 1 and isinstance(errors[0], ChannelClosed)
