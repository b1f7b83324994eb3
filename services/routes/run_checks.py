"""The checks of a run request's fields, and a by-hand reading of a batch's common shape.

``RunRequest`` (services.routes.runs) validates an enqueue body with pydantic, through the checks
here. Pydantic costs a batch of 1,000 runs more than the rest of its validation: its model, an
object per item and the field machinery, then ``to_spec`` per item. ``batch_specs`` reads the
shapes that clients send (the fields' own JSON types, values inside the limits) straight into
``EnqueueSpec``s with the very same checks; on anything else it answers ``None`` and the
request goes through pydantic, which words the 422 exactly as before.
"""

from __future__ import annotations

import math
import re
import shlex
import time
from typing import Any
from urllib.parse import urlsplit

from jobyard.models import JOB_NAME_RE, Priority, Trigger, parse_iso
from jobyard.runs import EnqueueSpec

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
MAX_ARGUMENTS = 1000
MAX_ARGUMENT_BYTES = 128 * 1024
MAX_ENV_NAMES = 200
MAX_ENV_VALUE_BYTES = 32 * 1024
MAX_DELAY_S = 366 * 86400.0
MAX_BATCH = 1000
MAX_KEY_CHARS = 256
MAX_URL_CHARS = 2048
MAX_RETRIES = 100


def check_arguments(value: list[str] | str | None) -> list[str] | str | None:
    """The arguments as a list (a string is split like a shell would), or ``ValueError``."""
    if isinstance(value, str):
        try:
            value = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot split the argument string: {exc} (check its quotes)") from exc
    if value is not None:
        if len(value) > MAX_ARGUMENTS:
            raise ValueError(f"{len(value)} arguments; at most {MAX_ARGUMENTS}")
        if sum(len(a.encode()) for a in value) > MAX_ARGUMENT_BYTES:
            raise ValueError(f"arguments add up to more than {MAX_ARGUMENT_BYTES} bytes")
        if any("\x00" in a for a in value):
            raise ValueError("an argument contains a NUL character")
    return value


def check_run_at(value: str | None) -> str | None:
    """``value`` if it is an ISO 8601 time (or None), else ``ValueError``."""
    if value is not None:
        try:
            parse_iso(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an ISO 8601 time, e.g. 2030-01-31T12:00:00Z") from exc
    return value


def check_env(value: dict[str, str]) -> dict[str, str]:
    """``value`` if its names and values are within the rules, else ``ValueError``."""
    if len(value) > MAX_ENV_NAMES:
        raise ValueError(f"{len(value)} variables; at most {MAX_ENV_NAMES}")
    for name, text in value.items():
        if not ENV_NAME_RE.match(name):
            raise ValueError(f"{name!r} is not a variable name (letters, digits, '_'; not a digit first)")
        if len(text.encode()) > MAX_ENV_VALUE_BYTES or "\x00" in text:
            raise ValueError(f"the value of {name} is over {MAX_ENV_VALUE_BYTES} bytes or contains NUL")
    return value


def check_callback_url(value: str | None) -> str | None:
    """``value`` if it is an absolute http(s) URL (or None), else ``ValueError``."""
    if value is not None:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http:// or https:// URL")
    return value


class _Unusual(Exception):
    """A value the by-hand reading leaves to pydantic."""


_PRIORITIES = {p.value: p for p in Priority}
_ITEM_FIELDS = frozenset(
    {
        "job",
        "arguments",
        "priority",
        "idempotency_key",
        "run_at",
        "delay_s",
        "timeout_s",
        "env",
        "callback_url",
        "max_retries",
    }
)


def _number(value: Any) -> float:
    # JSON numbers only (pydantic also takes numeric strings, and says what it thinks of bools)
    if type(value) is not float and type(value) is not int:
        raise _Unusual
    try:
        number = float(value)
    except OverflowError as exc:  # an integer too large for a float
        raise _Unusual from exc
    if not math.isfinite(number):
        raise _Unusual
    return number


def _text(value: Any, max_chars: int) -> str:
    if type(value) is not str or not 1 <= len(value) <= max_chars:
        raise _Unusual
    return value


def _checked(check: Any, value: Any) -> Any:
    try:
        return check(value)
    except ValueError as exc:
        raise _Unusual from exc


def _spec(item: Any, now: float) -> EnqueueSpec:
    """One batch item as ``BatchItem.model_validate(item).to_spec(...)`` would make it, or ``_Unusual``."""
    if type(item) is not dict or not item.keys() <= _ITEM_FIELDS:
        raise _Unusual
    get = item.get
    job = get("job")
    if type(job) is not str or not JOB_NAME_RE.match(job):
        raise _Unusual
    if len(item) == 1:  # {"job": name}: the common case, every field at its default
        return EnqueueSpec(job=job, trigger=Trigger.API)
    arguments = get("arguments")
    args: list[str] = []
    if arguments is not None:
        if type(arguments) is list:
            if not all(type(a) is str for a in arguments):
                raise _Unusual
        elif type(arguments) is not str:
            raise _Unusual
        args = _checked(check_arguments, arguments)
    priority = get("priority")
    if priority is not None:
        if type(priority) is not str or priority not in _PRIORITIES:
            raise _Unusual
        priority = _PRIORITIES[priority]
    key = get("idempotency_key")
    if key is not None:
        key = _text(key, MAX_KEY_CHARS)
    run_at_text, delay = get("run_at"), get("delay_s")
    if run_at_text is not None and delay is not None:
        raise _Unusual
    run_at: float | None = None
    if run_at_text is not None:
        if type(run_at_text) is not str:
            raise _Unusual
        run_at = _checked(parse_iso, run_at_text)
    elif delay is not None:
        delay_s = _number(delay)
        if not 0 <= delay_s <= MAX_DELAY_S:
            raise _Unusual
        if delay_s:
            run_at = now + delay_s
    timeout = get("timeout_s")
    timeout_s: float | None = None
    if timeout is not None:
        timeout_s = _number(timeout)
        if not timeout_s > 0:
            raise _Unusual
    env: dict[str, str] = {}
    if "env" in item:  # not optional: null is pydantic's to refuse
        given = item["env"]
        if type(given) is not dict or not all(type(v) is str for v in given.values()):
            raise _Unusual
        env = dict(_checked(check_env, given))
    url = get("callback_url")
    if url is not None:
        url = _checked(check_callback_url, _text(url, MAX_URL_CHARS))
    retries = get("max_retries")
    if retries is not None and (type(retries) is not int or not 0 <= retries <= MAX_RETRIES):
        raise _Unusual
    return EnqueueSpec(
        job=job,
        args=args,
        priority=priority,
        idempotency_key=key,
        run_at=run_at,
        timeout_s=timeout_s,
        env=env,
        callback_url=url,
        max_retries=retries,
        trigger=Trigger.API,
    )


def batch_specs(data: Any, now: float | None = None) -> list[EnqueueSpec] | None:
    """The specs of a batch body (``{"runs": [...]}``) of the common shape, or ``None`` for
    pydantic to validate (and word its 422s). The same specs as ``BatchRequest`` and
    ``RunRequest.to_spec`` make of it."""
    if type(data) is not dict or data.keys() != {"runs"}:
        return None
    items = data["runs"]
    if type(items) is not list or not 1 <= len(items) <= MAX_BATCH:
        return None
    now = time.time() if now is None else now
    try:
        return [_spec(item, now) for item in items]
    except _Unusual:
        return None
