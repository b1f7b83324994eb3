"""The audit log: every admin action with who, what, when and how it ended, in a capped stream.

``keys.audit`` is a Redis stream, trimmed (approximately, which keeps ``XADD`` O(1)) to
``JOBYARD_AUDIT_MAX_EVENTS`` entries. Each entry's id is its time; its fields:

- ``actor_id``, ``actor_name``, ``actor_role``: the token that acted (``bootstrap-admin`` for
  ``JOBYARD_ADMIN_TOKEN``; ``cli:<user>@<host>`` for commands run against Redis directly); empty
  for a 403 the token that was refused;
- ``action``: the operation (``deployJob``, ``putJobSecret``, ``revokeToken``, ``secrets.rotate``...);
- ``target``: what it acted on, ``name=<job>`` / ``key=<KEY>`` / ``token_id=<id>`` pairs;
- ``method``, ``path``, ``status``: the HTTP request and the status it got (403s of lesser roles
  trying admin actions are recorded too; 401s without a valid token are not, so they cannot
  flush the capped stream);
- ``address``: the client address (after trusted proxies).

Never a request body: secret values and token secrets do not reach the log.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import redis
import redis.asyncio as aioredis

from jobyard.errors import InvalidInput
from jobyard.keys import Keys
from jobyard.models import iso

FIELDS = ("actor_id", "actor_name", "actor_role", "action", "target", "method", "path", "status", "address")
MAX_FIELD_CHARS = 500
MAX_PAGE = 1000


@dataclass
class AuditEvent:
    """One admin action."""

    action: str
    target: str = ""
    actor_id: str = ""
    actor_name: str = ""
    actor_role: str = ""
    method: str = ""
    path: str = ""
    status: int = 0
    address: str = ""
    id: str = ""  # the stream entry id, set when read back
    time: float | None = None

    def fields(self) -> dict[str, str]:
        """The stream entry's fields (each capped in length: paths come from clients)."""
        data = asdict(self)
        return {name: str(data[name])[:MAX_FIELD_CHARS] for name in FIELDS}

    @classmethod
    def from_entry(cls, entry_id: bytes | str, data: dict[Any, Any]) -> AuditEvent:
        """Read one stream entry."""
        eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        text = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in data.items()
        }
        status = text.get("status", "0")
        return cls(
            action=text.get("action", ""),
            target=text.get("target", ""),
            actor_id=text.get("actor_id", ""),
            actor_name=text.get("actor_name", ""),
            actor_role=text.get("actor_role", ""),
            method=text.get("method", ""),
            path=text.get("path", ""),
            status=int(status) if status.isdigit() else 0,
            address=text.get("address", ""),
            id=eid,
            time=int(eid.split("-")[0]) / 1000.0,
        )

    def as_api(self) -> dict[str, Any]:
        """The event as ``GET /api/audit`` shows it."""
        return {
            "id": self.id,
            "time": iso(self.time),
            "actor": {"id": self.actor_id, "name": self.actor_name, "role": self.actor_role},
            "action": self.action,
            "target": self.target,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "address": self.address,
        }


def target_of(params: dict[str, Any]) -> str:
    """``name=job key=API_KEY`` from a route's path parameters, in a stable order."""
    return " ".join(f"{k}={params[k]}" for k in sorted(params))


def check_cursor(before: str | None) -> str | None:
    """A ``before`` cursor (a stream id ``<ms>-<seq>``) or ``InvalidInput``."""
    if before is None:
        return None
    ms, _, seq = before.partition("-")
    if not ms.isdigit() or not seq.isdigit() or len(before) > 40:
        raise InvalidInput(f"invalid cursor {before[:60]!r}", "pass the 'next' value of the previous page")
    return before


def _page_args(before: str | None) -> str:
    return "+" if before is None else f"({before}"


def _events(rows: Any) -> list[AuditEvent]:
    return [AuditEvent.from_entry(i, d) for i, d in rows or [] if i is not None]


def record(client: redis.Redis, keys: Keys, event: AuditEvent, max_events: int) -> str:
    """Append one event; its id."""
    raw = client.xadd(keys.audit, event.fields(), maxlen=max_events, approximate=True)  # type: ignore[arg-type]
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def read(client: redis.Redis, keys: Keys, limit: int = 100, before: str | None = None) -> list[AuditEvent]:
    """Events newest first, up to ``limit``, older than the ``before`` id."""
    start = _page_args(check_cursor(before))
    return _events(client.xrevrange(keys.audit, start, "-", count=min(limit, MAX_PAGE)))


async def arecord(client: aioredis.Redis, keys: Keys, event: AuditEvent, max_events: int) -> str:
    """Asyncio ``record``."""
    raw = await client.xadd(keys.audit, event.fields(), maxlen=max_events, approximate=True)  # type: ignore[arg-type]
    return raw.decode() if isinstance(raw, bytes) else str(raw)


async def aread(
    client: aioredis.Redis, keys: Keys, limit: int = 100, before: str | None = None
) -> list[AuditEvent]:
    """Asyncio ``read``."""
    start = _page_args(check_cursor(before))
    return _events(await client.xrevrange(keys.audit, start, "-", count=min(limit, MAX_PAGE)))


def cli_actor() -> tuple[str, str]:
    """(id, name) of a person running a command against Redis directly."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    who = f"cli:{user}@{socket.gethostname()}"
    return who, who
