"""The job and run records, their statuses, and how they are stored in Redis hashes.

Times are stored as epoch seconds (floats) and rendered as ISO 8601 UTC by ``as_api()``.
"""

from __future__ import annotations

import copy
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

JOB_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
JOB_NAME_RULE = "a job name is 1-64 characters: letters, digits, '_' and '-', starting with a letter or digit"


class RunStatus(StrEnum):
    """Where a run is in its life. Terminal statuses never change again."""

    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.TIMED_OUT})
ACTIVE = frozenset({RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.RETRYING})
# The Lua scripts test terminality with this string; kept next to the set it mirrors.
TERMINAL_LUA = ",".join(sorted(s.value for s in TERMINAL))


class Trigger(StrEnum):
    """What made a run."""

    API = "api"
    SCHEDULE = "schedule"
    RETRY = "retry"
    REPLAY = "replay"
    CONTINUOUS = "continuous"


class Priority(StrEnum):
    """Queue level. Strict: every high run starts before any normal one, and so on."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class JobType(StrEnum):
    """How a job is run."""

    TRIGGERED = "triggered"
    CONTINUOUS = "continuous"


# Two digits of ULID's base32 (Crockford's alphabet) for each 10-bit value.
_DIGITS = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = tuple(a + b for a in _DIGITS for b in _DIGITS)
_RANDOM_MAX = (1 << 80) - 1
_ulid_lock = threading.Lock()
_ulid_last = (0, 0)  # (milliseconds, randomness) of the last id made in this process


def _base32(value: int, pairs: int) -> str:
    """The low ``10 * pairs`` bits of ``value`` as ``2 * pairs`` base32 digits."""
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in range(10 * pairs - 10, -1, -10)])


def new_run_ids(count: int) -> list[str]:
    """``count`` new sortable run ids (ULIDs: 26 characters, time first), in increasing order.

    Monotonic within the process as python-ulid's ``ULID()`` is: ids made in the same
    millisecond count up from the first one's random part, so a batch keeps its order in a
    job's history. Made by hand because ``str(ULID())`` was ~10 us an id and a batch makes
    1,000: consecutive ids differ in their last four digits but once in a million, so only
    those are worked out per id.
    """
    global _ulid_last
    if count <= 0:
        return []
    ms = time.time_ns() // 1_000_000
    with _ulid_lock:
        last_ms, last_random = _ulid_last
        if ms == last_ms and last_random + count <= _RANDOM_MAX:
            first = last_random + 1
        else:  # a new millisecond (or, absurdly, exhausted randomness): fresh random bits
            first = int.from_bytes(os.urandom(10), "big")
            if first + count > _RANDOM_MAX:
                first -= count
        _ulid_last = (ms, first + count - 1)
    ids: list[str] = []
    high = -1
    head = ""
    start = (ms << 80) | first
    for value in range(start, start + count):
        if value >> 20 != high:
            high = value >> 20
            head = _base32(high, 11)
        ids.append(head + _PAIRS[(value >> 10) & 1023] + _PAIRS[value & 1023])
    return ids


def new_run_id() -> str:
    """A new sortable run id (ULID: time-ordered, 26 characters)."""
    return new_run_ids(1)[0]


_iso_last: tuple[float, str] = (float("nan"), "")


def iso(ts: float | None) -> str | None:
    """Epoch seconds to an ISO 8601 UTC string (None stays None)."""
    global _iso_last
    if ts is None:
        return None
    last = _iso_last
    if last[0] == ts:  # the runs of a batch share one enqueue time
        return last[1]
    text = datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
    _iso_last = (ts, text)
    return text


def parse_iso(value: str) -> float:
    """An ISO 8601 string (``Z`` or an offset; naive means UTC) to epoch seconds."""
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


_JSON_FIELDS = {"args", "env", "result"}
_FLOAT_FIELDS = {
    "enqueued_at",
    "started_at",
    "ended_at",
    "scheduled_for",
    "next_attempt_at",
    "timeout_s",
    "dead_lettered_at",
}
_INT_FIELDS = {"attempt", "max_retries", "exit_code", "deaths", "failures", "worker_pid", "cancel_requested"}
_TIME_FIELDS = {
    "enqueued_at",
    "started_at",
    "ended_at",
    "scheduled_for",
    "next_attempt_at",
    "dead_lettered_at",
}


@dataclass
class Run:
    """One execution of a job (all attempts of it share the record)."""

    id: str
    job: str
    status: RunStatus = RunStatus.QUEUED
    trigger: Trigger = Trigger.API
    args: list[str] = field(default_factory=list)
    priority: Priority = Priority.NORMAL
    attempt: int = 0
    max_retries: int = 0
    worker: str | None = None
    worker_pid: int | None = None
    enqueued_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    scheduled_for: float | None = None
    next_attempt_at: float | None = None
    dead_lettered_at: float | None = None
    exit_code: int | None = None
    error: str | None = None
    result: Any = None
    idempotency_key: str | None = None
    timeout_s: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    callback_url: str | None = None
    callback_status: str | None = None
    replay_of: str | None = None
    package: str | None = None
    deaths: int = 0  # attempts lost because the worker died mid-run
    failures: int = 0  # attempts that failed (exit code, timeout, missing interpreter)
    cancel_requested: int = 0

    def to_hash(self) -> dict[str, str]:
        """The record as Redis hash fields (None fields are left out)."""
        # Read from the instance dict by a plan made once: fields() per call was a tenth of a batch.
        values = self.__dict__
        out: dict[str, str] = {}
        for name, is_json in _HASH_PLAN:
            value = values[name]
            if value is None:
                continue
            if is_json:
                out[name] = "[]" if value == [] else "{}" if value == {} else json.dumps(value)
            else:
                out[name] = str(value)  # a StrEnum's str() is its value
        return out

    @classmethod
    def from_hash(cls, data: dict[bytes, bytes] | dict[str, str]) -> Run:
        """Read a record written by ``to_hash`` or by the Lua scripts."""
        raw = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in data.items()
        }
        kwargs: dict[str, Any] = {}
        names = _RUN_NAMES
        for name, value in raw.items():
            if name not in names or value == "":
                continue
            if name in _JSON_FIELDS:
                kwargs[name] = json.loads(value)
            elif name in _FLOAT_FIELDS:
                kwargs[name] = float(value)
            elif name in _INT_FIELDS:
                kwargs[name] = int(float(value))
            else:
                kwargs[name] = value
        kwargs["status"] = RunStatus(kwargs.get("status", "queued"))
        kwargs["trigger"] = Trigger(kwargs.get("trigger", "api"))
        kwargs["priority"] = Priority(kwargs.get("priority", "normal"))
        return cls(**kwargs)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.ended_at
        return None if end is None else max(0.0, end - self.started_at)

    def as_api(self) -> dict[str, Any]:
        """The record as the HTTP API shows it: ISO times, no internal bookkeeping."""
        # A shallow copy plus copies of the mutable fields: dataclasses.asdict deep-copies field
        # by field and was a third of the CPU of a batch enqueue.
        out = dict(self.__dict__)  # the fields, in order (a copy in C: a batch renders 1,000)
        if len(out) != len(_HASH_PLAN):  # an attribute set on the instance besides its fields
            out = {name: out[name] for name, _ in _HASH_PLAN}
        out["args"] = list(self.args)
        result = self.result
        if isinstance(result, dict | list):
            out["result"] = copy.deepcopy(result)
        for name in _TIME_FIELDS:
            if out[name] is not None:
                out[name] = iso(out[name])
        # _value_ is what .value reads, through an enum descriptor that was ~3% of a batch
        out["status"] = self.status._value_
        out["trigger"] = self.trigger._value_
        out["priority"] = self.priority._value_
        out["duration_s"] = self.duration_s
        out["cancel_requested"] = bool(self.cancel_requested)
        # Values a caller passed in env may be credentials: names only.
        out["env"] = sorted(self.env)
        return out


_RUN_FIELDS = fields(Run)
_RUN_NAMES = frozenset(f.name for f in _RUN_FIELDS)
_HASH_PLAN = tuple((f.name, f.name in _JSON_FIELDS) for f in _RUN_FIELDS)


@dataclass
class Job:
    """A deployed package and its settings."""

    name: str
    type: JobType
    package: str  # sha256 of the stored zip
    entry: str  # the entry chosen at deploy time (hosts may differ, see entry.py)
    settings: dict[str, Any]
    filename: str = ""
    size: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    version: int = 1
    stopped: int = 0  # continuous jobs: 1 after POST /stop
    paused: int = 0  # schedule paused

    @property
    def concurrency_limit(self) -> int:
        """Runs of this job allowed at once across the cluster (0: no limit).

        ``is_singleton`` on a triggered job means 1; on a continuous job it means one host.
        """
        limit = int(self.settings.get("max_concurrency") or 0)
        if not limit and self.type is JobType.TRIGGERED and self.settings.get("is_singleton"):
            limit = 1
        return limit

    def to_hash(self) -> dict[str, str]:
        """The record as Redis hash fields (``max_concurrency`` denormalised for the fetch script)."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["type"] = self.type.value
        out["settings"] = json.dumps(self.settings)
        out["max_concurrency"] = self.concurrency_limit
        return {k: str(v) for k, v in out.items()}

    @classmethod
    def from_hash(cls, data: dict[bytes, bytes] | dict[str, str]) -> Job:
        """Read a record written by ``to_hash``."""
        raw = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in data.items()
        }
        return cls(
            name=raw["name"],
            type=JobType(raw.get("type", "triggered")),
            package=raw.get("package", ""),
            entry=raw.get("entry", ""),
            settings=json.loads(raw.get("settings") or "{}"),
            filename=raw.get("filename", ""),
            size=int(raw.get("size") or 0),
            created_at=float(raw.get("created_at") or 0),
            updated_at=float(raw.get("updated_at") or 0),
            version=int(raw.get("version") or 1),
            stopped=int(raw.get("stopped") or 0),
            paused=int(raw.get("paused") or 0),
        )

    def as_api(self) -> dict[str, Any]:
        """The record as the HTTP API shows it."""
        return {
            "name": self.name,
            "type": self.type.value,
            "entry": self.entry,
            "settings": self.settings,
            "package": {"sha256": self.package, "filename": self.filename, "size": self.size},
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "version": self.version,
            "stopped": bool(self.stopped),
            "paused": bool(self.paused),
        }
