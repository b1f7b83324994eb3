"""The asyncio counterpart of ``jobyard.runs.RunStore``, for the API.

Script keys and arguments come from the same ``jobyard.runs.prepare_*`` functions the synchronous
store uses, so the two cannot drift apart; this module only adds the awaiting, pipelining and the
reads the API needs.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError
from ulid import ULID

from jobyard.errors import InvalidInput, NotFound
from jobyard.keys import Keys
from jobyard.models import JOB_NAME_RE, JOB_NAME_RULE, Job, Run
from jobyard.runs import (
    Created,
    EnqueueSpec,
    Fence,
    decode_log_entry,
    parse_create,
    prepare_cancel,
    prepare_create,
    prepare_creates,
)
from jobyard.scripts import Scripts
from jobyard.settings import Settings

# Ids go into key names: nothing that could reach another key (no ':').
RUN_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Job records kept for enqueue (see AsyncRunStore.create_current); deployed jobs, so few.
JOB_CACHE_MAX = 10_000
# The longest a batch's pipeline may take on the bulk client (the normal one: 10 s per reply).
BULK_TIMEOUT_S = 30.0
# Runs per create_many call: one call does the work of as many create_run calls for far less
# overhead on both sides, and a hundred runs hold Redis up for a few milliseconds at most.
CHUNK_RUNS = 100


async def _bounded(call: Awaitable[Any], bulk: bool) -> Any:
    if not bulk:
        return await call
    try:
        async with asyncio.timeout(BULK_TIMEOUT_S):
            return await call
    except TimeoutError as exc:  # as redis-py's own socket timeout would be: Redis is away
        raise redis.TimeoutError(f"Redis did not answer a batch within {BULK_TIMEOUT_S:g} s") from exc


def check_job_name(name: str) -> str:
    """``name`` if it is a valid job name, else ``InvalidInput`` stating the rule."""
    if not JOB_NAME_RE.match(name):
        raise InvalidInput(f"invalid job name {name!r}", JOB_NAME_RULE)
    return name


def check_run_id(run_id: str) -> str:
    """``run_id`` if it could be a run id (no key separators), else ``NotFound``."""
    if not RUN_ID_RE.match(run_id):
        raise run_not_found(run_id)
    return run_id


def job_not_found(name: str) -> NotFound:
    """The error for a job that does not exist."""
    return NotFound(f"job {name!r} does not exist", f"deploy it first with PUT /api/jobs/{name}")


def run_not_found(run_id: str) -> NotFound:
    """The error for a run that does not exist."""
    return NotFound(
        f"run {run_id!r} does not exist", "it may have been trimmed from its job's history (history_size)"
    )


def decoded(members: Any) -> list[str]:
    """A Redis reply of byte strings as text (redis-py types replies loosely)."""
    return [m.decode() for m in members]


def _ulid_ms(run_id: str) -> int | None:
    try:
        return int(ULID.from_str(run_id).milliseconds)
    except (ValueError, TypeError):
        return None


class _CoalescedCreates:
    """``create_run`` calls made in one turn of the event loop, sent to Redis as one pipeline.

    Under load many requests reach their script call in the same turn: uvicorn starts a task
    for each request whose bytes came in with one poll, and a task runs from its first byte to
    the script call without waiting on anything (job record and token are cached). A round trip
    costs the API far more than a command does (socket write and read, redis-py's connection and
    retry bookkeeping), so one pipeline for all of them is much cheaper than one call each. A
    lone request waits for nothing: the pipeline goes out in the very next turn. Each caller
    gets its own reply or error reply; a Redis outage is every caller's error, as it would be.
    """

    def __init__(self, store: AsyncRunStore) -> None:
        self.store = store
        self._waiting: list[tuple[list[str], list[Any], asyncio.Future[Any]]] | None = None
        self._sending: set[asyncio.Task[None]] = set()

    async def call(self, keys: list[str], args: list[Any]) -> Any:
        """One ``create_run`` reply (raised when it is an error reply)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self._waiting is None:
            self._waiting = []
            loop.call_soon(self._send_waiting)
        self._waiting.append((keys, args, future))
        return await future

    def _send_waiting(self) -> None:
        calls, self._waiting = self._waiting or [], None
        task = asyncio.get_running_loop().create_task(self._send(calls))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, calls: list[tuple[list[str], list[Any], asyncio.Future[Any]]]) -> None:
        try:
            replies = await self.store.run_creates([(keys, args) for keys, args, _ in calls])
        except asyncio.CancelledError:
            for *_, future in calls:
                future.cancel()
            raise
        except Exception as exc:
            for *_, future in calls:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, _, future), reply in zip(calls, replies, strict=True):
            if future.done():  # its caller was cancelled: the run was made all the same
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)


class AsyncRunStore:
    """Runs and jobs on an asyncio client."""

    def __init__(
        self, client: aioredis.Redis, keys: Keys, settings: Settings, *, bulk: aioredis.Redis | None = None
    ) -> None:
        self.r = client
        # Pipelines of many replies go through a client without a timeout per reply (each cost a
        # timer armed and cancelled: ~15% of a thousand-run batch); BULK_TIMEOUT_S bounds them.
        self.bulk = client if bulk is None else bulk
        self.keys = keys
        self.settings = settings
        self.scripts = Scripts(client)
        self._jobs: dict[str, Job] = {}  # name -> the record last read, for create_current
        self._coalesced = _CoalescedCreates(self)

    # -- jobs --------------------------------------------------------------------------------
    async def get_job(self, name: str) -> Job:
        """The job record, or ``NotFound`` (``InvalidInput`` for a name that breaks the rule)."""
        data: dict[bytes, bytes] = await self.r.hgetall(self.keys.job(check_job_name(name)))  # type: ignore[assignment]
        if not data:
            raise job_not_found(name)
        return Job.from_hash(data)

    async def get_jobs(self, names: list[str]) -> dict[str, Job | None]:
        """Several job records in one round trip (None for a missing one)."""
        pipe = self.r.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self.keys.job(name))
        rows = await pipe.execute()
        return {name: (Job.from_hash(row) if row else None) for name, row in zip(names, rows, strict=True)}

    # -- runs --------------------------------------------------------------------------------
    async def create(
        self, spec: EnqueueSpec, job: Job, *, fence: Fence | None = None, job_guard: bool = False
    ) -> Created:
        """Write a run and enqueue it (one atomic script; ``job_guard``: see ``prepare_create``)."""
        keys, args, run = prepare_create(
            self.keys, self.settings, spec, job, fence=fence, job_guard=job_guard
        )
        return parse_create(await self._coalesced.call(keys, args), run)

    async def create_current(self, spec: EnqueueSpec, check: Callable[[Job], Job]) -> Created:
        """Create a run of ``spec.job`` from its record as it is now, ``check``-ed (it may raise).

        The same as ``create(spec, check(await get_job(name)))``, minus the read most of the time:
        the record last read is kept, and the script writes the run only if the stored record's
        ``updated_at`` still matches it (``stale`` otherwise: then it is read again, and the run
        made from the fresh record). Deploys and settings changes set ``updated_at``, so a run
        never gets an older version's priority, retries or timeout, nor a job since deleted
        (``nojob``) or made continuous.
        """
        cached = self._jobs.get(spec.job)
        if cached is not None:
            created = await self.create(spec, check(cached), job_guard=True)
            if created.outcome not in ("stale", "nojob"):
                return created
            self._jobs.pop(spec.job, None)
            if created.outcome == "nojob":
                return created
        job = check(await self.get_job(spec.job))
        if len(self._jobs) >= JOB_CACHE_MAX:
            self._jobs.clear()
        self._jobs[spec.job] = job
        return await self.create(spec, job)

    async def create_many(self, items: list[tuple[EnqueueSpec, Job]]) -> list[Created]:
        """Create many runs in one pipeline of ``create_many`` calls (``CHUNK_RUNS`` runs each)."""
        prepared = prepare_creates(self.keys, self.settings, items)
        calls: list[tuple[list[str], list[Any]]] = []
        for start in range(0, len(prepared), CHUNK_RUNS):
            keys: list[str] = []
            args: list[Any] = []
            for run_keys, run_args, _ in prepared[start : start + CHUNK_RUNS]:
                keys += run_keys
                args.append(len(run_args))
                args += run_args
            calls.append((keys, args))
        replies = await self.eval_all(self.scripts.create_many, calls, bulk=True)
        results: list[Any] = []
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply  # the first error, after every call was answered (as execute does)
            results += reply
        return [parse_create(res, run) for res, (_, _, run) in zip(results, prepared, strict=True)]

    async def run_creates(self, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """``create_run`` for each ``(keys, args)`` in one pipeline (see ``eval_all``)."""
        return await self.eval_all(self.scripts.create_run, calls)

    async def eval_all(
        self, script: Any, calls: list[tuple[list[str], list[Any]]], *, bulk: bool = False
    ) -> list[Any]:
        """``script`` for each ``(keys, args)`` in one pipeline: the replies in order, an error
        reply as its exception (a Redis outage raises).

        EVALSHA straight on the pipeline: redis-py's script objects cost a few microseconds per
        call and a SCRIPT EXISTS round trip per pipeline. Calls Redis answered NOSCRIPT (a
        restarted or flushed Redis) did not run; the script is loaded and those are sent again.
        ``bulk``: on the bulk client, the whole exchange bounded by ``BULK_TIMEOUT_S``.
        """
        client = self.bulk if bulk else self.r
        results: list[Any] = [None] * len(calls)
        pending = list(range(len(calls)))
        for attempt in range(2):
            pipe = client.pipeline(transaction=False)
            for i in pending:
                keys, args = calls[i]
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            replies = await _bounded(pipe.execute(raise_on_error=False), bulk)
            for i, reply in zip(pending, replies, strict=True):
                results[i] = reply
            pending = [i for i in pending if isinstance(results[i], NoScriptError)]
            if not pending or attempt:
                break
            script.sha = await self.r.script_load(script.script)
        return results

    async def get(self, run_id: str) -> Run:
        """The run record, or ``NotFound``."""
        data: dict[bytes, bytes] = await self.r.hgetall(self.keys.run(check_run_id(run_id)))  # type: ignore[assignment]
        if not data:
            raise run_not_found(run_id)
        return Run.from_hash(data)

    async def get_many(self, run_ids: list[str]) -> list[Run | None]:
        """Several run records in one round trip (None for a missing one)."""
        if not run_ids:
            return []
        pipe = self.r.pipeline(transaction=False)
        for rid in run_ids:
            pipe.hgetall(self.keys.run(rid))
        return [Run.from_hash(d) if d else None for d in await pipe.execute()]

    async def latest(self, job: str) -> Run | None:
        """The job's newest run, if any."""
        ids = decoded(await self.r.zrevrange(self.keys.job_runs(job), 0, 0))
        if not ids:
            return None
        return (await self.get_many(ids))[0]

    async def page_ids(self, zset: str, limit: int, before: str | None) -> list[str]:
        """Members of a zset scored by time, newest first, strictly after the member ``before``.

        Paging by rank keeps runs that share a millisecond (a batch) apart; when ``before`` has
        been trimmed meanwhile, its ULID time stands in for its score.
        """
        if not before:
            return decoded(await self.r.zrevrange(zset, 0, limit - 1))
        rank: int | None = await self.r.zrevrank(zset, before)  # type: ignore[assignment]
        if rank is not None:
            return decoded(await self.r.zrevrange(zset, rank + 1, rank + limit))
        ms = _ulid_ms(before)
        if ms is None:
            return []
        ids = decoded(await self.r.zrevrangebyscore(zset, ms, "-inf", start=0, num=limit + 1000))
        return [i for i in ids if i < before][:limit]

    async def list_for_job(self, job: str, limit: int = 50, before: str | None = None) -> list[Run]:
        """A job's runs, newest first; ``before`` is a run id (exclusive) to page from."""
        ids = await self.page_ids(self.keys.job_runs(job), limit, before)
        return [run for run in await self.get_many(ids) if run is not None]

    async def cancel(self, run: Run) -> tuple[str, str]:
        """Cancel a run: ``cancelled`` (was waiting), ``signalled`` (running) or ``terminal``."""
        keys, args = prepare_cancel(self.keys, run.id, run.job)
        res = await self.scripts.cancel_run(keys=keys, args=args)
        return res[0].decode(), (res[1].decode() if len(res) > 1 else "")

    # -- logs --------------------------------------------------------------------------------
    async def read_log(self, run_id: str, after: str = "-", count: int = 10_000) -> list[dict[str, Any]]:
        """Log entries after entry id ``after`` (exclusive unless ``-``)."""
        start = after if after == "-" else f"({after}"
        entries: list[tuple[bytes, dict[bytes, bytes]]] = await self.r.xrange(  # type: ignore[assignment]
            self.keys.run_log(run_id), start, "+", count
        )
        return [decode_log_entry(i, d) for i, d in entries]
