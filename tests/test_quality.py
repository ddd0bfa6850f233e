"""Quality is not traded away silently: PSNR of every re-encoded frame against its source.

A frame-accurate export copies whole GOPs and re-encodes the frames around each cut with an
encoder matched to the camera (same codec, size, bit depth). Each case here exports cuts in
the middle of 2-second GOPs, so the plan has every kind of re-encoded piece (a head up to
the first keyframe, a tail after the last copyable frame, and a segment too short to hold a
keyframe), decodes the export frame by frame and compares each frame with the decoded
source frame it shows (tests/verify.py: ``output_psnr``). Re-encoded frames must keep
``PSNR_FLOOR_DB`` (45 dB over all planes, 8-bit); copied frames must decode to the very same
pixels. The stamps of both frames are read as well, so a frame compared with the wrong
source frame fails as such, never as a low PSNR.

Sources, 320x240 at 30 fps, 4 s, 2 s closed GOPs with 2 B-frames, H.264 and HEVC:

- ``stamped``: mediagen's cameras, as the other engine tests use them (moving gradient and a
  scrolling noise texture around the stamp, CRF 23);
- ``detail``: a camera-like picture made here: a texture with natural images' 1/f spectrum
  panned by fractions of a pixel, fresh sensor noise in every frame, the stamp cells
  textured too (no flat half of the frame to lift the average), encoded at a camera's
  bitrate (1 bit per pixel: 50 Mbit/s at 1080p30 is 0.8).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt
import pytest

from render.config import parse_config
from render.encode import MATCHED_PRESET, MATCHED_X264_PRESET, MATCHED_X264_SPEED
from render.engine import Prepared, execute, prepare
from tests import mediagen as mg
from tests.verify import (
    PSNR_FLOOR_DB,
    FramePsnr,
    frame_psnr,
    output_psnr,
    psnr,
    psnr_summary,
    source_frames,
)

FPS = 30
SECONDS = 4
GOP = 2 * FPS
#: Mid-GOP cuts: [0.5, 2.7) re-encodes a head (frames 15..59) and a tail after the copied
#: GOP; [3.1, 3.9) holds no keyframe and is re-encoded whole.
SEGMENTS = ((0.5, 2.7), (3.1, 3.9))
REENCODE_KINDS = {"head", "tail", "short"}


# --------------------------------------------------------------------------- detail source


@dataclass(frozen=True)
class DetailSpec:
    """A camera-like source: textured everywhere, moving, noisy, at a camera's bitrate."""

    camera: int
    codec: str = "h264"
    width: int = 320
    height: int = 240
    seconds: float = SECONDS
    gop: int = GOP
    bframes: int = 2
    #: Average bitrate, bits per pixel per frame.
    bits_per_pixel: float = 1.0
    #: Standard deviation of the texture (luma) and of the sensor noise, 8-bit levels.
    texture: float = 30.0
    noise: float = 2.0
    preset: str = "fast"

    @property
    def frames(self) -> int:
        return round(self.seconds * FPS)


def _unit_spectrum(h: int, w: int, rng: np.random.Generator) -> npt.NDArray[np.complex128]:
    """Spectrum of a periodic texture with a 1/f amplitude spectrum and unit deviation."""
    f = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :])
    f[0, 0] = 1.0
    amp = 1.0 / f
    amp[0, 0] = 0.0
    tex = np.fft.ifft2(amp * np.exp(2j * np.pi * rng.random((h, w)))).real
    return np.fft.fft2(tex / tex.std())


@functools.lru_cache(maxsize=8)
def _spectra(w: int, h: int, camera: int) -> tuple[npt.NDArray[np.complex128], ...]:
    rng = np.random.default_rng(3000 + camera)
    return (_unit_spectrum(h, w, rng), _unit_spectrum(h // 2, w // 2, rng),
            _unit_spectrum(h // 2, w // 2, rng))


def _panned(spectrum: npt.NDArray[np.complex128], dx: float, dy: float) -> mg.FloatArray:
    """The texture moved by (dx, dy) pixels: a phase ramp, so fractions of a pixel work."""
    h, w = spectrum.shape
    ramp = np.fft.fftfreq(w)[None, :] * dx + np.fft.fftfreq(h)[:, None] * dy
    return np.fft.ifft2(spectrum * np.exp(-2j * np.pi * ramp)).real


def detail_frame(spec: DetailSpec, n: int) -> av.VideoFrame:
    """Frame n, yuv420p, with mediagen's stamp (cells textured, readable by read_stamp)."""
    w, h = spec.width, spec.height
    luma, cb, cr = _spectra(w, h, spec.camera)
    dx, dy = 1.37 * n, 0.61 * n + 3 * math.sin(n / 9)  # an unsteady pan
    tex = spec.texture * _panned(luma, dx, dy)
    y = 128.0 + tex
    x0, y0, x1, y1 = mg.STAMP_RECT
    xe = [round(w * (x0 + (x1 - x0) * i / mg.STAMP_COLS)) for i in range(mg.STAMP_COLS + 1)]
    ye = [round(h * (y0 + (y1 - y0) * i / mg.STAMP_ROWS)) for i in range(mg.STAMP_ROWS + 1)]
    bits = mg.stamp_bits(spec.camera, n)
    for r in range(mg.STAMP_ROWS):
        for c in range(mg.STAMP_COLS):
            cell = slice(ye[r], ye[r + 1]), slice(xe[c], xe[c + 1])
            # Far from the reader's ambiguous band even where the texture is darkest/lightest.
            y[cell] = (212.0 if bits[r * mg.STAMP_COLS + c] else 40.0) + 0.3 * tex[cell]
    rng = np.random.default_rng([spec.camera, n])
    y += rng.normal(0.0, spec.noise, y.shape)
    u, v = (128.0 + 0.4 * spec.texture * _panned(s, dx / 2, dy / 2)
            + rng.normal(0.0, 0.7 * spec.noise, s.shape) for s in (cb, cr))
    planes = [np.clip(np.rint(p), 16, hi).astype(np.uint8)
              for p, hi in ((y, 235), (u, 240), (v, 240))]
    packed = np.concatenate([p.ravel() for p in planes]).reshape(h * 3 // 2, w)
    return av.VideoFrame.from_ndarray(packed, format="yuv420p")


def make_detail_camera(path: Path, spec: DetailSpec) -> Path:
    """Encode the detail source the way a camera does: fixed 2 s closed GOPs, B-frames,
    average bitrate; MP4 with an edit list (first frame at 0), no audio."""
    key, encoder = {"h264": ("x264-params", "libx264"), "hevc": ("x265-params", "libx265")}[
        spec.codec]
    params = (f"keyint={spec.gop}:min-keyint={spec.gop}:scenecut=0:bframes={spec.bframes}:"
              "b-adapt=0:open-gop=0")
    if spec.codec == "hevc":
        params += ":log-level=error"
    tb = Fraction(1, FPS)
    with av.open(str(path), "w") as out:
        vs = out.add_stream(encoder, rate=FPS, options={"preset": spec.preset, key: params})
        assert isinstance(vs, av.video.stream.VideoStream)
        vs.width, vs.height, vs.pix_fmt = spec.width, spec.height, "yuv420p"
        vs.bit_rate = round(spec.bits_per_pixel * spec.width * spec.height * FPS)
        vs.codec_context.time_base = tb
        if spec.codec == "hevc":
            vs.codec_tag = "hvc1"
        for n in range(spec.frames):
            frame = detail_frame(spec, n)
            frame.pts, frame.time_base = n, tb
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
    return path


# --------------------------------------------------------------------------- cases

CASES: dict[str, mg.CameraSpec | DetailSpec] = {
    "h264-stamped": mg.CameraSpec(camera=1, codec="h264", width=320, height=240,
                                  seconds=SECONDS, gop=GOP, bframes=2, audio=False),
    "hevc-stamped": mg.CameraSpec(camera=2, codec="hevc", width=320, height=240,
                                  seconds=SECONDS, gop=GOP, bframes=2, audio=False),
    "h264-detail": DetailSpec(camera=3, codec="h264"),
    "hevc-detail": DetailSpec(camera=4, codec="hevc"),
}


class QualityMedia:
    """The cases' sources under one media root, each made when a test first needs it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "sources").mkdir(parents=True, exist_ok=True)

    @functools.cache  # noqa: B019 - one instance per module run
    def path(self, name: str) -> Path:
        spec = CASES[name]
        dst = self.root / "sources" / f"{name}.mp4"
        if isinstance(spec, DetailSpec):
            return make_detail_camera(dst, spec)
        return mg.make_camera(dst, spec).path


@pytest.fixture(scope="module")
def quality_media(tmp_path_factory: pytest.TempPathFactory) -> QualityMedia:
    return QualityMedia(tmp_path_factory.mktemp("quality-media"))


def export(media: QualityMedia, name: str, out: Path) -> Prepared:
    media.path(name)
    cfg: dict[str, Any] = {
        "version": 1,
        "id": f"quality-{name}",
        "projectName": "quality",
        "sources": [{"id": "m0", "name": name, "filePath": f"{name}.mp4"}],
        "segments": [{"sourceIndex": 0, "startTime": a, "endTime": b} for a, b in SEGMENTS],
        "output": {"format": "mp4", "codec": "copy", "includeAudio": False},
        "accuracy": "frame",
    }
    prep = prepare(parse_config(cfg), [media.root])
    execute(prep, out)
    return prep


def encoder_text(prep: Prepared) -> str:
    """The settings the engine re-encoded with, for the failure message."""
    fields = ("encoder", "crf", "preset", "params", "bframes", "pix_fmt")
    seen = {tuple(getattr(s, f, "?") for f in fields) for s in prep.settings.values()}
    return "; ".join(", ".join(f"{k}={v}" for k, v in zip(fields, s, strict=True))
                     for s in sorted(seen, key=str))


def describe(name: str, rows: list[FramePsnr]) -> str:
    s = psnr_summary(rows)
    per_kind = ", ".join(f"{k} {s[f'{k}_frames']}: min {s[f'{k}_psnr_min_db']:.2f} "
                         f"mean {s[f'{k}_psnr_mean_db']:.2f}"
                         for k in sorted({r.kind for r in rows} - {"copy"}))
    return (f"{name}: {s['reencoded_frames']} re-encoded frames, PSNR min "
            f"{s['psnr_min_db']:.2f} dB, mean {s['psnr_mean_db']:.2f} dB (luma min "
            f"{s['luma_psnr_min_db']:.2f}, mean {s['luma_psnr_mean_db']:.2f}); {per_kind}; "
            f"worst {s['worst_frame']}; {s['copied_identical']} of {s['copied_frames']} "
            "copied frames identical")


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", list(CASES))
def test_reencoded_frames_keep_the_psnr_floor(quality_media: QualityMedia, tmp_path: Path,
                                              name: str) -> None:
    out = tmp_path / "out.mp4"
    prep = export(quality_media, name, out)
    assert prep.plan.out_format.pix_fmt == "yuv420p"  # the floor is an 8-bit one
    rows = output_psnr(out, prep, {0: quality_media.path(name)},
                       cameras={0: CASES[name].camera})
    text = describe(name, rows)
    print(f"\n{text}\n  encoder: {encoder_text(prep)}")
    encoded = [r for r in rows if r.kind != "copy"]
    copied = [r for r in rows if r.kind == "copy"]
    # Measured on what ships: the engine's own matched settings, speed parameters included.
    shipped = ((MATCHED_X264_PRESET, MATCHED_X264_SPEED) if CASES[name].codec == "h264"
               else (MATCHED_PRESET, ""))
    assert {(s.preset, s.params) for s in prep.settings.values()} == {shipped}
    assert {r.kind for r in encoded} == REENCODE_KINDS, "the cuts must make every kind"
    assert copied, "the plan must copy a GOP"
    assert all(math.isinf(r.psnr) for r in copied), [r for r in copied if math.isfinite(r.psnr)]
    # Really re-encoded (so really measured): a decoder's own pixels would compare as inf.
    assert all(math.isfinite(r.psnr) for r in encoded)
    below = [r for r in encoded if r.psnr < PSNR_FLOOR_DB]
    assert len(below) == 0, (
        f"{len(below)} of {len(encoded)} re-encoded frames below {PSNR_FLOOR_DB} dB. {text}. "
        f"Encoder: {encoder_text(prep)}. Worst: "
        + ", ".join(f"out {r.out_frame} ({r.kind}) {r.psnr:.2f}"
                    for r in sorted(below, key=lambda r: r.psnr)[:5])
    )


def test_a_named_preset_is_used_as_named(quality_media: QualityMedia) -> None:
    """``CUTFARM_PRESET``/``--preset``: that preset alone, without the engine's speed
    parameters on top (they would override part of what the user chose)."""
    quality_media.path("h264-stamped")
    cfg = parse_config({"version": 1, "id": "quality-preset", "projectName": "quality",
                        "sources": [{"filePath": "h264-stamped.mp4"}],
                        "segments": [{"sourceIndex": 0, "startTime": 0.5, "endTime": 2.7}],
                        "output": {"format": "mp4", "codec": "copy", "includeAudio": False}})
    named = prepare(cfg, [quality_media.root], preset="slow")
    assert {(s.preset, s.params) for s in named.settings.values()} == {("slow", "")}
    default = prepare(cfg, [quality_media.root])
    assert {(s.preset, s.params) for s in default.settings.values()} == {
        (MATCHED_X264_PRESET, MATCHED_X264_SPEED)}


def test_psnr_of_known_errors() -> None:
    rng = np.random.default_rng(7)
    a = rng.integers(16, 236, size=(36, 32), dtype=np.uint8)
    assert psnr(a, a.copy()) == math.inf
    b = a.copy()
    b[::2] += 1  # half the samples off by one: MSE 1/2
    assert psnr(a, b) == pytest.approx(10 * math.log10(2 * 255**2))
    assert psnr(b, a) == psnr(a, b)
    # Planes given one by one weigh every sample alike, as the packed array does.
    planes_a, planes_b = (np.split(x.ravel(), [24 * 32, 30 * 32]) for x in (a, b))
    assert psnr(list(planes_a), list(planes_b)) == pytest.approx(psnr(a, b))
    assert psnr(a.astype(np.uint16) * 4, b.astype(np.uint16) * 4, peak=1023) == pytest.approx(
        10 * math.log10(1023**2 / 8))
    with pytest.raises(ValueError, match="shapes"):
        psnr(a, a[:-2])


def test_frame_psnr_weighs_planes_by_samples() -> None:
    rng = np.random.default_rng(8)
    packed = rng.integers(16, 236, size=(36, 32), dtype=np.uint8)
    ref = av.VideoFrame.from_ndarray(packed, format="yuv420p")
    noisy = packed.copy()
    noisy[:24] ^= rng.integers(0, 8, size=(24, 32), dtype=np.uint8)  # luma only
    both, luma = frame_psnr(ref, av.VideoFrame.from_ndarray(noisy, format="yuv420p"))
    # Luma is 4 of 6 samples: the same error spread over 1.5x the samples.
    assert both == pytest.approx(luma + 10 * math.log10(1.5))
    assert frame_psnr(ref, av.VideoFrame.from_ndarray(packed.copy(), format="yuv420p")) == (
        math.inf, math.inf)


def test_source_frames_by_display_index(quality_media: QualityMedia) -> None:
    path = quality_media.path("h264-stamped")
    camera = CASES["h264-stamped"].camera
    wanted = [3, 3, 40, 2, 119, 0]  # repeats and steps back
    got = [mg.read_stamp(f) for f in source_frames(path, wanted)]
    assert got == [(camera, n) for n in wanted]
    with pytest.raises(ValueError, match="no frame 120"):
        list(source_frames(path, [120]))
