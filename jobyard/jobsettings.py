"""``settings.job``: a job's own settings, validated field by field.

The file is JSON at the package root (WebJobs fields plus jobyard's own) and can also be read
and replaced through the API. Unknown fields and bad values are refused with a message naming
the field. Values are typed strictly: ``"30"`` is not a number and ``"true"`` is not a boolean,
so a typo is reported instead of guessed at. ``null`` means "not set".
"""

from __future__ import annotations

import difflib
import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from jobyard.errors import InvalidInput
from jobyard.settings import Settings, get_settings

MAX_SETTINGS_BYTES = 256 * 1024
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ACCOUNT_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
RESERVED_ENV_PREFIXES = ("JOBYARD_", "WEBJOBS_")
DEFAULT_RETRY_BACKOFF = {"min": 1.0, "max": 300.0}

_BOMS = (
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)


class RetryBackoff(BaseModel):
    """Exponential backoff between attempts, with jitter, from ``min`` up to ``max`` seconds."""

    model_config = ConfigDict(extra="forbid", strict=True)

    min: float = Field(ge=0, allow_inf_nan=False)
    max: float = Field(ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _ordered(self) -> RetryBackoff:
        if self.min > self.max:
            raise ValueError(f"min ({self.min:g}) must be <= max ({self.max:g})")
        return self


class JobSettings(BaseModel):
    """Every field of ``settings.job``; defaults are what a job without the field gets."""

    model_config = ConfigDict(extra="forbid", strict=True)

    # timezone comes before schedule: the schedule's validator reads it.
    timezone: str = "UTC"
    schedule: str | None = None
    is_singleton: bool = False
    stopping_wait_time: float = Field(5.0, ge=0, allow_inf_nan=False)
    is_in_place: bool = False
    type: Literal["triggered", "continuous"] = "triggered"
    entry: str | None = None
    timeout: float | None = Field(None, gt=0, allow_inf_nan=False)
    max_retries: int = Field(0, ge=0, le=100)
    retry_backoff: RetryBackoff = Field(default_factory=lambda: RetryBackoff(**DEFAULT_RETRY_BACKOFF))
    priority: Literal["high", "normal", "low"] = "normal"
    max_concurrency: int | None = Field(None, ge=1)
    overlap: Literal["skip", "queue", "allow"] = "skip"
    catch_up: Literal["none", "latest", "all"] = "latest"
    env: dict[str, str] = Field(default_factory=dict)
    history_size: int = Field(50, ge=1, le=10_000)
    # Limits of one run (its whole process group); unset = the cluster default or none.
    max_memory_mb: float | None = Field(None, gt=0, allow_inf_nan=False)
    max_cpu_seconds: float | None = Field(None, gt=0, allow_inf_nan=False)
    max_open_files: int | None = Field(None, gt=0)
    max_processes: int | None = Field(None, gt=0)
    max_output_mb: float | None = Field(None, gt=0, allow_inf_nan=False)
    # The account its scripts run as on the workers (deploy and settings changes are admin-only).
    run_as: str | None = None

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        from jobyard.cron import parse_timezone

        try:
            parse_timezone(value)
        except InvalidInput as exc:
            raise ValueError(exc.message) from exc
        return value

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | None, info: Any) -> str | None:
        from jobyard.cron import parse_schedule

        if value is None:
            return None
        if not value.strip():
            raise ValueError("is empty; remove it for a job without a schedule")
        try:
            parse_schedule(value, info.data.get("timezone") or "UTC")
        except InvalidInput as exc:
            raise ValueError(exc.message) from exc
        return value

    @field_validator("entry")
    @classmethod
    def _entry(cls, value: str | None) -> str | None:
        from jobyard.entry import check_entry_path

        if value is None:
            return None
        try:
            return check_entry_path(value)
        except InvalidInput as exc:
            raise ValueError(
                f"{value!r} must be a relative path inside the package, with '/' and no '..'"
            ) from exc

    @field_validator("run_as")
    @classmethod
    def _run_as(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not ACCOUNT_RE.match(value):
            raise ValueError(f"{value[:40]!r} is not an account name (a-z, 0-9, '_', '-'; at most 32)")
        if value == "root":
            raise ValueError("scripts never run as root by request: name an unprivileged account")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not ENV_NAME_RE.match(name):
                raise ValueError(f"{name!r} is not a variable name (letters, digits, '_'; no digit first)")
            if name.upper().startswith(RESERVED_ENV_PREFIXES):
                raise ValueError(f"{name!r} starts with a reserved prefix (JOBYARD_, WEBJOBS_)")
            if "\x00" in text:
                raise ValueError(f"the value of {name!r} contains a NUL character")
        return value


FIELDS = tuple(JobSettings.model_fields)


def _decode(raw: bytes) -> str:
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            try:
                return raw[len(bom) :].decode(encoding)
            except UnicodeDecodeError as exc:
                raise InvalidInput(f"settings.job is not valid {encoding}: {exc}", _JSON_HINT) from exc
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"settings.job is not valid UTF-8: {exc}", _JSON_HINT) from exc


_JSON_HINT = 'settings.job must be a JSON object, e.g. {"schedule": "0 */5 * * * *"}'


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise InvalidInput(f"settings.job: field {key!r} is given twice", _JSON_HINT)
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _load(raw: bytes | str) -> Any:
    if len(raw) > MAX_SETTINGS_BYTES:
        raise InvalidInput(f"settings.job is larger than {MAX_SETTINGS_BYTES} bytes", _JSON_HINT)
    text = _decode(raw) if isinstance(raw, bytes) else raw
    text = text.removeprefix("\ufeff")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except InvalidInput:
        raise
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(f"settings.job is not valid JSON: {exc}", _JSON_HINT) from exc


def _describe(error: Any) -> tuple[str, str]:
    """(field path, what is wrong) for one pydantic error, in our words."""
    loc = ".".join(str(p) for p in error["loc"])
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(loc, FIELDS, n=1) if len(error["loc"]) == 1 else []
        return loc, "unknown field" + (f" (did you mean {close[0]!r}?)" if close else "")
    words = {
        "missing": "is required",
        "int_type": "must be an integer",
        "float_type": "must be a number",
        "bool_type": "must be true or false",
        "string_type": "must be a string",
        "dict_type": "must be an object",
        "model_type": "must be an object",
        "finite_number": "must be a finite number",
        "greater_than": f"must be > {ctx.get('gt')}",
        "greater_than_equal": f"must be >= {ctx.get('ge')}",
        "less_than": f"must be < {ctx.get('lt')}",
        "less_than_equal": f"must be <= {ctx.get('le')}",
        "literal_error": f"must be one of {ctx.get('expected')}",
    }
    if kind in words:
        return loc, words[kind]
    if kind == "value_error":
        return loc, str(ctx.get("error") or error["msg"])
    return loc, str(error["msg"])


def _validate(data: Any) -> JobSettings:
    if not isinstance(data, dict):
        raise InvalidInput(f"settings.job must be a JSON object, not {type(data).__name__}", _JSON_HINT)
    given = {k: v for k, v in data.items() if v is not None}
    try:
        # Lone surrogates ("\ud800") parse as JSON but cannot reach a process environment or Redis.
        json.dumps(given, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, TypeError, ValueError) as exc:
        raise InvalidInput(f"settings.job holds a value that is not plain text: {exc}", _JSON_HINT) from exc
    try:
        return JobSettings.model_validate(given)
    except ValidationError as exc:
        problems = [_describe(e) for e in exc.errors()]
        text = "; ".join(
            f"unknown field {loc!r}{why.removeprefix('unknown field')}"
            if why.startswith("unknown field")
            else f"field {loc!r}: {why}"
            for loc, why in problems
        )
        raise InvalidInput(
            f"settings.job: {text}",
            [{"field": loc, "error": why} for loc, why in problems],
        ) from exc


def parse_settings(raw: bytes | str | dict[str, Any]) -> dict[str, Any]:
    """Validate ``settings.job`` (JSON text, bytes with or without a BOM, or a dict); the fields given."""
    data = raw if isinstance(raw, dict) else _load(raw)
    model = _validate(data)
    return model.model_dump(exclude_unset=True)


def effective(settings: dict[str, Any], cluster: Settings | None = None) -> JobSettings:
    """A job's settings with every default filled in (some defaults come from the cluster settings)."""
    cluster = cluster or get_settings()
    defaults: dict[str, Any] = {
        "history_size": cluster.default_history_size,
        "stopping_wait_time": cluster.default_stopping_wait_seconds,
        "max_output_mb": cluster.max_output_mb,
    }
    return _validate({**defaults, **{k: v for k, v in settings.items() if v is not None}})
