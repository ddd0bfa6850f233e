"""The engine's exception tree.

Every failure the engine reports is one of these, with a sentence a user can act on as
its message. Errors from PyAV/FFmpeg, the MP4 index reader and the file system are
translated at the edge with ``raise ... from exc`` so callers never see a bare av traceback.

    RenderError
    ├── ConfigError                 the export config itself is wrong (a field, a value)
    ├── MediaError                  a source file is unusable
    │   ├── SourceNotFoundError     missing or unreadable file
    │   ├── NotAVideoError          no video stream, or not a media file at all
    │   ├── CorruptMediaError       truncated, damaged, undecodable
    │   ├── UnsupportedMediaError   a codec or layout the engine cannot handle
    │   └── SegmentRangeError       a segment reaches beyond the source's end
    ├── OutputError                 the output could not be written (disk, muxer)
    └── CancelledError              the caller cancelled; nothing was left behind

``field`` on ConfigError/SegmentRangeError names the config field (e.g.
``segments[3].endTime``) so the HTTP layer can show it verbatim.
"""

from __future__ import annotations


class RenderError(Exception):
    """Base of every error the engine raises on purpose."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[type[RenderError], tuple[str], dict[str, str | None]]:
        # Errors cross process boundaries (Ray tasks): keep ``field`` on the way.
        return (self.__class__, (self.message,), {"field": self.field})


class ConfigError(RenderError):
    """The export config is invalid (names the field in ``field``)."""


class MediaError(RenderError):
    """A source file cannot be used."""


class SourceNotFoundError(MediaError):
    """The source file does not exist or cannot be read."""


class NotAVideoError(MediaError):
    """The file is not a media file or carries no video stream."""


class CorruptMediaError(MediaError):
    """The file is truncated or damaged."""


class UnsupportedMediaError(MediaError):
    """The media uses a codec or layout the engine does not handle."""


class SegmentRangeError(MediaError):
    """A segment asks for time beyond the source's end."""


class OutputError(RenderError):
    """Writing the output failed."""


class CancelledError(RenderError):
    """The export was cancelled by its caller."""
