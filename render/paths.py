"""Where sources may be read from: inside the configured media roots, never elsewhere.

The editor sends a bare file name resolved against ``<media root>/sources/``. Its old server
also took absolute paths, which let a config read any file on the host; here a path is
resolved (symlinks included) and must still lie inside a media root's ``sources/`` folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from .errors import ConfigError, SourceNotFoundError

SOURCES_DIR = "sources"


def resolve_source(file_path: str, media_roots: Sequence[Path], *, field: str) -> Path:
    """The real path of a config's ``filePath``; ConfigError if it escapes the media roots."""
    if not file_path or "\x00" in file_path:
        raise ConfigError(f"{field} is empty or invalid", field=field)
    allowed = [(root / SOURCES_DIR).resolve() for root in media_roots]
    raw = PurePosixPath(file_path.replace("\\", "/"))
    if raw.is_absolute():
        candidates = [Path(raw)]
    else:
        if ".." in raw.parts:
            raise ConfigError(f"{field} must not contain '..'", field=field)
        candidates = [base / raw for base in allowed]
    for cand in candidates:
        real = cand.resolve()
        inside = next((base for base in allowed if real.is_relative_to(base)), None)
        if inside is None:
            if raw.is_absolute() or cand.exists():
                raise ConfigError(
                    f"{field} ({file_path!r}) is outside the media folder; sources must be "
                    "in the media root's sources/ folder",
                    field=field,
                )
            continue
        if real.exists():
            return real
    raise SourceNotFoundError(_not_found(file_path, raw, media_roots, field), field=field)


def _not_found(file_path: str, raw: PurePosixPath, media_roots: Sequence[Path],
               field: str) -> str:
    """Say where we looked, and where the file is when it sits one folder too high."""
    looked = " or ".join(f"{root / SOURCES_DIR}/" for root in media_roots)
    text = f"{field}: source file {file_path!r} was not found in {looked}"
    if raw.is_absolute():
        return text
    misplaced = next((root for root in media_roots if (root / raw).is_file()
                      and (root / raw).resolve().is_relative_to(root.resolve())), None)
    if misplaced is not None:
        text += (f"; it is in {misplaced}/ itself: move it into {misplaced / SOURCES_DIR}/")
    return text
