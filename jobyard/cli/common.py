"""What every client command shares: the --url/--token options, error exits, and output formats."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from jobyard.client import ApiError, Client

F = TypeVar("F", bound=Callable[..., Any])
Column = tuple[str, Callable[[dict[str, Any]], Any]]


def with_client(func: F) -> F:
    """Add --url/--token, pass a ``client``, and turn API errors into ``error: ...`` and exit 1."""

    @click.option("--url", envvar="JOBYARD_URL", default=None, help="API address (JOBYARD_URL)")
    @click.option("--token", envvar="JOBYARD_TOKEN", default=None, help="bearer token (JOBYARD_TOKEN)")
    @functools.wraps(func)
    def wrapper(url: str | None, token: str | None, **kwargs: Any) -> Any:
        try:
            with Client(url, token) as client:
                return func(client=client, **kwargs)
        except ApiError as exc:
            fail(str(exc))
        except TimeoutError as exc:
            fail(str(exc))
        except KeyboardInterrupt:  # Ctrl-C while following a log or waiting: no traceback
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def env_pairs(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    """Click callback: repeated ``KEY=VALUE`` options as a dict."""
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", ctx=ctx, param=param)
        out[key] = value
    return out


json_option = click.option("--json", "as_json", is_flag=True, help="print the API's JSON")
limit_option = click.option("--limit", "-l", type=click.IntRange(1, 500), default=50, show_default=True)
before_option = click.option("--before", help="page cursor (the 'next' of the previous page)")


def fail(message: str) -> None:
    """Print ``error: message`` on stderr and exit 1."""
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def note(message: str) -> None:
    """A message for the human (stderr, so stdout stays data)."""
    click.echo(message, err=True)


def emit_json(data: Any) -> None:
    """Data as indented JSON on stdout."""
    click.echo(json.dumps(data, indent=2))


def when(value: str | float | None) -> str:
    """An ISO time (or epoch seconds) from the API as ``YYYY-MM-DD HH:MM:SS`` (UTC), or ``-``."""
    if value is None or value == "":
        return "-"
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S")
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return value


def seconds(value: float | None) -> str:
    """A duration for a table cell."""
    if value is None:
        return "-"
    return f"{value:.2f}s" if value < 60 else f"{value / 60:.1f}m"


def table(rows: Sequence[dict[str, Any]], columns: Sequence[Column], empty: str) -> None:
    """Rows as aligned columns on stdout, or ``empty`` on stderr when there are none."""
    if not rows:
        note(empty)
        return
    cells = [[str("-" if (v := get(row)) is None or v == "" else v) for _, get in columns] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (h, _) in enumerate(columns)]
    for line in ([h for h, _ in columns], *cells):
        click.echo("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


def fields(data: dict[str, Any], names: Sequence[str]) -> None:
    """``name: value`` lines on stdout for the given keys (nested values as JSON)."""
    width = max(len(n) for n in names)
    for name in names:
        value = data.get(name)
        if name.endswith("_at") and isinstance(value, str):
            value = when(value)
        elif isinstance(value, float):
            value = f"{value:.3f}"
        elif isinstance(value, dict | list):
            value = json.dumps(value) if value else "-"
        click.echo(f"{name + ':':<{width + 1}} {'-' if value is None or value == '' else value}")


def log_line(entry: dict[str, Any]) -> str:
    """A streamed log entry in the text log's format: ``<ISO time> <STREAM> <line>``."""
    t = entry.get("t")
    if isinstance(t, int | float):
        from jobyard.models import iso

        t = iso(float(t))
    return f"{t} {entry.get('stream', 'INFO'):<4} {entry.get('line', '')}"


RUN_COLUMNS: list[Column] = [
    ("ID", lambda r: r["id"]),
    ("STATUS", lambda r: r.get("status")),
    ("TRIGGER", lambda r: r.get("trigger")),
    ("ATTEMPT", lambda r: r.get("attempt")),
    ("PRIORITY", lambda r: r.get("priority")),
    ("ENQUEUED", lambda r: when(r.get("enqueued_at"))),
    ("DURATION", lambda r: seconds(r.get("duration_s"))),
    ("EXIT", lambda r: r.get("exit_code")),
]

JOB_COLUMNS: list[Column] = [
    ("NAME", lambda j: j["name"]),
    ("TYPE", lambda j: j.get("type")),
    ("ENTRY", lambda j: j.get("entry")),
    ("SCHEDULE", lambda j: (j.get("settings") or {}).get("schedule")),
    ("VERSION", lambda j: j.get("version")),
    ("UPDATED", lambda j: when(j.get("updated_at"))),
]

DEADLETTER_COLUMNS: list[Column] = [
    ("RUN", lambda r: r.get("run_id") or r.get("id")),
    ("JOB", lambda r: r.get("job")),
    ("ATTEMPTS", lambda r: r.get("attempts")),
    ("DEAD SINCE", lambda r: when(r.get("dead_lettered_at"))),
    ("ERROR", lambda r: last_line(r.get("error"))),
]

SCHEDULE_COLUMNS: list[Column] = [
    ("JOB", lambda s: s.get("job")),
    ("SCHEDULE", lambda s: s.get("expr")),
    ("TIMEZONE", lambda s: s.get("timezone")),
    ("PAUSED", lambda s: "yes" if s.get("paused") else "no"),
    ("NEXT FIRE", lambda s: when(s.get("next_fire_time"))),
    ("LAST FIRE", lambda s: when(s.get("last_fire"))),
    ("WHEN", lambda s: s.get("error") or s.get("description")),
]

WORKER_COLUMNS: list[Column] = [
    ("INSTANCE", lambda w: w.get("instance_id")),
    ("HOST", lambda w: w.get("host")),
    ("PID", lambda w: w.get("pid")),
    ("SLOTS", lambda w: w.get("slots")),
    ("BUSY", lambda w: w.get("busy")),
    ("LAST SEEN", lambda w: when(w.get("last_seen"))),
]

TOKEN_COLUMNS: list[Column] = [
    ("ID", lambda t: t.get("id")),
    ("ROLE", lambda t: t.get("role")),
    ("NAME", lambda t: t.get("name")),
    ("CREATED", lambda t: when(t.get("created_at"))),
    ("EXPIRES", lambda t: when(t.get("expires_at"))),
]

RUN_FIELDS = [
    "id", "job", "status", "trigger", "args", "priority", "attempt", "max_retries", "worker",
    "enqueued_at", "scheduled_for", "started_at", "ended_at", "duration_s", "exit_code", "error",
    "result", "idempotency_key", "replay_of",
]  # fmt: skip


def run_summary(run: dict[str, Any]) -> str:
    """``run <id> <status>`` with the exit code and error when there is one."""
    text = f"run {run['id']} {run.get('status')}"
    if run.get("exit_code") is not None:
        text += f" (exit {run['exit_code']})"
    if run.get("duration_s") is not None:
        text += f" in {seconds(run['duration_s'])}"
    if run.get("error") and run.get("status") != "succeeded":
        text += f": {run['error']}"
    return text


def last_line(text: str | None, width: int = 60) -> str:
    """The last line of a (multi-line) error, cut to ``width`` characters."""
    lines = (text or "").strip().splitlines()
    return lines[-1][:width] if lines else ""
