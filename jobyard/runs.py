"""Creating, claiming, finishing and reading runs: the Redis side of a run's life.

Each operation is one Lua script (``jobyard/lua``). The ``prepare_*`` functions build a script's
keys and arguments without touching Redis, so the synchronous store here (workers, scheduler,
CLI tools) and the asyncio store in the API call the very same scripts the same way.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from jobyard.errors import NotFound
from jobyard.keys import Keys
from jobyard.models import TERMINAL_LUA, Job, Priority, Run, RunStatus, Trigger, new_run_ids
from jobyard.queue import build_message, new_message_ids
from jobyard.scripts import Scripts
from jobyard.settings import Settings

LOG_INFO = "INFO"
LOG_ERR = "ERR"
LOG_SYS = "SYS"  # lines jobyard itself writes into a run's log (attempt started, cut marker, ...)


@dataclass
class EnqueueSpec:
    """What a caller asks for when it enqueues a run (defaults come from the job's settings)."""

    job: str
    args: list[str] = field(default_factory=list)
    priority: Priority | None = None
    idempotency_key: str | None = None
    run_at: float | None = None  # epoch seconds; None = now
    timeout_s: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    callback_url: str | None = None
    max_retries: int | None = None
    trigger: Trigger = Trigger.API
    scheduled_for: float | None = None
    replay_of: str | None = None


@dataclass
class Fence:
    """Exactly-once guard for a scheduled fire: NX key per (job, fire time), checked leader term."""

    fire_ts: float
    term: int | None = None
    overlap: str = "allow"
    fire_ttl_s: float = 7 * 86400.0


@dataclass
class Created:
    """What ``create_run`` did: ``outcome`` is created | exists | nojob | fenced | duplicate | overlap."""

    outcome: str
    run_id: str | None
    run: Run | None = None

    @property
    def created(self) -> bool:
        return self.outcome == "created"


def prepare_create(
    keys: Keys,
    settings: Settings,
    spec: EnqueueSpec,
    job: Job,
    *,
    now: float | None = None,
    fence: Fence | None = None,
    job_guard: bool = False,
) -> tuple[list[str], list[Any], Run]:
    """Keys and arguments for ``create_run.lua``, and the run record it would write.

    ``job_guard``: ``job`` may be an old copy (a cache); the script then refuses (``stale``)
    when the stored record's ``updated_at`` is no longer ``job.updated_at``.
    """
    return prepare_creates(keys, settings, [(spec, job)], now=now, fence=fence, job_guard=job_guard)[0]


def prepare_creates(
    keys: Keys,
    settings: Settings,
    items: list[tuple[EnqueueSpec, Job]],
    *,
    now: float | None = None,
    fence: Fence | None = None,
    job_guard: bool = False,
) -> list[tuple[list[str], list[Any], Run]]:
    """``prepare_create`` for many runs at once (ids and random bits drawn once for all)."""
    now = time.time() if now is None else now
    now_ms = int(now * 1000)
    run_ids = new_run_ids(len(items))
    message_ids = new_message_ids(2 * len(items))
    idem_ttl_ms = int(settings.idempotency_ttl_seconds * 1000)
    fence_args = (
        str(fence.term) if fence and fence.term is not None else "",
        int(fence.fire_ttl_s * 1000) if fence else 0,
        fence.overlap if fence else "",
    )
    shared = [keys.delayed, keys.wake]
    per_job: dict[tuple[str, str], tuple[str, str, str, str, str]] = {}
    out: list[tuple[list[str], list[Any], Run]] = []
    for i, (spec, job) in enumerate(items):
        js = job.settings
        priority = Priority(spec.priority or js.get("priority", "normal"))
        max_retries = spec.max_retries if spec.max_retries is not None else int(js.get("max_retries", 0))
        timeout_s = spec.timeout_s if spec.timeout_s is not None else js.get("timeout")
        run = Run(
            id=run_ids[i],
            job=spec.job,
            status=RunStatus.QUEUED,
            trigger=spec.trigger,
            args=list(spec.args),
            priority=priority,
            max_retries=max_retries,
            enqueued_at=now,
            scheduled_for=spec.scheduled_for if spec.scheduled_for is not None else spec.run_at,
            idempotency_key=spec.idempotency_key,
            timeout_s=float(timeout_s) if timeout_s is not None else None,
            env=dict(spec.env),
            callback_url=spec.callback_url,
            replay_of=spec.replay_of,
        )
        level = priority._value_
        redis_id, message = build_message(
            run.id, spec.job, level, ids=(message_ids[2 * i], message_ids[2 * i + 1]), timestamp_ms=now_ms
        )
        eta_ms = int(spec.run_at * 1000) if spec.run_at and spec.run_at > now else 0
        run_keys = per_job.get((spec.job, level))
        if run_keys is None:  # the same few for every run of a job at a level
            run_keys = per_job[spec.job, level] = (
                keys.job(spec.job),
                keys.job_runs(spec.job),
                keys.job_active(spec.job),
                keys.queue(level),
                keys.queue_msgs(level),
            )
        script_keys = [
            run_keys[0],
            keys.run(run.id),
            *run_keys[1:],
            *shared,
            keys.idempotency(spec.job, spec.idempotency_key) if spec.idempotency_key else "",
            keys.fire(spec.job, fence.fire_ts) if fence else "",
            keys.leader_term if fence and fence.term is not None else "",
        ]
        args: list[Any] = [
            run.id,
            now_ms,
            redis_id,
            message,
            level,
            eta_ms,
            idem_ttl_ms,
            *fence_args,
            repr(job.updated_at) if job_guard else "",
        ]
        for pair in run.to_hash().items():
            args += pair
        out.append((script_keys, args, run))
    return out


def parse_create(result: list[bytes], run: Run) -> Created:
    """Read ``create_run.lua``'s answer."""
    outcome = result[0].decode()
    ref = result[1].decode() if len(result) > 1 else None
    if outcome == "created":
        return Created(outcome, run.id, run)
    return Created(outcome, ref)


def prepare_cancel(
    keys: Keys, run_id: str, job: str, now: float | None = None
) -> tuple[list[str], list[Any]]:
    """Keys and arguments for ``cancel_run.lua``."""
    now = time.time() if now is None else now
    return [keys.run(run_id), keys.job_active(job), keys.cancel_channel], [now, TERMINAL_LUA]


def prepare_finish(
    keys: Keys,
    settings: Settings,
    run_id: str,
    job: str,
    status: RunStatus,
    *,
    mode: str = "final",
    attempt: int | None = None,
    history_size: int | None = None,
    fields: dict[str, Any] | None = None,
    lines: list[tuple[float, str, str]] | None = None,
    ack: tuple[str, str, str, str] | None = None,
    claimed_by: str | None = None,
) -> tuple[list[str], list[Any]]:
    """Keys and arguments for ``finish_run.lua`` (see ``RunStore.finish``).

    ``lines``: log lines ``(t, stream, text)`` to append in the same call; ``ack``: the delivered
    message to ack in it, as ``(queue namespace, broker id, level, message id)``; ``claimed_by``:
    the worker process that claimed ``attempt`` (the outcome is stale if another one holds it).
    """
    flat: list[Any] = []
    for name, value in (fields or {}).items():
        if value is None:
            continue
        flat += [name, json.dumps(value) if name == "result" else value]
    script_keys = [
        keys.run(run_id),
        keys.run_lease(run_id),
        keys.job_runs(job),
        keys.job_active(job),
        keys.dead_letters,
        keys.job_slots(job),
        keys.job_parked(job),
        keys.parked,
        keys.job(job),
        keys.wake,
        keys.job_done(job),
        keys.run_log(run_id),
    ]
    log_args: list[Any] = []
    for t, stream, text in lines or ():
        log_args += [repr(t), stream, text]
    expected = "" if attempt is None else str(attempt)
    if expected and claimed_by:
        expected += f"|{claimed_by}"
    args = [
        expected,
        time.time(),
        status.value,
        mode,
        history_size or settings.default_history_size,
        keys.prefix,
        TERMINAL_LUA,
        *(ack or ("", "", "", "")),
        len(log_args) // 3,
        *log_args,
        *flat,
    ]
    return script_keys, args


def parse_finish(result: list[bytes]) -> tuple[str, str]:
    """Read ``finish_run.lua``'s answer as (outcome, status or attempt)."""
    return result[0].decode(), (result[1].decode() if len(result) > 1 else "")


def decode_log_entry(entry_id: bytes | str, data: dict[bytes, bytes]) -> dict[str, Any]:
    """One stream entry of a run log as ``{"id", "t", "stream", "line"}``."""
    return {
        "id": entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
        "t": float(data.get(b"t", b"0")),
        "stream": data.get(b"s", b"INFO").decode(),
        "line": data.get(b"m", b"").decode("utf-8", "replace"),
    }


def format_log_line(entry: dict[str, Any]) -> str:
    """A log entry as a line of the downloadable text log: ``<ISO time> <STREAM> <line>``."""
    from jobyard.models import iso

    return f"{iso(entry['t'])} {entry['stream']:<4} {entry['line']}"


class RunStore:
    """Runs on a synchronous client (workers, scheduler, tools)."""

    def __init__(self, client: redis.Redis, keys: Keys, settings: Settings) -> None:
        # redis-py's reply types are unions of every decoding mode; replies here are bytes.
        self.r: Any = client
        self.keys = keys
        self.settings = settings
        self.scripts = Scripts(client)

    # -- jobs --------------------------------------------------------------------------------
    def get_job(self, name: str) -> Job:
        """The job record, or ``NotFound``."""
        data = self.r.hgetall(self.keys.job(name))
        if not data:
            raise NotFound(f"job {name!r} does not exist", "deploy it first with PUT /api/jobs/{name}")
        return Job.from_hash(data)

    # -- runs --------------------------------------------------------------------------------
    def create(self, spec: EnqueueSpec, job: Job | None = None, *, fence: Fence | None = None) -> Created:
        """Write a run and enqueue it (one atomic script)."""
        job = job or self.get_job(spec.job)
        keys, args, run = prepare_create(self.keys, self.settings, spec, job, fence=fence)
        return parse_create(self.scripts.create_run(keys=keys, args=args), run)

    def get(self, run_id: str) -> Run:
        """The run record, or ``NotFound``."""
        data = self.r.hgetall(self.keys.run(run_id))
        if not data:
            raise NotFound(
                f"run {run_id!r} does not exist", "it may have been trimmed from the job's history"
            )
        return Run.from_hash(data)

    def list_for_job(self, job: str, limit: int = 50, before: str | None = None) -> list[Run]:
        """A job's runs, newest first; ``before`` is a run id (exclusive) to page from.

        Pages by rank, not by score, so runs enqueued in the same millisecond (a batch) are kept
        apart (the API's asyncio store pages the same way).
        """
        key = self.keys.job_runs(job)
        if before:
            rank = self.r.zrevrank(key, before)
            ids = [] if rank is None else self.r.zrevrange(key, rank + 1, rank + limit)
        else:
            ids = self.r.zrevrange(key, 0, limit - 1)
        pipe = self.r.pipeline(transaction=False)
        for rid in ids:
            pipe.hgetall(self.keys.run(rid.decode()))
        return [Run.from_hash(d) for d in pipe.execute() if d]

    def cancel(self, run: Run) -> str:
        """Cancel a run: ``cancelled`` (was waiting), ``signalled`` (running) or ``terminal``."""
        keys, args = prepare_cancel(self.keys, run.id, run.job)
        return str(self.scripts.cancel_run(keys=keys, args=args)[0].decode())

    def finish(
        self,
        run_id: str,
        job: str,
        status: RunStatus,
        *,
        mode: str = "final",
        attempt: int | None = None,
        history_size: int | None = None,
        **fields: Any,
    ) -> tuple[str, str]:
        """Record an attempt's outcome (``mode``: final | retry | requeue | deadletter).

        Returns ``("ok", status)``, or ``("stale", attempt)`` when another attempt replaced this
        one, or ``("terminal", status)`` when the run had already ended.
        """
        keys, args = prepare_finish(
            self.keys,
            self.settings,
            run_id,
            job,
            status,
            mode=mode,
            attempt=attempt,
            history_size=history_size,
            fields=fields,
        )
        return parse_finish(self.scripts.finish_run(keys=keys, args=args))

    def start_direct(self, run: Run, lease_holder: str, lease_ttl_s: float) -> None:
        """Write a run that starts at once on this worker, without a queue (continuous instances)."""
        k = self.keys
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(k.run(run.id), mapping=run.to_hash())
        pipe.zadd(k.job_runs(run.job), {run.id: int((run.enqueued_at or time.time()) * 1000)})
        pipe.sadd(k.job_active(run.job), run.id)
        pipe.set(k.run_lease(run.id), lease_holder, px=int(lease_ttl_s * 1000))
        pipe.execute()

    # -- logs --------------------------------------------------------------------------------
    def append_log(self, pipe: Any, run_id: str, lines: list[tuple[float, str, str]]) -> None:
        """Queue XADDs of ``(t, stream, text)`` lines on ``pipe`` (caller executes)."""
        key = self.keys.run_log(run_id)
        for t, stream, text in lines:
            pipe.xadd(key, {"t": repr(t), "s": stream, "m": text})

    def read_log(self, run_id: str, after: str = "-", count: int = 10_000) -> list[dict[str, Any]]:
        """Log entries after entry id ``after`` (exclusive unless ``-``)."""
        start = after if after == "-" else f"({after}"
        return [
            decode_log_entry(i, d) for i, d in self.r.xrange(self.keys.run_log(run_id), start, "+", count)
        ]
