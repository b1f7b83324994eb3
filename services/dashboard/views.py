"""Rendering: the Jinja2 environment (autoescape on for everything), display filters, static URLs.

Job names, arguments, settings, errors and log lines are user data; autoescaping every template
(not only ``.html`` by extension) keeps them text. Times are shown in UTC, as the API gives them.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.requests import Request
from starlette.responses import HTMLResponse

from jobyard import __version__
from jobyard.models import parse_iso
from services.dashboard.session import Session, take_flashes
from services.deps import get_ctx

HERE = Path(__file__).resolve().parent
TEMPLATES_DIR = HERE.parent / "templates"
STATIC_DIR = HERE.parent / "static"
STATUS_CLASSES = {
    "queued",
    "running",
    "retrying",
    "succeeded",
    "failed",
    "cancelled",
    "timed_out",
    "restarting",
    "stopped",
    "inactive",
}


def _static_files() -> dict[str, tuple[Path, str]]:
    """Every file under ``services/static`` by name, with a short content hash for its URL."""
    found: dict[str, tuple[Path, str]] = {}
    if STATIC_DIR.is_dir():
        for path in sorted(STATIC_DIR.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                found[path.name] = (path, hashlib.sha256(path.read_bytes()).hexdigest()[:12])
    return found


STATIC_FILES = _static_files()


def static_url(name: str) -> str:
    """The URL of a static file; the hash in it lets browsers cache it for good."""
    _, digest = STATIC_FILES[name]
    return f"/static/{name}?v={digest}"


def to_epoch(value: Any) -> float | None:
    """Epoch seconds from epoch seconds, an ISO 8601 string, or None."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        pass
    try:
        return parse_iso(str(value))
    except ValueError:
        return None


def when(value: Any) -> str:
    """A time as ``YYYY-MM-DD HH:MM:SS`` UTC, or a dash."""
    ts = to_epoch(value)
    if ts is None:
        return "—"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def iso_attr(value: Any) -> str:
    """A time as ISO 8601 for a ``datetime`` attribute (empty when unknown)."""
    ts = to_epoch(value)
    return "" if ts is None else datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def ago(value: Any, now: float | None = None) -> str:
    """A time relative to now: ``12 s ago``, ``in 3 min``; a dash when unknown."""
    ts = to_epoch(value)
    if ts is None:
        return "—"
    delta = (time.time() if now is None else now) - ts
    text = _span(abs(delta))
    if abs(delta) < 1:
        return "just now"
    return f"{text} ago" if delta >= 0 else f"in {text}"


def _span(seconds: float) -> str:
    if seconds < 60:
        return f"{int(seconds)} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"
    return f"{int(seconds // 86400)} d {int(seconds % 86400 // 3600)} h"


def duration(seconds: Any) -> str:
    """A duration for people: ``850 ms``, ``12.3 s``, ``4 min 05 s``, ``2 h 03 min``."""
    if seconds is None:
        return "—"
    s = float(seconds)
    if s < 1:
        return f"{int(s * 1000)} ms"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def status_class(status: Any) -> str:
    """The CSS class of a status badge (an unknown status gets the neutral one)."""
    value = str(getattr(status, "value", status) or "")
    return f"status-{value}" if value in STATUS_CLASSES else "status-unknown"


def run_result(run: Any) -> str:
    """How a finished run ended, briefly: ``exit 0 · 231 ms``; empty while it has not ended."""
    if run is None or not run.terminal:
        return ""
    code = run.exit_code
    head = run.status.value.replace("_", " ")
    if code is not None and run.status.value in ("succeeded", "failed"):
        head = f"signal {-code}" if code < 0 else f"exit {code}"
    parts = [head]
    if run.duration_s is not None:
        parts.append(duration(run.duration_s))
    return " · ".join(parts)


def pretty_json(value: Any) -> str:
    """Indented JSON (escaped by the template like any text)."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        when=when,
        ago=ago,
        duration=duration,
        status_class=status_class,
        pretty_json=pretty_json,
        iso=iso_attr,
        run_result=run_result,
    )
    env.globals.update(static=static_url, version=__version__)
    return env


ENV = _environment()


def render(
    request: Request, template: str, session: Session | None, status: int = 200, **context: Any
) -> HTMLResponse:
    """Render a page; ``session`` (None on the login page) decides what the header shows."""
    values: dict[str, Any] = {
        "session": session,
        "csrf": session.csrf if session else "",
        "can_operate": bool(session and session.allows("operator")),
        "can_admin": bool(session and session.allows("admin")),
        "flashes": [],
        "nav": "",
        "title": "",
    }
    values.update(context)
    html = ENV.get_template(template).render(values)
    return HTMLResponse(html, status_code=status)


async def page(
    request: Request, template: str, session: Session, status: int = 200, **context: Any
) -> HTMLResponse:
    """Render a page for a logged-in user, with (and clearing) its queued messages."""
    flashes = await take_flashes(get_ctx(request), session)
    return render(request, template, session, status, flashes=flashes, **context)


def render_error(request: Request, status: int, message: str, detail: Any = None) -> HTMLResponse:
    """An error page; the header shows the user when the request had a session."""
    session: Session | None = request.scope.get("dashboard.session")
    text = detail if isinstance(detail, str) else (json.dumps(detail) if detail else "")
    return render(
        request, "error.html", session, status, code=status, message=message, detail=text, title=message
    )
