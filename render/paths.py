"""Where sources may be read from: inside the configured media roots, never elsewhere.

The editor sends a bare file name resolved against ``<media root>/sources/``. Its old server
also took absolute paths, which let a config read any file on the host; here a path is
resolved (symlinks included) and must still lie inside a media root's ``sources/`` folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from .errors import ConfigError, SourceNotFoundError
from .objectstore import S3Location, find_source, is_s3_url
from .sourcefile import LocalFile, SourceFile, StoredFile

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


#: A media root: a folder (local or shared), or a bucket and prefix in S3.
MediaLocation = Path | S3Location


def media_location(text: str) -> MediaLocation:
    """``s3://bucket/prefix`` (InvalidLocationError when malformed) or a folder path."""
    return S3Location.parse(text) if is_s3_url(text) else Path(text)


def locate_source(file_path: str, roots: Sequence[MediaLocation], *, field: str) -> SourceFile:
    """The file a config's ``filePath`` names, in the first root (in order) that holds it.

    The same refusals as :func:`resolve_source` for every kind of root: nothing outside a
    root's ``sources/`` is ever read. An S3 object is HEADed once here and pinned (size
    and ETag) for the whole job.
    """
    local = [r for r in roots if isinstance(r, Path)]
    stored = [r for r in roots if isinstance(r, S3Location)]
    if not stored:
        return LocalFile.at(resolve_source(file_path, local, field=field))
    if not local:
        return StoredFile(find_source(file_path, stored, field=field))
    if not file_path or "\x00" in file_path:
        raise ConfigError(f"{field} is empty or invalid", field=field)
    if PurePosixPath(file_path.replace("\\", "/")).is_absolute():
        return LocalFile.at(resolve_source(file_path, local, field=field))
    misses: list[str] = []
    for root in roots:
        try:
            if isinstance(root, Path):
                return LocalFile.at(resolve_source(file_path, [root], field=field))
            return StoredFile(find_source(file_path, [root], field=field))
        except SourceNotFoundError as exc:
            misses.append(str(exc))
    looked = " or ".join(
        f"{root / SOURCES_DIR}/" if isinstance(root, Path) else root.sources_url
        for root in roots)
    hint = next((m.split("; ", 1)[1] for m in misses if "; " in m), None)
    text = f"{field}: source file {file_path!r} was not found in {looked}"
    raise SourceNotFoundError(f"{text}; {hint}" if hint else text, field=field)
