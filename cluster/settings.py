"""cutfarm's settings: one typed object, read from the environment once.

Every knob has a named default here and one environment variable (``CUTFARM_*``), read by
pydantic-settings. The object is frozen: code that needs other values builds another
``Settings`` explicitly (tests do), never mutates the process-wide one. Building one
directly (``Settings(port=...)``) reads no environment; ``Settings.from_env()`` does.

Secrets (``CUTFARM_API_TOKEN``, ``CUTFARM_WEBHOOK_SECRET``) are ``SecretStr``: they never
show in a repr, a log line or an error. Each may instead be given as ``NAME_FILE``, the
path of a file holding it (Docker and Kubernetes secrets are mounted as files).

Media roots: ``CUTFARM_MEDIA_ROOTS`` is a comma-separated list of ``PATH`` or
``s3://bucket/prefix``. A folder is shared: every node sees it at the same path (NFS, EFS, a
ReadWriteMany volume, or one machine), because every piece, the audio, the concat actor's
stream template, status and downloads may read it from any node. A bucket is read by byte
ranges from any node (render/objectstore), with boto3's standard endpoint and credentials.
A source name is looked up in each root's ``sources/`` in order. Exports go to
``CUTFARM_EXPORT_ROOT``, by default ``exports/`` in the first folder root.

Node-local volumes (``PATH=NAME``, read on the nodes labelled ``cutfarm.io/media-NAME``)
were removed. An item holding ``=`` is refused with a message saying so, whatever follows
the ``=``: the old form must fail loudly rather than become a folder nobody has, and the
answer must not depend on what the parsing node's disk holds. A folder whose path contains
``=`` can still be given through a symlink.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from render.objectstore import InvalidLocationError, S3Location, is_s3_url
from render.paths import MediaLocation

DEFAULT_MEDIA_ROOT = "./data"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_NAMESPACE = "cutfarm"
DEFAULT_MAX_CONCURRENT_JOBS = 2
DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_MAX_PIECE_FRAMES = 900
DEFAULT_MAX_PIECE_BYTES = 256 << 20
DEFAULT_RETENTION_HOURS = 72.0
#: Settings that may be given as ``NAME_FILE`` (a path) instead of ``NAME``.
SECRET_VARIABLES = ("CUTFARM_API_TOKEN", "CUTFARM_WEBHOOK_SECRET")


class SettingsError(ValueError):
    """A setting has an invalid value (names the variable)."""


@dataclass(frozen=True)
class MediaRoot:
    #: A folder, or a bucket and prefix (sources only: S3 is shared by every node).
    path: Path | S3Location

    @property
    def folder(self) -> Path | None:
        """The root's folder; None for a root in S3."""
        return self.path if isinstance(self.path, Path) else None


def _env(name: str, *fallbacks: str) -> Any:
    """An optional setting (default None) read from ``name`` (or the fallbacks); the
    field's own name still works as a keyword argument."""
    return Field(None, validation_alias=AliasChoices(name, *fallbacks))


#: The environment ``from_env`` reads (unset: building a Settings reads no environment).
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("cutfarm_environ", default=None)


class _MappingSource(EnvSettingsSource):
    """Environment variables from a given mapping, with ``NAME_FILE`` secrets expanded."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = _with_secret_files(environ)
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {k.lower(): v for k, v in self._environ.items()}


def _with_secret_files(environ: Mapping[str, str]) -> dict[str, str]:
    env = dict(environ)
    for name in SECRET_VARIABLES:
        path = env.get(f"{name}_FILE")
        if path and not env.get(name):
            try:
                env[name] = Path(path).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise SettingsError(f"{name}_FILE: cannot read {path!r} ({exc.strerror})") \
                    from None
    return env


class Settings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, populate_by_name=True, extra="ignore",
                                      env_ignore_empty=True)

    media_roots: Annotated[tuple[MediaRoot, ...], NoDecode] = Field(
        default=DEFAULT_MEDIA_ROOT, validate_default=True,  # made absolute when read
        validation_alias=AliasChoices("CUTFARM_MEDIA_ROOTS", "MEDIA_BASE_PATH"))
    host: str = Field(DEFAULT_HOST, validation_alias=AliasChoices("CUTFARM_HOST"))
    port: int = Field(DEFAULT_PORT, ge=1, le=65535,
                      validation_alias=AliasChoices("CUTFARM_PORT"))
    api_token: SecretStr | None = _env("CUTFARM_API_TOKEN")
    cors_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        (), validation_alias=AliasChoices("CUTFARM_CORS_ORIGINS"))
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1024, le=1 << 30,
                                validation_alias=AliasChoices("CUTFARM_MAX_BODY_BYTES"))
    #: None: connect to a running cluster or start one.
    ray_address: str | None = _env("CUTFARM_RAY_ADDRESS", "RAY_ADDRESS")
    namespace: str = Field(DEFAULT_NAMESPACE,
                           validation_alias=AliasChoices("CUTFARM_NAMESPACE"))
    max_concurrent_jobs: int = Field(
        DEFAULT_MAX_CONCURRENT_JOBS, ge=1, le=1000,
        validation_alias=AliasChoices("CUTFARM_MAX_CONCURRENT_JOBS"))
    max_piece_frames: int = Field(DEFAULT_MAX_PIECE_FRAMES, ge=30, le=1_000_000,
                                  validation_alias=AliasChoices("CUTFARM_MAX_PIECE_FRAMES"))
    max_piece_bytes: int = Field(DEFAULT_MAX_PIECE_BYTES, ge=1 << 20, le=1 << 40,
                                 validation_alias=AliasChoices("CUTFARM_MAX_PIECE_BYTES"))
    retention_hours: float = Field(DEFAULT_RETENTION_HOURS, ge=0,
                                   validation_alias=AliasChoices("CUTFARM_RETENTION_HOURS"))
    webhook_secret: SecretStr | None = _env("CUTFARM_WEBHOOK_SECRET")
    #: Let callback URLs point at loopback/private/link-local addresses (off: SSRF guard).
    webhook_allow_private: bool = Field(
        False, validation_alias=AliasChoices("CUTFARM_WEBHOOK_ALLOW_PRIVATE"))
    #: x264/x265 preset of every re-encode, used as named; None: the engine's (around cuts
    #: x264 ultrafast with its speed parameters and x265 veryfast; fast for full
    #: re-encodes; render/encode.py).
    preset: str | None = Field(None, validation_alias=AliasChoices("CUTFARM_PRESET"))
    #: Free disk kept in reserve beyond a job's estimated output size.
    disk_headroom_bytes: int = Field(
        512 << 20, ge=0, validation_alias=AliasChoices("CUTFARM_DISK_HEADROOM_BYTES"))
    #: How HTTP reaches the API (serve_app/ingress.py): "direct" into the replica, "proxy"
    #: through Serve's proxy actor, "auto": direct when `cutfarm serve` starts its own Ray.
    ingress: Literal["auto", "proxy", "direct"] = Field(
        "auto", validation_alias=AliasChoices("CUTFARM_INGRESS"))
    #: Serve's access log line per request (off: at 200 polls a second it cost the API
    #: replica 18 % of its CPU per poll, and every line travels to the driver's terminal).
    access_log: bool = Field(False, validation_alias=AliasChoices("CUTFARM_ACCESS_LOG"))
    #: Where jobs and their outputs live: a folder or ``s3://bucket/prefix``; default
    #: ``exports/`` in the first folder root.
    export_dir: Path | S3Location | None = _env("CUTFARM_EXPORT_ROOT")
    #: Lifetime of the signed URL a download of an export in S3 redirects to.
    download_url_seconds: int = Field(
        900, ge=10, le=7 * 24 * 3600,
        validation_alias=AliasChoices("CUTFARM_DOWNLOAD_URL_SECONDS"))

    @field_validator("export_dir", mode="before")
    @classmethod
    def _export_dir(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        if is_s3_url(value):
            try:
                return S3Location.parse(value)
            except InvalidLocationError as exc:
                raise ValueError(f"CUTFARM_EXPORT_ROOT: {exc}") from None
        return Path(value).expanduser().absolute()

    @model_validator(mode="after")
    def _somewhere_to_export(self) -> Settings:
        if self.export_dir is None and not any(r.folder for r in self.media_roots):
            raise ValueError(
                "CUTFARM_EXPORT_ROOT: every media root is in S3, so exports need a place of "
                "their own: set CUTFARM_EXPORT_ROOT (or --export-root) to a shared folder "
                "or to s3://bucket/prefix")
        return self

    @field_validator("media_roots", mode="before")
    @classmethod
    def _roots(cls, value: Any) -> Any:
        return parse_media_roots(value) if isinstance(value, str) else value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(o.strip() for o in value.split(",") if o.strip())
        return value

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        environ = _ENVIRON.get()
        if environ is None:
            return (init_settings,)
        return (init_settings, _MappingSource(settings_cls, environ))

    @property
    def export_root(self) -> Path | S3Location:
        if self.export_dir is not None:
            return self.export_dir
        return self._first_folder.path / "exports"  # type: ignore[operator]

    @property
    def _first_folder(self) -> MediaRoot:
        return next(r for r in self.media_roots if r.folder is not None)

    @property
    def root_paths(self) -> list[MediaLocation]:
        return [r.path for r in self.media_roots]

    @property
    def token(self) -> str | None:
        """The API token in clear, for the few places that must compare or sign with it."""
        return self.api_token.get_secret_value() if self.api_token else None

    @property
    def webhook_key(self) -> str | None:
        return self.webhook_secret.get_secret_value() if self.webhook_secret else None

    def with_changes(self, **changes: Any) -> Settings:
        """These settings with ``changes`` (validated); SettingsError names the one at
        fault."""
        try:
            return type(self).model_validate({**dict(self), **changes})
        except ValidationError as exc:
            raise SettingsError(_describe(exc)) from None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``env`` (default: this process's environment); SettingsError names
        the variable at fault."""
        token = _ENVIRON.set(os.environ if env is None else env)
        try:
            return cls()
        except ValidationError as exc:
            raise SettingsError(_describe(exc)) from None
        finally:
            _ENVIRON.reset(token)


def _describe(exc: ValidationError) -> str:
    err = exc.errors()[0]
    name = str(err["loc"][0]) if err.get("loc") else "a setting"
    field: FieldInfo | None = Settings.model_fields.get(name)
    alias = field.validation_alias if field is not None else None
    if isinstance(alias, AliasChoices):
        name = str(alias.choices[0])
    message = str(err.get("msg", "is invalid")).removeprefix("Value error, ")
    if message.startswith(f"{name}:") or re.match(r"CUTFARM_[A-Z_]+: ", message):
        # our own parser or validator already named it
        return message
    return f"{name}: {message}, got {err.get('input')!r}" if "input" in err else \
        f"{name}: {message}"


def to_env(settings: Settings) -> dict[str, str]:
    """The environment that makes ``Settings.from_env()`` return ``settings`` (for workers)."""
    env = {
        "CUTFARM_MEDIA_ROOTS": ",".join(str(r.path) for r in settings.media_roots),
        "CUTFARM_HOST": settings.host,
        "CUTFARM_PORT": str(settings.port),
        "CUTFARM_CORS_ORIGINS": ",".join(settings.cors_origins),
        "CUTFARM_MAX_BODY_BYTES": str(settings.max_body_bytes),
        "CUTFARM_NAMESPACE": settings.namespace,
        "CUTFARM_MAX_CONCURRENT_JOBS": str(settings.max_concurrent_jobs),
        "CUTFARM_MAX_PIECE_FRAMES": str(settings.max_piece_frames),
        "CUTFARM_MAX_PIECE_BYTES": str(settings.max_piece_bytes),
        "CUTFARM_RETENTION_HOURS": str(settings.retention_hours),
        **({"CUTFARM_PRESET": settings.preset} if settings.preset else {}),
        "CUTFARM_DISK_HEADROOM_BYTES": str(settings.disk_headroom_bytes),
        "CUTFARM_INGRESS": settings.ingress,
    }
    if settings.export_dir is not None:
        env["CUTFARM_EXPORT_ROOT"] = str(settings.export_dir)
    env["CUTFARM_DOWNLOAD_URL_SECONDS"] = str(settings.download_url_seconds)
    if settings.token:
        env["CUTFARM_API_TOKEN"] = settings.token
    if settings.webhook_key:
        env["CUTFARM_WEBHOOK_SECRET"] = settings.webhook_key
    if settings.webhook_allow_private:
        env["CUTFARM_WEBHOOK_ALLOW_PRIVATE"] = "1"
    if settings.access_log:
        env["CUTFARM_ACCESS_LOG"] = "1"
    if settings.ray_address:
        env["CUTFARM_RAY_ADDRESS"] = settings.ray_address
    return env


def parse_media_roots(text: str, setting: str = "CUTFARM_MEDIA_ROOTS"
                      ) -> tuple[MediaRoot, ...]:
    """The roots in ``text``; errors name ``setting`` (the variable, or a CLI flag)."""
    roots: list[MediaRoot] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        if "=" in item:
            raise SettingsError(_no_volumes(setting, item))
        if is_s3_url(item):
            try:
                roots.append(MediaRoot(S3Location.parse(item)))
            except InvalidLocationError as exc:
                raise SettingsError(f"{setting}: {exc}") from None
            continue
        roots.append(MediaRoot(Path(item).expanduser().absolute()))
    if not roots:
        raise SettingsError(f"{setting} names no folder")
    return tuple(roots)


def _no_volumes(setting: str, item: str) -> str:
    """The refusal of ``PATH=NAME``, the removed node-local volume form (module docstring)."""
    if is_s3_url(item):
        url, _, name = item.partition("=")
        return (f"{setting}: {url} is in S3, which every node reads alike, and node-local "
                f"volumes (PATH=NAME) are no longer supported: remove '={name}'")
    return (f"{setting}: {item!r} has the form PATH=NAME of a node-local volume; node-local "
            "volumes are no longer supported: use a folder every node sees at the same path "
            "(NFS, EFS, a ReadWriteMany volume, or one machine) or an s3://bucket/prefix "
            "(a folder whose path contains '=' can be given through a symlink)")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings.from_env()
