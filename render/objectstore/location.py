"""``s3://bucket/prefix`` media roots, and the object keys an editor's file names map to.

A media root in a bucket works like one on disk: the editor sends a bare file name and it
resolves under ``<prefix>/sources/``, with the refusals and messages of
:func:`render.paths.resolve_source` (backslashes are folder separators there too, so the
same config resolves to the same layout on disk and in a bucket). Keys are literal in S3
(``a//b`` and ``a/b`` are different objects), so what the prefix of a root may hold is
stricter than a key: no empty, ``.`` or ``..`` segments, nothing a reader could take two ways.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from render.errors import ConfigError

from .errors import InvalidLocationError

__all__ = ["MAX_KEY_BYTES", "SOURCES_DIR", "ObjectRef", "S3Location", "is_s3_url"]

SOURCES_DIR = "sources"  # the same folder name as render.paths.SOURCES_DIR
MAX_KEY_BYTES = 1024  # S3's limit on a key, in UTF-8 bytes

_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# Reserved by AWS for its own naming schemes (access points, S3 Express, demo buckets).
_BUCKET_BAD_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_BUCKET_BAD_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


def _has_control(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def is_s3_url(text: str) -> bool:
    """Whether a media root names a bucket (``s3://...``) rather than a folder."""
    return text[:5].lower() == "s3://"


def _bucket_problem(bucket: str) -> str | None:
    """Why ``bucket`` is not a valid S3 bucket name, or None."""
    if not _BUCKET_RE.fullmatch(bucket):
        return ("bucket names are 3-63 characters of lowercase letters, digits, '.' and '-', "
                "starting and ending with a letter or digit")
    if ".." in bucket or ".-" in bucket or "-." in bucket:
        return "bucket names must not have '..', '.-' or '-.'"
    try:
        ipaddress.IPv4Address(bucket)
    except ValueError:
        pass
    else:
        return "bucket names must not look like an IP address"
    if bucket.startswith(_BUCKET_BAD_PREFIXES) or bucket.endswith(_BUCKET_BAD_SUFFIXES):
        return "that bucket name prefix or suffix is reserved by AWS"
    return None


def _prefix_problem(prefix: str) -> str | None:
    if _has_control(prefix) or "\\" in prefix:
        return "the prefix must not contain control characters or backslashes"
    if not prefix:
        return None
    segments = prefix.split("/")
    if any(seg in ("", ".", "..") for seg in segments):
        return "the prefix must not contain empty, '.' or '..' path segments"
    if len(prefix.encode()) + len(SOURCES_DIR) + 2 >= MAX_KEY_BYTES:
        return f"the prefix is too long for a {MAX_KEY_BYTES}-byte object key"
    return None


@dataclass(frozen=True, order=True)
class ObjectRef:
    """One object: a bucket and a full key."""

    bucket: str
    key: str

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def name(self) -> str:
        """The last path segment of the key: the file name an editor knows it by."""
        return self.key.rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return self.url


@dataclass(frozen=True)
class S3Location:
    """A media root in a bucket: ``s3://bucket`` or ``s3://bucket/some/prefix``.

    ``prefix`` has no leading or trailing slash ("" for the bucket's root).
    """

    bucket: str
    prefix: str = ""

    def __post_init__(self) -> None:
        problem = _bucket_problem(self.bucket)
        if problem is not None:
            raise InvalidLocationError(f"invalid bucket name {self.bucket!r}: {problem}")
        problem = _prefix_problem(self.prefix)
        if problem is not None:
            raise InvalidLocationError(f"invalid media root prefix {self.prefix!r}: {problem}")

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """``s3://bucket[/prefix][/]``; InvalidLocationError saying what is wrong."""
        if _has_control(url):
            raise InvalidLocationError("the media root URL contains control characters")
        if not is_s3_url(url):
            raise InvalidLocationError(f"{_redact(url)!r} is not an s3://bucket/prefix URL")
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            raise InvalidLocationError(f"{_redact(url)!r} is not a valid URL") from exc
        if "@" in parts.netloc:
            # Never echo it: what precedes '@' is meant to be a secret.
            raise InvalidLocationError(
                "an s3:// media root must not carry credentials (user:secret@bucket); "
                "configure them through boto3's standard chain instead"
            )
        if parts.query or parts.fragment or url.endswith(("?", "#")):
            raise InvalidLocationError(
                f"{_redact(url)!r}: an s3:// media root takes no query string or fragment"
            )
        if not parts.netloc:
            raise InvalidLocationError(f"{url!r} names no bucket (s3://bucket/prefix)")
        prefix = parts.path.removeprefix("/")
        prefix = prefix.removesuffix("/")
        return cls(parts.netloc, prefix)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    @property
    def sources_url(self) -> str:
        """Where sources live, as messages show it (``s3://bucket/prefix/sources/``)."""
        return f"{self.url}/{SOURCES_DIR}/"

    def __str__(self) -> str:
        return self.url

    def _key(self, *segments: str) -> str:
        return "/".join(s for s in (self.prefix, *segments) if s)

    def object(self, relative: str) -> ObjectRef:
        """The object at ``relative`` (a server-made key such as ``exports/job/out.mp4``)."""
        problem = _prefix_problem(relative) if relative else "the key is empty"
        if problem is not None:
            raise InvalidLocationError(f"invalid object key {relative!r} under {self.url}: "
                                       f"{problem.replace('prefix', 'key')}")
        key = self._key(relative)
        if len(key.encode()) > MAX_KEY_BYTES:
            raise InvalidLocationError(f"the key {key!r} is longer than {MAX_KEY_BYTES} bytes")
        return ObjectRef(self.bucket, key)

    def resolve(self, file_path: str, *, field: str = "filePath") -> ObjectRef:
        """The object an editor's ``filePath`` names: ``<prefix>/sources/<file_path>``.

        ConfigError (naming ``field``) for what would leave ``sources/`` on disk too -- an
        absolute path, a ``..`` -- and for empty names and control characters. Whether the
        object exists is not checked here (see :func:`render.objectstore.find_source`).
        """
        if not file_path or _has_control(file_path):
            raise ConfigError(f"{field} is empty or invalid", field=field)
        raw = PurePosixPath(file_path.replace("\\", "/"))
        if raw.is_absolute():
            raise ConfigError(
                f"{field} ({file_path!r}) is outside the media folder; sources must be "
                "in the media root's sources/ folder",
                field=field,
            )
        if ".." in raw.parts:
            raise ConfigError(f"{field} must not contain '..'", field=field)
        if not raw.parts:  # "." or "./": names the folder itself
            raise ConfigError(f"{field} is empty or invalid", field=field)
        key = self._key(SOURCES_DIR, *raw.parts)
        if len(key.encode()) > MAX_KEY_BYTES:
            raise ConfigError(
                f"{field} ({file_path!r}) is too long: object keys are at most "
                f"{MAX_KEY_BYTES} bytes",
                field=field,
            )
        return ObjectRef(self.bucket, key)

    def misplaced(self, file_path: str) -> ObjectRef | None:
        """Where the file would be if it sat one folder too high (``<prefix>/<name>``)."""
        raw = PurePosixPath(file_path.replace("\\", "/"))
        if raw.is_absolute() or ".." in raw.parts or not raw.parts or _has_control(file_path):
            return None
        return ObjectRef(self.bucket, self._key(*raw.parts))


def _redact(url: str) -> str:
    """The URL without userinfo, query or fragment: safe to put in a message."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    host = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{host}{parts.path}" if parts.scheme else url.split("?", 1)[0]
