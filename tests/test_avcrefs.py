"""Reference pictures nothing decoded uses are decoded as stand-ins (render/avcrefs.py).

Each case is a stamped camera from x264 with one reference structure (B-pyramids normal
and strict, one to four reference frames, CAVLC, weighted prediction, temporal direct,
several slices per picture, three B-frames). For every first wanted frame of a GOP the
engine's own ``decode_run`` must yield exactly the pixels a plain decode of the whole
file gives; where the structure leaves reference pictures unused, stand-ins must really
have been used (so a model that silently gave up would fail here too). The stand-in
itself is checked alone: a P picture whose macroblocks are all skipped must decode to
its reference's exact pixels, with nothing in FFmpeg's log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt
import pytest

from render import avcrefs
from render.decode import decode_run, unused_references
from render.media import SourceInfo
from render.nal import NalError, parse_avcc
from render.paramsets import AvcPps, AvcSps
from render.plan import EncodeRun
from render.probe import probe
from render.sourcefile import LocalFile
from tests import mediagen as mg

GOP = 24

#: name -> (x264 params, B-frames, stand-ins expected over the GOP's cut positions)
CASES: dict[str, tuple[str, int, bool]] = {
    "pyramid": ("b-pyramid=normal", 2, True),
    "pyramid-strict": ("b-pyramid=strict", 2, True),
    "cavlc": ("b-pyramid=normal:cabac=0", 2, True),
    "weighted": ("b-pyramid=normal:weightp=2:weightb=1", 2, True),
    "temporal-direct": ("b-pyramid=normal:direct=temporal", 2, True),
    "four-slices": ("b-pyramid=normal:slices=4", 2, True),
    "three-bframes": ("b-pyramid=normal", 3, True),
    "three-refs": ("b-pyramid=normal:ref=3", 2, False),
    "no-pyramid": ("b-pyramid=none:ref=2", 2, False),
    "p-only": ("ref=4", 0, False),
}


@pytest.fixture(scope="module")
def cameras(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("avcrefs")
    made = {}
    for name, (params, bframes, _) in CASES.items():
        path = root / f"{name}.mp4"
        mg.make_camera(path, mg.CameraSpec(camera=3, seconds=1.6, gop=GOP, bframes=bframes,
                                           x264_params=params, audio=False))
        made[name] = path
    return made


def plain_decode(path: Path) -> dict[int, npt.NDArray[Any]]:
    """Every frame by display index, from FFmpeg's own demuxer and decoder."""
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="yuv420p") for f in c.decode(video=0)]
    return dict(enumerate(frames))


@pytest.mark.parametrize("name", sorted(CASES))
def test_wanted_frames_decode_exactly_with_stand_ins(cameras: dict[str, Path], name: str
                                                     ) -> None:
    src = probe(cameras[name])
    truth = plain_decode(cameras[name])
    index = src.video.index
    gop_end = next((d for d in range(1, len(index.pts)) if index.rap[d]), len(index.pts))
    used = 0
    for first in range(1, GOP):
        wanted = np.arange(first, GOP, dtype=np.int64)
        run = EncodeRun(0, wanted, 0, gop_end)
        stand_ins = unused_references(src, run, first)
        used += len(stand_ins)
        # Never a picture that is wanted, or shown at or after the first wanted one.
        assert all(int(index.disp_of_dec[d]) < first for d in stand_ins)
        # Frame threads too: a stand-in waits for its references like any picture.
        got = list(decode_run(src, run, threads=2 if first % 2 else 1))
        assert [j for j, _ in got] == list(range(len(wanted)))
        for j, frame in got:
            assert np.array_equal(frame.to_ndarray(format="yuv420p"), truth[int(wanted[j])]), (
                f"{name}: first wanted {first}: frame {int(wanted[j])} differs "
                f"(stand-ins at decode {sorted(stand_ins)})")
    expect = CASES[name][2]
    assert (used > 0) == expect, f"{name}: {used} stand-ins over the GOP's cut positions"


def _samples(src: SourceInfo) -> list[bytes]:
    assert isinstance(src.file, LocalFile)
    with src.file.path.open("rb") as f:
        out = []
        for off, size in zip(src.video.offset, src.video.index.size, strict=True):
            f.seek(int(off))
            out.append(f.read(int(size)))
    return out


@pytest.mark.parametrize("name", ["pyramid", "cavlc", "four-slices"])
def test_a_p_stand_in_decodes_to_its_reference(cameras: dict[str, Path], name: str) -> None:
    """All macroblocks skipped, no weights: the picture is its list-0 reference, exactly
    (a CABAC coder that was off by one bin would decode other macroblock types)."""
    src = probe(cameras[name])
    samples = _samples(src)
    record = parse_avcc(src.video.extradata)
    sps, pps = avcrefs.picture_maps(record.parameter_sets)
    ls = record.length_size
    first_p = next(d for d in range(1, len(samples)) if avcrefs.parse_picture(
        avcrefs.nal_heads(samples[d], ls, 0, len(samples[d]))[0], True, sps, pps
    ).header.slice_type == 0)  # type: ignore[union-attr]
    picture = avcrefs.parse_picture(avcrefs.nal_heads(samples[first_p], ls, 0,
                                                      len(samples[first_p]))[0], True, sps, pps)
    assert picture is not None and picture.header.ref_idc
    stand_in = avcrefs.stand_in(samples[first_p], ls, picture)
    assert len(stand_in) < len(samples[first_p]) // 4
    ctx = av.CodecContext.create("h264", "r")
    ctx.extradata = src.video.extradata
    decoded: dict[int, npt.NDArray[Any]] = {}
    with mg.capture_ffmpeg_log() as log:
        for d, data in enumerate([samples[0], stand_in]):
            packet = av.Packet(data)
            packet.pts = d
            for frame in ctx.decode(packet):
                decoded[int(frame.pts or 0)] = frame.to_ndarray(format="yuv420p")
        for frame in ctx.decode(None):
            decoded[int(frame.pts or 0)] = frame.to_ndarray(format="yuv420p")
    assert mg.count_log_problems(log) == 0, [r.message for r in log]
    assert sorted(decoded) == [0, 1]
    assert np.array_equal(decoded[1], decoded[0])


def test_the_model_refuses_what_it_does_not_know() -> None:
    """Long-term references and MMCOs other than 1 make the caller decode everything."""
    sps = {0: AvcSps(0, 100, 0, 40, 1, False, 8, 8, 4, 0, 6, False, True, 4, 20, 12)}
    pps = {0: AvcPps(0, 0, False, False, 1)}

    def slice_nal(bits: str) -> bytes:
        bits += "1"
        bits += "0" * (-len(bits) % 8)
        return bytes([0x65]) + int(bits, 2).to_bytes(len(bits) // 8, "big")

    # IDR, first_mb 0, slice_type 7 (I), pps 0, frame_num 0 (4 bits), idr_pic_id 0,
    # poc lsb 0 (6 bits), no_output_of_prior_pics 0, long_term_reference_flag 1.
    with pytest.raises(avcrefs.Unmodelled, match="long-term"):
        avcrefs.parse_slice(slice_nal("1" + "0001000" + "1" + "0000" + "1" + "000000" + "01"),
                            sps, pps)


# --------------------------------------------------------------------------- the model alone

_SPS = AvcSps(0, 100, 0, 40, 1, False, 8, 8, 4, 0, 6, False, True, 1, 20, 12)
_PPS = AvcPps(0, 0, True, False, 1)


def _pic(kind: str, frame_num: int, poc: int, *, ref: bool = True, active: int = 1,
         mods: tuple[tuple[int, int], ...] = (), unmark: tuple[int, ...] | None = None,
         sps: AvcSps = _SPS) -> avcrefs.Picture:
    slice_type = {"I": 2, "P": 0, "B": 1}[kind]
    lists = (0, 0) if kind == "I" else (active, 0) if kind == "P" else (active, 1)
    header = avcrefs.SliceHeader(
        ref_idc=1 if ref else 0, idr=frame_num == 0 and kind == "I", slice_type=slice_type,
        first_mb=0, frame_num=frame_num, poc_lsb=poc, delta_poc_bottom=0, active=lists,
        modifications=(mods, ()), unmark=unmark, end=0, cabac_init_idc=0, slice_qp=26)
    return avcrefs.Picture(header, (header,), sps, _PPS)


def _pyramid(p_reorders: bool) -> list[avcrefs.Picture | None]:
    """I0 P3 B1r b2 P6 B4r b5 in decode order (x264, 2 B-frames, pyramid, one reference,
    two frames in the DPB). An x264 P-frame moves the previous P to the list's front, and
    unmarks the B-frame it passed by (MMCO 1), keeping the P-frame."""
    sps = AvcSps(0, 100, 0, 40, 1, False, 8, 8, 4, 0, 6, False, True, 2, 20, 12)
    # P6 (frame_num 3): the previous P is frame_num 1, PicNum 3 - 2 = abs_diff_pic_num 2.
    p6_mods = ((0, 1),) if p_reorders else ()
    return [
        _pic("I", 0, 0, sps=sps),
        _pic("P", 1, 6, sps=sps),
        _pic("B", 2, 2, sps=sps),
        _pic("B", 3, 4, ref=False, sps=sps),
        _pic("P", 3, 12, mods=p6_mods, unmark=(0,), sps=sps),
        _pic("B", 4, 8, sps=sps),
        _pic("B", 5, 10, ref=False, sps=sps),
    ]


def test_a_pyramid_b_that_the_next_p_skips_is_not_needed() -> None:
    # Frames from P6 (decode 4) on are wanted; P6 predicts from P3 after its reordering.
    assert avcrefs.needed(_pyramid(True), 4, True) == {0, 1, 4, 5, 6}


def test_the_default_p_list_puts_the_latest_reference_first() -> None:
    # Without the reordering P6's one reference is B1r (the highest PicNum): needed.
    assert avcrefs.needed(_pyramid(False), 4, True) == {0, 1, 2, 4, 5, 6}


def test_a_b_frame_uses_the_pictures_around_it() -> None:
    # b2 (decode 3) wanted: it predicts from B1r (list 0) and P3 (list 1).
    assert avcrefs.needed(_pyramid(True), 3, True) == {0, 1, 2, 3, 4, 5, 6}


def test_pictures_still_held_when_reading_stopped_count_as_needed() -> None:
    pictures = _pyramid(True)[:4]
    sps = pictures[0].sps if pictures[0] else _SPS
    pictures.append(_pic("P", 3, 12, mods=((0, 1),), sps=sps))  # no MMCO: B1r stays
    # P6 wanted, nothing read after it: B1r is still in the two-frame DPB and may be used.
    assert 2 in avcrefs.needed(pictures, 4, False)
    assert avcrefs.needed(pictures, 4, True) == {0, 1, 4}


def test_sliding_window_and_mmco_drop_pictures_from_the_lists() -> None:
    # One-frame DPB: each P can only see the one before it.
    chain = [_pic("I", 0, 0), _pic("P", 1, 2), _pic("P", 2, 4), _pic("P", 3, 6)]
    assert avcrefs.needed(chain, 3, True) == {0, 1, 2, 3}
    # Four frames, but I2 unmarks P1 (PicNum 2 - 1) before P3 lists three references.
    sps = AvcSps(0, 100, 0, 40, 1, False, 8, 8, 4, 0, 6, False, True, 4, 20, 12)
    pics = [_pic("I", 0, 0, sps=sps), _pic("P", 1, 2, sps=sps),
            _pic("I", 2, 4, unmark=(0,), sps=sps), _pic("P", 3, 6, active=3, sps=sps)]
    assert avcrefs.needed(pics, 3, True) == {0, 2, 3}


def test_a_gap_in_frame_num_is_not_modelled() -> None:
    with pytest.raises(avcrefs.Unmodelled, match="gap"):
        avcrefs.needed([_pic("I", 0, 0), _pic("P", 2, 4)], 1, True)


def test_nal_heads_read_on_where_a_chunk_ends() -> None:
    """A unit whose length field ends a chunk is read on from that field, never skipped
    unread; one cut short is given cut short, and reading resumes after it."""
    units = [bytes([0x06]) + b"\x05" * 9, bytes([0x41]) + b"\x9a" * 29, bytes([0x01]) + b"\x88" * 5]
    sample = b"".join(len(u).to_bytes(4, "big") + u for u in units)
    heads, more = avcrefs.nal_heads(sample[:14 + 4], 4, 0, len(sample))
    assert heads == [(units[0], True)] and more == 14
    heads, more = avcrefs.nal_heads(sample[14:14 + 10], 4, 14, len(sample))
    assert heads == [(units[1][:6], False)] and more == 48
    heads, more = avcrefs.nal_heads(sample[48:], 4, 48, len(sample))
    assert heads == [(units[2], True)] and more is None
    with pytest.raises(NalError):
        avcrefs.nal_heads(sample[:-1] + b"", 4, 0, len(sample) - 1)


def test_a_reference_frame_repeating_frame_num_is_not_modelled() -> None:
    with pytest.raises(avcrefs.Unmodelled, match="gap"):
        avcrefs.needed([_pic("I", 0, 0), _pic("P", 1, 2), _pic("P", 1, 4)], 2, True)
