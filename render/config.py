"""The editor's export config, schema version 1, as typed data.

The shapes follow the editor's export config exactly (docs/api.md). Unknown fields are kept
(the editor may add some) but reported by ``unknown_field_warnings`` so a typo is never
silently ignored; our additions (``accuracy``, ``priority``, ``callbackUrl``) are optional, so
a config the editor sends today always validates. The models check what can be
checked without media (ranges, ordering, index bounds, path shape); probing happens later.

Times arrive as floats from the editor's playhead; ``seconds()`` turns them into exact
Fractions of the float's shortest decimal form so planning never accumulates float error.
"""

from __future__ import annotations

import difflib
import re
from enum import StrEnum
from fractions import Fraction
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

#: Job ids become directory names: letters, digits, dash and underscore only.
JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"
_JOB_ID_RE = re.compile(JOB_ID_PATTERN)


class Accuracy(StrEnum):
    """How cuts are placed."""

    #: Every cut on the exact frame asked for; re-encode only around cuts (default).
    FRAME = "frame"
    #: Stream copy only: cuts move to the nearest random-access keyframe. (Open-GOP
    #: sources still re-encode the few leading pictures before a cut-out keyframe.)
    KEYFRAME = "keyframe"


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)


class Source(_Model):
    id: str = ""
    name: str = ""
    file_path: str = Field(alias="filePath", min_length=1, max_length=1024)
    width: Annotated[int, Field(gt=0)] | None = None
    height: Annotated[int, Field(gt=0)] | None = None
    duration: Annotated[float, Field(ge=0)] | None = None
    fps: Annotated[float, Field(gt=0)] | None = None
    has_audio: bool = Field(default=True, alias="hasAudio")

    @field_validator("file_path")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value


class Segment(_Model):
    source_index: int = Field(alias="sourceIndex", ge=0)
    start_time: float = Field(alias="startTime", ge=0, allow_inf_nan=False)
    end_time: float = Field(alias="endTime", ge=0, allow_inf_nan=False)
    audio_from_source: bool = Field(default=True, alias="audioFromSource")

    @model_validator(mode="after")
    def _ordered(self) -> Segment:
        if self.end_time <= self.start_time:
            raise ValueError(
                f"endTime ({self.end_time}) must be greater than startTime ({self.start_time})"
            )
        return self

    @property
    def start(self) -> Fraction:
        return seconds(self.start_time)

    @property
    def end(self) -> Fraction:
        return seconds(self.end_time)


class Output(_Model):
    file_path: str = Field(default="", alias="filePath", max_length=1024)
    format: Literal["mp4", "webm"] = "mp4"
    width: Annotated[int, Field(gt=0, le=16384)] | None = None
    height: Annotated[int, Field(gt=0, le=16384)] | None = None
    fps: Annotated[float, Field(gt=0, le=240)] | None = None
    codec: Literal["copy", "h264", "h265"] = "copy"
    include_audio: bool = Field(default=True, alias="includeAudio")

    @property
    def reencodes(self) -> bool:
        """True when every frame is re-encoded (H.264/HEVC cannot be copied into WebM)."""
        return self.codec != "copy" or self.format == "webm"


class ExportConfig(_Model):
    version: Literal[1]
    id: str = Field(pattern=JOB_ID_PATTERN)
    project_id: str = Field(default="", alias="projectId")
    project_name: str = Field(default="", alias="projectName", max_length=512)
    created_at: str = Field(default="", alias="createdAt")
    sources: list[Source] = Field(min_length=1, max_length=256)
    segments: list[Segment] = Field(min_length=1, max_length=20000)
    output: Output = Field(default_factory=lambda: Output.model_validate({}))
    status: str | None = None
    accuracy: Accuracy = Accuracy.FRAME
    priority: int = Field(default=0, ge=-1000, le=1000)
    callback_url: str | None = Field(default=None, alias="callbackUrl", max_length=2048)

    def check_references(self) -> None:
        """Cross-field checks pydantic cannot attach to a field: raise ConfigError."""
        for i, seg in enumerate(self.segments):
            if seg.source_index >= len(self.sources):
                raise ConfigError(
                    f"segments[{i}].sourceIndex is {seg.source_index} but there are only "
                    f"{len(self.sources)} sources",
                    field=f"segments[{i}].sourceIndex",
                )


#: Fields the editor's authors planned for later schema versions; we do not act on them yet.
PLANNED_FIELDS = frozenset({"audioOverride", "transitions", "globalTrim", "watermark",
                            "s3Upload"})


def unknown_field_warnings(config: ExportConfig) -> list[str]:
    """One sentence per field we keep but do not act on, with the closest known name.

    Unknown fields are allowed so a newer editor still gets its export, but a typo such as
    ``audioFromSorce`` silently changes the result; the user must hear about it.
    """
    places: list[tuple[str, BaseModel]] = [("", config), ("output", config.output)]
    places += [(f"sources[{i}]", s) for i, s in enumerate(config.sources)]
    places += [(f"segments[{i}]", s) for i, s in enumerate(config.segments)]
    warnings: list[str] = []
    for prefix, model in places:
        known = _known_names(type(model))
        for name in model.model_extra or {}:
            where = f"{prefix}.{name}" if prefix else name
            if not prefix and name in PLANNED_FIELDS:
                warnings.append(f"{where} is not supported yet and was ignored")
                continue
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            warnings.append(f"{where} is not a known field and was ignored{hint}")
    return warnings


def _known_names(model: type[BaseModel]) -> list[str]:
    """The names a model accepts on input (the editor's camelCase aliases)."""
    return [info.alias or name for name, info in model.model_fields.items()]


def seconds(value: float) -> Fraction:
    """Exact Fraction of a float's shortest decimal form: 0.1 -> 1/10, not 0.1's binary value."""
    return Fraction(repr(float(value)))


def is_valid_job_id(job_id: str) -> bool:
    return bool(_JOB_ID_RE.fullmatch(job_id))  # fullmatch: "$" would let a final "\n" in


def parse_config(data: Any) -> ExportConfig:
    """Validate raw JSON data; raise ConfigError naming the first bad field in one sentence."""
    try:
        config = ExportConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_first_error(exc), field=_first_loc(exc)) from exc
    config.check_references()
    return config


def _first_loc(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = _format_loc(err.get("loc", ()))
    if str(err.get("msg", "")).removeprefix("Value error, ").startswith("endTime"):
        loc += ".endTime"  # the ordering check runs on the whole segment
    return loc


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = _format_loc(err.get("loc", ()))
    msg = str(err.get("msg", "is invalid"))
    # pydantic prefixes errors raised in validators with "Value error, "; the user needs
    # only our sentence.
    msg = msg.removeprefix("Value error, ")
    if err.get("type") == "string_pattern_mismatch" and loc == "id":
        msg = "must be 1-128 letters, digits, '-' or '_' (e.g. export-<uuid>)"
    if loc and not msg.startswith(loc.split("[")[0]):
        return f"{loc}: {msg}"
    return msg
