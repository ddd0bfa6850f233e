"""Decode exact source frames by feeding the decoder samples read straight from the file.

The sample index (offsets, sizes, pts) comes from the MP4 tables, so decoding starts at a
known random-access sample and feeds exactly the samples the plan names: no demuxer seek
that might land elsewhere, and every decoded frame maps back to its display index by pts.

Before the first wanted frame, only what the wanted frames depend on is decoded for real:
non-reference pictures are left out, and H.264 reference pictures that nothing decoded
uses go to the decoder as stand-ins, all of whose macroblocks are skipped (a few small
reads of slice headers decide which, for files on a disk; render/avcrefs.py says why this
is exact).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any

import av
import numpy as np

from . import avcrefs
from .errors import CorruptMediaError
from .media import SourceInfo
from .nal import NalError, disposable, parse_avcc
from .plan import EncodeRun
from .sidedata import new_extradata
from .sourcefile import LocalFile, read_samples

#: Pictures read ahead past the first wanted one when deciding which earlier reference
#: pictures anything decoded will use (render/avcrefs.py); their headers only.
LOOKAHEAD = 32
#: Bytes read for a sample's first NAL units, and for each later one's header.
HEAD_BYTES = 4096
MORE_BYTES = 512
#: Slices per picture followed one read each; beyond, every earlier picture counts as used.
MAX_SLICE_READS = 16


def source_samples(src: SourceInfo, decs: Iterable[int]) -> Generator[bytes, None, None]:
    """The bytes of each sample in ``decs`` (decode order numbers), in that order.

    Close the generator when stopping early: on S3 it has requests in flight.
    """
    offset, size = src.video.offset, src.video.index.size
    return read_samples(src.file, ((int(offset[d]), int(size[d])) for d in decs))


def open_decoder(src: SourceInfo, record: bytes | None = None, threads: int = 0
                 ) -> av.VideoCodecContext:
    ctx = av.CodecContext.create(src.video.format.codec, "r")
    assert isinstance(ctx, av.VideoCodecContext)
    record = record or src.video.extradata
    if record:
        ctx.extradata = record
    # Frame threads add latency, slice threads don't reorder: both are safe because frames
    # are matched back by pts, never by arrival order.
    ctx.thread_type = "AUTO"
    # 0: one thread per core, plus one. Each frame thread holds its own frames (a 4K
    # decoder: 208 MB so, 154 MB with one thread), so a caller sharing the machine with
    # other pieces says how many it may use.
    ctx.thread_count = threads
    ctx.open()
    return ctx


def decode_run(src: SourceInfo, run: EncodeRun, *,
               tee: Callable[[int, bytes], None] | None = None, threads: int = 0,
               ) -> Iterator[tuple[int, av.VideoFrame]]:
    """Yield (position in ``run.src_disp``, frame) for every requested frame, in order;
    ``tee`` sees each sample read (decode number, bytes) before the decoder does.

    A frame requested several times (frame-rate conversion) is yielded once per request.
    Raises CorruptMediaError when a requested frame never comes out of the decoder.
    """
    index = src.video.index
    wanted = run.src_disp
    j = 0
    current = src.video.record_of(run.decode_from)
    # Pictures shown before the first wanted frame matter only as references: those that
    # are none need no decoding (at a cut in mid-GOP, most of the B-frames before it), and
    # reference pictures nothing decoded uses are decoded as cheap stand-ins.
    first_wanted = int(wanted.min()) if len(wanted) else 0
    codec, length_size = src.video.format.codec, src.video.nal_length_size
    stand_ins = unused_references(src, run, first_wanted)
    ctx = open_decoder(src, current, threads)
    try:
        with contextlib.closing(source_samples(src, range(run.decode_from, run.decode_to))
                                ) as samples:
            for dec, data in zip(range(run.decode_from, run.decode_to), samples, strict=True):
                if tee is not None:
                    tee(dec, data)
                if (int(index.disp_of_dec[dec]) < first_wanted
                        and disposable(codec, data, length_size)):
                    continue
                picture = stand_ins.get(dec)
                packet = av.Packet(data if picture is None else _stand_in(data, length_size,
                                                                          picture))
                record = src.video.record_of(dec)
                if record != current:  # the source switches parameter sets here
                    new_extradata(record).to_packet(packet)
                    current = record
                packet.pts = int(index.pts[dec])
                packet.dts = packet.pts  # order is what matters to the decoder; pts maps back
                packet.time_base = index.time_base
                for frame in _decode(ctx, packet, src):
                    for out in _emit(frame, wanted, j, index.disp_pts, src):
                        j += 1
                        yield out
                if j >= len(wanted):
                    return
            for frame in _decode(ctx, None, src):
                for out in _emit(frame, wanted, j, index.disp_pts, src):
                    j += 1
                    yield out
    finally:
        _close(ctx)
    if j < len(wanted):
        missing = int(wanted[j])
        raise CorruptMediaError(
            f"source file {src.name!r}: frame {missing} could not be decoded "
            "(the file is damaged around that point)"
        )


def unused_references(src: SourceInfo, run: EncodeRun, first_wanted: int
                      ) -> dict[int, avcrefs.Picture]:
    """Reference pictures before the first wanted frame that nothing decoded uses, by
    decode number: they go to the decoder as stand-ins (render/avcrefs.py). Nothing when
    the stream uses what that model leaves out. (Non-reference pictures before it are left
    out by :func:`render.nal.disposable`, which keeps any that carries a parameter set.)"""
    # On a disk the header reads are a few page-cache hits; from a bucket they would be a
    # GET per sample on top of the decode's own coalesced ones (objects: bytes and GETs
    # first, the CPU second).
    if src.video.format.codec != "h264" or not isinstance(src.file, LocalFile):
        return {}
    disp = src.video.index.disp_of_dec
    frontier = next((d for d in range(run.decode_from, run.decode_to)
                     if int(disp[d]) >= first_wanted), run.decode_to)
    if frontier == run.decode_from:
        return {}
    end = min(run.decode_to, frontier + LOOKAHEAD)
    record = src.video.record_of(run.decode_from)
    if any(src.video.record_of(d) != record for d in range(run.decode_from, end)):
        return {}
    try:
        sps, pps = avcrefs.picture_maps(parse_avcc(record).parameter_sets)
        pictures = [avcrefs.parse_picture(units, reached_all, sps, pps)
                    for units, reached_all in _nal_heads(src, range(run.decode_from, end))]
        need = avcrefs.needed(pictures, frontier - run.decode_from, end == run.decode_to)
    except (avcrefs.Unmodelled, NalError, CorruptMediaError):
        return {}  # a damaged sample is reported where the decoder would need it
    return {run.decode_from + i: picture
            for i, picture in enumerate(pictures[:frontier - run.decode_from])
            if i not in need and picture is not None and picture.header.ref_idc
            and picture.header.slice_type != 2}


def _nal_heads(src: SourceInfo, decs: range) -> list[tuple[list[avcrefs.NalHead], bool]]:
    """Each sample's NAL unit heads, found with a few small reads per sample."""
    offset, size = src.video.offset, src.video.index.size
    length_size = src.video.nal_length_size
    heads: list[tuple[list[avcrefs.NalHead], bool]] = [([], False) for _ in decs]
    todo = {i: 0 for i in range(len(decs))}
    for round_ in range(MAX_SLICE_READS):
        if not todo:
            break
        want = HEAD_BYTES if round_ == 0 else MORE_BYTES
        order = sorted(todo)
        spans = [(int(offset[decs[i]]) + todo[i], min(int(size[decs[i]]) - todo[i], want))
                 for i in order]
        with contextlib.closing(read_samples(src.file, spans)) as chunks:
            for i, chunk in zip(order, chunks, strict=True):
                units, more = avcrefs.nal_heads(chunk, length_size, todo[i],
                                                int(size[decs[i]]))
                heads[i][0].extend(units)
                if more is None:
                    heads[i] = (heads[i][0], True)
                    del todo[i]
                else:
                    todo[i] = more
    return heads


def _stand_in(data: bytes, length_size: int, picture: avcrefs.Picture) -> bytes:
    try:
        return avcrefs.stand_in(data, length_size, picture)
    except (avcrefs.Unmodelled, NalError):
        return data  # decoded for real: slower, never wrong


def _close(ctx: av.VideoCodecContext) -> None:
    """Drain before release: freeing a frame-threaded decoder mid-stream can deadlock."""
    with contextlib.suppress(av.error.FFmpegError):
        ctx.decode(None)


def _decode(ctx: av.VideoCodecContext, packet: av.Packet[Any] | None,
            src: SourceInfo) -> list[av.VideoFrame]:
    try:
        return ctx.decode(packet)
    except av.error.FFmpegError as exc:
        raise CorruptMediaError(
            f"source file {src.name!r} cannot be decoded: {exc}"
        ) from exc


def _emit(frame: av.VideoFrame, wanted: np.ndarray, j: int, disp_pts: np.ndarray,
          src: SourceInfo) -> Iterator[tuple[int, av.VideoFrame]]:
    if frame.pts is None:
        return
    d = int(np.searchsorted(disp_pts, frame.pts))
    if d >= len(disp_pts) or int(disp_pts[d]) != frame.pts:
        return
    if j < len(wanted) and int(wanted[j]) < d:
        raise CorruptMediaError(
            f"source file {src.name!r}: frame {int(wanted[j])} could not be decoded "
            "(the file is damaged around that point)"
        )
    while j < len(wanted) and int(wanted[j]) == d:
        yield j, frame
        j += 1
