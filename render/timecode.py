"""SMPTE timecodes: the label of the export's first frame, taken from its source's clock.

Cameras stamp their recordings with a start timecode (a ``tmcd`` track in MP4/MOV, which
FFmpeg exposes as the video stream's ``timecode`` tag) so editors can line up cameras and
audio recorders. An export carries the timecode of its first frame: the source's start
timecode advanced by the frames between the source's first frame and the cut.

Drop-frame timecode (``;`` before the frames, 29.97 and 59.94 fps) skips labels, not
frames: the first two (four at 59.94) frame numbers of every minute except each tenth, so
labels follow wall-clock time. Counting is done in frames; only the label drops.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

_PATTERN = re.compile(r"^(\d{1,2}):(\d{2}):(\d{2})([:;.,])(\d{2,3})$")


@dataclass(frozen=True)
class Timecode:
    hours: int
    minutes: int
    seconds: int
    frames: int
    drop: bool

    def __str__(self) -> str:
        sep = ";" if self.drop else ":"
        return (f"{self.hours:02d}:{self.minutes:02d}:{self.seconds:02d}{sep}"
                f"{self.frames:02d}")


def parse(text: str) -> Timecode | None:
    """``HH:MM:SS:FF`` (``;`` / ``.`` / ``,`` before FF: drop frame); None if not one."""
    m = _PATTERN.match(text.strip())
    if m is None:
        return None
    h, mi, s, sep, f = m.groups()
    return Timecode(int(h), int(mi), int(s), int(f), sep in ";.,")


def nominal_rate(rate: Fraction) -> int:
    """Frames per timecode second: 30 for 29.97, 24 for 23.976."""
    return max(1, round(rate))


def _dropped_per_minute(base: int) -> int:
    return round(base / 15)  # 2 at 30, 4 at 60


def to_frames(tc: Timecode, base: int) -> int:
    """Frame count of a label, at ``base`` frames per timecode second."""
    total_minutes = 60 * tc.hours + tc.minutes
    frames = ((total_minutes * 60 + tc.seconds) * base) + tc.frames
    if tc.drop:
        frames -= _dropped_per_minute(base) * (total_minutes - total_minutes // 10)
    return frames


def from_frames(count: int, base: int, drop: bool) -> Timecode:
    """The label of frame ``count`` (wrapping at 24 hours, as timecode does)."""
    if drop:
        d = _dropped_per_minute(base)
        per_10min = base * 600 - 9 * d
        per_min = base * 60 - d
        tens, rem = divmod(count, per_10min)
        extra = 0 if rem < d else d * ((rem - d) // per_min)
        count += 9 * d * tens + extra
    frames = count % base
    seconds_total = count // base
    return Timecode((seconds_total // 3600) % 24, (seconds_total // 60) % 60,
                    seconds_total % 60, frames, drop)


def advance(text: str, seconds: Fraction, rate: Fraction) -> str | None:
    """The label ``seconds`` after ``text`` on a source running at ``rate`` frames/s."""
    tc = parse(text)
    if tc is None or rate <= 0:
        return None
    base = nominal_rate(rate)
    if tc.drop and base % 30:
        tc = Timecode(tc.hours, tc.minutes, tc.seconds, tc.frames, False)
    if tc.frames >= base:
        return None
    elapsed = round(seconds * rate)
    return str(from_frames(to_frames(tc, base) + elapsed, base, tc.drop))
