"""cutfarm's settings: one typed object, read from the environment once.

Every knob has a named default here and one environment variable (``CUTFARM_*``). The
object is frozen: code that needs other values builds another ``Settings`` explicitly
(tests do), never mutates the process-wide one.

Media roots: ``CUTFARM_MEDIA_ROOTS`` is a comma-separated list of ``PATH`` or
``PATH=VOLUME``. A root without a volume is shared (every node sees it at the same path); a
root with a volume lives on the nodes labelled ``cutfarm.io/media-VOLUME=true``, and work
that reads it prefers those nodes. The first root also holds ``exports/``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

DEFAULT_MEDIA_ROOT = "./data"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_NAMESPACE = "cutfarm"
DEFAULT_MAX_CONCURRENT_JOBS = 2
DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_MAX_PIECE_FRAMES = 900
DEFAULT_MAX_PIECE_BYTES = 256 << 20
DEFAULT_RETENTION_HOURS = 72.0
DEFAULT_PRESET = "fast"
#: Labels a node carries for each media volume it holds (see module docstring).
VOLUME_LABEL_PREFIX = "cutfarm.io/media-"
_VOLUME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,40}[a-z0-9])?$")


class SettingsError(ValueError):
    """A setting has an invalid value (names the variable)."""


@dataclass(frozen=True)
class MediaRoot:
    path: Path
    volume: str | None = None  # None: shared, visible on every node

    @property
    def label(self) -> str | None:
        return f"{VOLUME_LABEL_PREFIX}{self.volume}" if self.volume else None


@dataclass(frozen=True)
class Settings:
    media_roots: tuple[MediaRoot, ...] = (MediaRoot(Path(DEFAULT_MEDIA_ROOT)),)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    api_token: str | None = None
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    ray_address: str | None = None  # None: connect to a running cluster or start one
    namespace: str = DEFAULT_NAMESPACE
    max_concurrent_jobs: int = DEFAULT_MAX_CONCURRENT_JOBS
    max_piece_frames: int = DEFAULT_MAX_PIECE_FRAMES
    max_piece_bytes: int = DEFAULT_MAX_PIECE_BYTES
    retention_hours: float = DEFAULT_RETENTION_HOURS
    webhook_secret: str | None = None
    #: Let callback URLs point at loopback/private/link-local addresses (off: SSRF guard).
    webhook_allow_private: bool = False
    preset: str = DEFAULT_PRESET
    #: Free disk kept in reserve beyond a job's estimated output size.
    disk_headroom_bytes: int = 512 << 20
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def export_root(self) -> Path:
        return self.media_roots[0].path / "exports"

    @property
    def root_paths(self) -> list[Path]:
        return [r.path for r in self.media_roots]

    def volume_of(self, path: Path) -> str | None:
        """The volume a source path lives on (None: shared)."""
        real = path.resolve()
        for root in self.media_roots:
            if real.is_relative_to(root.path.resolve()):
                return root.volume
        return None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        get = env.get
        return cls(
            media_roots=parse_media_roots(get("CUTFARM_MEDIA_ROOTS")
                                          or get("MEDIA_BASE_PATH") or DEFAULT_MEDIA_ROOT),
            host=get("CUTFARM_HOST", DEFAULT_HOST),
            port=_int(env, "CUTFARM_PORT", DEFAULT_PORT, 1, 65535),
            api_token=get("CUTFARM_API_TOKEN") or None,
            cors_origins=tuple(o.strip() for o in get("CUTFARM_CORS_ORIGINS", "").split(",")
                               if o.strip()),
            max_body_bytes=_int(env, "CUTFARM_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, 1024,
                                1 << 30),
            ray_address=get("CUTFARM_RAY_ADDRESS") or get("RAY_ADDRESS") or None,
            namespace=get("CUTFARM_NAMESPACE", DEFAULT_NAMESPACE),
            max_concurrent_jobs=_int(env, "CUTFARM_MAX_CONCURRENT_JOBS",
                                     DEFAULT_MAX_CONCURRENT_JOBS, 1, 1000),
            max_piece_frames=_int(env, "CUTFARM_MAX_PIECE_FRAMES", DEFAULT_MAX_PIECE_FRAMES, 30,
                                  1_000_000),
            max_piece_bytes=_int(env, "CUTFARM_MAX_PIECE_BYTES", DEFAULT_MAX_PIECE_BYTES,
                                 1 << 20, 1 << 40),
            retention_hours=_float(env, "CUTFARM_RETENTION_HOURS", DEFAULT_RETENTION_HOURS),
            webhook_secret=get("CUTFARM_WEBHOOK_SECRET") or None,
            webhook_allow_private=get("CUTFARM_WEBHOOK_ALLOW_PRIVATE", "").lower()
            in ("1", "true", "yes"),
            preset=get("CUTFARM_PRESET", DEFAULT_PRESET),
        )


def to_env(settings: Settings) -> dict[str, str]:
    """The environment that makes ``Settings.from_env()`` return ``settings`` (for workers)."""
    env = {
        "CUTFARM_MEDIA_ROOTS": ",".join(
            f"{r.path}={r.volume}" if r.volume else str(r.path) for r in settings.media_roots),
        "CUTFARM_HOST": settings.host,
        "CUTFARM_PORT": str(settings.port),
        "CUTFARM_CORS_ORIGINS": ",".join(settings.cors_origins),
        "CUTFARM_MAX_BODY_BYTES": str(settings.max_body_bytes),
        "CUTFARM_NAMESPACE": settings.namespace,
        "CUTFARM_MAX_CONCURRENT_JOBS": str(settings.max_concurrent_jobs),
        "CUTFARM_MAX_PIECE_FRAMES": str(settings.max_piece_frames),
        "CUTFARM_MAX_PIECE_BYTES": str(settings.max_piece_bytes),
        "CUTFARM_RETENTION_HOURS": str(settings.retention_hours),
        "CUTFARM_PRESET": settings.preset,
    }
    if settings.api_token:
        env["CUTFARM_API_TOKEN"] = settings.api_token
    if settings.webhook_secret:
        env["CUTFARM_WEBHOOK_SECRET"] = settings.webhook_secret
    if settings.webhook_allow_private:
        env["CUTFARM_WEBHOOK_ALLOW_PRIVATE"] = "1"
    if settings.ray_address:
        env["CUTFARM_RAY_ADDRESS"] = settings.ray_address
    return env


def parse_media_roots(text: str) -> tuple[MediaRoot, ...]:
    roots: list[MediaRoot] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        path, _, volume = item.partition("=")
        if volume and not _VOLUME_RE.match(volume):
            raise SettingsError(
                f"CUTFARM_MEDIA_ROOTS: volume name {volume!r} must be lowercase letters, digits "
                "and '-'"
            )
        roots.append(MediaRoot(Path(path).expanduser().absolute(), volume or None))
    if not roots:
        raise SettingsError("CUTFARM_MEDIA_ROOTS names no folder")
    return tuple(roots)


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if not lo <= value <= hi:
        raise SettingsError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if value < 0:
        raise SettingsError(f"{name} must not be negative")
    return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings.from_env()
