"""One delivered message, start to end: claim the run, run the attempt, record it, settle the message.

Delivery is at least once (dramatiq); execution is exactly once per attempt because nothing runs
before ``claim_run.lua`` says so. The outcomes of a claim:

- terminal / missing: a redelivered message for a finished (or trimmed) run: acked and dropped;
- busy: the run's lease is alive, so it runs elsewhere: the message is put back with a delay of
  one lease period and looked at again then (if that worker dies, the copy runs it);
- dead: the run's workers died ``max_worker_deaths`` times: dead-lettered with that reason;
- claimed: run it as the next attempt.

Failed attempts are retried through dramatiq's ``Retries`` middleware: the executor raises
``dramatiq.Retry(delay=...)`` with a delay from the job's ``retry_backoff`` (exponential, full
jitter), or raises ``RunFailed`` (listed in the actor's ``throws``) when the run is out of
retries, which makes dramatiq fail the message into its dead-letter queue. The count of retries
is kept on the run record, not in the message, because a worker death is invisible to dramatiq.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dramatiq
import redis
from dramatiq.broker import MessageProxy

from jobyard.errors import NotFound
from jobyard.models import TERMINAL_LUA, Job, Run, RunStatus
from jobyard.queue import Fetched
from jobyard.redis_conn import call_many_on
from jobyard.runs import LOG_SYS, parse_finish, prepare_finish
from workers.attempt import AttemptResult, run_attempt

if TYPE_CHECKING:
    from workers.worker import Worker as WorkerContext

log = logging.getLogger(__name__)


class RunFailed(Exception):
    """The run failed for good: dramatiq fails the message (no retry)."""


@dataclass
class Claim:
    """What ``claim_run.lua`` answered."""

    outcome: str
    run: Run | None = None
    job: Job | None = None
    detail: str = ""
    secrets: dict[bytes, bytes] | None = None  # the job's encrypted secrets, read with the claim


def backoff_s(failures: int, min_s: float, max_s: float) -> float:
    """Delay before retry ``failures``: exponential from ``min_s``, full jitter, capped at ``max_s``."""
    cap = min(max_s, min_s * (2 ** max(0, failures - 1)))
    return random.uniform(min_s, max(min_s, cap))


def _pairs(flat: list[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def parse_claim(res: list[Any]) -> Claim:
    """Read ``_claim.lua``'s answer (from claim_run.lua or fetch.lua)."""
    outcome = res[0].decode()
    if outcome == "claimed":
        return Claim(
            outcome, Run.from_hash(_pairs(res[1])), Job.from_hash(_pairs(res[2])), secrets=_pairs(res[3])
        )
    return Claim(outcome, detail=res[1].decode() if len(res) > 1 else "")


class Executor:
    """Processes fetched messages for one worker process (thread-safe; one call per slot)."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        # per slot: its next message, fetched with its last outcome; its own Redis connection
        self._next = threading.local()

    # -- the message -------------------------------------------------------------------------
    def process(self, fetched: Fetched) -> None:
        """Run the message through dramatiq's middleware around ``execute`` and settle it."""
        ctx = self.ctx
        proxy = MessageProxy(fetched.message)
        disposition = "ack"
        ctx.broker.emit_before("process_message", proxy)
        try:
            disposition = self.execute(str(proxy.args[0]), str(proxy.args[1]), proxy, fetched)
            ctx.broker.emit_after("process_message", proxy, result=None)
        except BaseException as exc:
            proxy.stuff_exception(exc)
            if not isinstance(exc, dramatiq.Retry | RunFailed):
                log.exception("unexpected failure processing message %s", fetched.redis_id)
            # Called directly, not through broker.emit_after, which swallows errors: a re-enqueue
            # lost to a Redis outage would leave the run "retrying" forever.
            failure: BaseException = exc

            def retry_or_fail() -> None:
                ctx.retries.after_process_message(ctx.broker, proxy, exception=failure)

            ctx.retrying(retry_or_fail, "re-enqueue")
        finally:
            if proxy.failed:
                ctx.retrying(lambda: ctx.broker.nack_message(fetched), "nack")
            elif disposition == "requeue":
                ctx.retrying(lambda: ctx.broker.requeue_message(fetched), "requeue")
            elif disposition != "acked":  # "acked": finish_run.lua acked it with the outcome
                ctx.retrying(lambda: ctx.broker.ack_message(fetched), "ack")

    def execute(self, run_id: str, job_name: str, proxy: MessageProxy, fetched: Fetched | None = None) -> str:
        """Claim and run; returns ``ack``, ``acked`` (done with the outcome) or ``requeue``, raises
        Retry or RunFailed (see module doc)."""
        ctx = self.ctx
        if fetched is not None and fetched.claim is not None:
            claim = parse_claim(fetched.claim)  # fetch.lua claimed it with the message
        else:
            claim = ctx.retrying(lambda: self.claim(run_id, job_name), "claim")
        if claim.outcome == "busy" and claim.detail == ctx.worker_id and not ctx.is_running(run_id):
            # Our own claim went through but its reply was lost (connection reset): it is ours.
            claim = Claim("claimed", ctx.store.get(run_id), None)
            if claim.run is not None:
                claim.job = ctx.store.get_job(claim.run.job)
        if claim.outcome in ("terminal", "missing") or (claim.outcome == "busy" and ctx.is_running(run_id)):
            ctx.hooks.emit("after_drop", claim.outcome, run_id)
            return "ack"
        if claim.outcome == "busy":
            ctx.broker.enqueue(proxy._message, delay=int(ctx.settings.run_lease_ttl_seconds * 1000))
            ctx.hooks.emit("after_drop", "busy", run_id)
            return "ack"
        if claim.outcome == "cancelled":
            self._finish_without_running(run_id, RunStatus.CANCELLED, "cancelled before it started", fetched)
            return "acked" if fetched else "ack"
        if claim.outcome == "nojob":
            self._finish_without_running(
                run_id, RunStatus.FAILED, "the job was deleted before the run started", fetched
            )
            return "acked" if fetched else "ack"
        if claim.outcome == "dead":
            run = ctx.store.get(run_id)
            reason = (
                f"the worker running it died {claim.detail} times; dead-lettered so it cannot loop forever"
            )
            self.record(run, self._job_or_none(job_name), RunStatus.FAILED, "deadletter", error=reason)
            raise RunFailed(reason)
        assert claim.run is not None and claim.job is not None
        return self._attempt(claim.run, claim.job, claim.secrets, fetched)

    def claim(self, run_id: str, job_name: str) -> Claim:
        """Call ``claim_run.lua`` for ``run_id``."""
        ctx, k = self.ctx, self.ctx.keys
        res = ctx.store.scripts.claim_run(
            keys=[
                k.run(run_id),
                k.run_lease(run_id),
                k.job(job_name),
                k.job_slots(job_name),
                k.job_secrets(job_name),
            ],
            args=[
                ctx.worker_id,
                ctx.settings.instance_id,
                ctx.pid,
                time.time(),
                int(ctx.settings.run_lease_ttl_seconds * 1000),
                ctx.settings.max_worker_deaths,
                TERMINAL_LUA,
            ],
        )
        return parse_claim(res)

    # -- an attempt --------------------------------------------------------------------------
    def _attempt(
        self, run: Run, job: Job, secrets: dict[bytes, bytes] | None = None, fetched: Fetched | None = None
    ) -> str:
        ctx = self.ctx
        ctx.hooks.emit("after_claim", run, job)
        result: AttemptResult = run_attempt(ctx, run, job, secrets_raw=secrets, scratch=ctx.scratch)
        if result.lease_lost:
            log.warning("run %s: lease lost mid-attempt; another attempt owns it now", run.id)
            return "ack"
        if result.interrupted:
            self.record(
                run, job, RunStatus.QUEUED, "requeue", lines=result.lines, error=result.error, claimed=True
            )
            ctx.hooks.emit("after_requeue", run, job)
            return "requeue"
        if result.status in (RunStatus.SUCCEEDED, RunStatus.CANCELLED):
            self.record(
                run,
                job,
                result.status,
                "final",
                lines=result.lines,
                ack=fetched,
                claimed=True,
                **result.fields(),
            )
            return "acked" if fetched else "ack"
        # failed or timed out: retry while the budget lasts
        failures = run.failures + 1
        js = result.job_settings
        if failures <= run.max_retries:
            delay = backoff_s(failures, js.retry_min_s, js.retry_max_s)
            lines = [
                *result.lines,
                (
                    time.time(),
                    LOG_SYS,
                    f"attempt {run.attempt} {result.status.value}; "
                    f"retry {failures} of {run.max_retries} in {delay:.1f} s",
                ),
            ]
            self.record(
                run,
                job,
                RunStatus.RETRYING,
                "retry",
                lines=lines,
                failures=failures,
                next_attempt_at=time.time() + delay,
                claimed=True,
                **result.fields(),
            )
            ctx.hooks.emit("after_retry", run, job, delay)
            raise dramatiq.Retry(delay=int(delay * 1000))
        lines = [
            *result.lines,
            (
                time.time(),
                LOG_SYS,
                f"attempt {run.attempt} {result.status.value}; no retries left: dead-lettered",
            ),
        ]
        self.record(
            run,
            job,
            result.status,
            "deadletter",
            lines=lines,
            failures=failures,
            claimed=True,
            **result.fields(),
        )
        raise RunFailed(result.error or result.status.value)

    def _finish_and_fetch(self, keys: list[str], args: list[Any]) -> tuple[str, str]:
        """finish_run and, in the same round trip, the fetch of this slot's next message (sent by
        ``call_many_on`` on the slot's own connection: no pipeline, no pool per run).

        The slot is still ours, so taking its next message now prefetches nothing: it is what the
        dispatcher would fetch for it a moment later, a round trip and two thread switches
        sooner. The message (if any) is kept for the slot (``take_next``). EVALSHA directly: a Script
        in a pipeline costs a SCRIPT EXISTS per call; a Redis that lost its script cache answers
        NOSCRIPT: finish_run is then sent again on its own, the fetch left to the dispatcher.
        """
        ctx = self.ctx
        finish, fetch = ctx.store.scripts.finish_run, ctx.broker.jy_scripts.fetch
        fetch_keys, fetch_args = ctx.broker.fetch_call(claim=ctx.claim_as)
        conn = getattr(self._next, "conn", None)
        if conn is None:  # the slot's own connection: no pool get and release per run
            conn = self._next.conn = ctx.client.connection_pool.make_connection()
        finished, fetched = call_many_on(
            conn,
            ("EVALSHA", finish.sha, len(keys), *keys, *args),
            ("EVALSHA", fetch.sha, len(fetch_keys), *fetch_keys, *fetch_args),
        )
        if isinstance(fetched, redis.exceptions.NoScriptError):
            ctx.client.script_load(fetch.script)  # no next message this time: the dispatcher fetches
        elif isinstance(fetched, Exception):
            raise fetched
        else:
            got = ctx.broker.parse_fetch(fetched)
            if isinstance(got, Fetched):
                self._next.fetched = got
        if isinstance(finished, redis.exceptions.NoScriptError):
            return parse_finish(finish(keys=keys, args=args))  # a Script loads itself
        if isinstance(finished, Exception):
            raise finished
        return parse_finish(finished)

    def take_next(self) -> Fetched | None:
        """The message fetched with the last outcome this thread recorded, if any (once)."""
        got: Fetched | None = getattr(self._next, "fetched", None)
        self._next.fetched = None
        return got

    # -- recording ---------------------------------------------------------------------------
    def _finish_without_running(
        self, run_id: str, status: RunStatus, error: str, fetched: Fetched | None = None
    ) -> None:
        run = self.ctx.store.get(run_id)
        self.record(run, self._job_or_none(run.job), status, "final", error=error, ack=fetched)

    def _job_or_none(self, name: str) -> Job | None:
        """The job record (for its history size and the hooks), None when it was deleted."""
        try:
            return self.ctx.retrying(lambda: self.ctx.store.get_job(name), "read the job")
        except NotFound:
            return None

    def record(
        self,
        run: Run,
        job: Job | None,
        status: RunStatus,
        mode: str,
        *,
        lines: list[tuple[float, str, str]] | None = None,
        ack: Fetched | None = None,
        claimed: bool = False,
        **fields: Any,
    ) -> None:
        """Write the last log lines and the outcome (and ack ``ack``) in one round trip, then tell
        the hooks. ``claimed``: this process claimed the attempt (so it is fenced by who claimed
        it, not only by the attempt number)."""
        ctx = self.ctx
        history = None
        if job is not None:
            history = int(job.settings.get("history_size") or ctx.settings.default_history_size)

        # One script call writes the last log lines, the outcome and (ack) the message's ack;
        # repeated after a lost reply it finds the run finished and writes nothing twice.
        keys, args = prepare_finish(
            ctx.keys,
            ctx.settings,
            run.id,
            run.job,
            status,
            mode=mode,
            attempt=run.attempt if run.attempt else None,
            history_size=history,
            fields=fields,
            lines=lines,
            ack=(ctx.keys.queue_namespace, ctx.worker_id, ack.level, ack.redis_id) if ack else None,
            claimed_by=ctx.worker_id if claimed else None,
        )
        if ack is not None and mode == "final" and not ctx.stopping:
            outcome, detail = ctx.retrying(
                lambda: self._finish_and_fetch(keys, args), "record the run's outcome"
            )
        else:
            outcome, detail = ctx.retrying(
                lambda: parse_finish(ctx.store.scripts.finish_run(keys=keys, args=args)),
                "record the run's outcome",
            )
        if outcome != "ok":
            log.info(
                "run %s: outcome not recorded (%s %s)", run.id, outcome, detail, extra={"run_id": run.id}
            )
            return
        if status.terminal and job is not None:
            # The record as just written, built here: the run may be trimmed from history already.
            final = dataclasses.replace(run, status=status, ended_at=time.time())
            for name, value in fields.items():
                if value is not None and hasattr(final, name):
                    setattr(final, name, value)
            if mode == "deadletter":
                final.dead_lettered_at = final.ended_at
            ctx.hooks.emit("after_finish", final, job)
            if mode == "deadletter":
                ctx.hooks.emit("after_dead_letter", final, job)
