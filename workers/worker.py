"""The worker process: slots, the dispatcher that fills them, and the heartbeat that keeps it honest.

Threads:

- **dispatcher**: whenever a slot is free, fetch the next message in strict priority order
  (``JobyardBroker.fetch``); when none waits, block on the wake list until an enqueue, the next
  delayed eta or ``idle_wait_seconds``. Never fetches for a slot it does not have, so a worker
  holds no runs it cannot start.
- **slots** (a pool of ``concurrency`` threads): each runs one message through ``Executor``.
- **heartbeat** (every ``heartbeat_interval_seconds``): marks this process alive for dramatiq's
  maintenance and ``GET /api/cluster``, forces that maintenance (re-queues dead workers'
  messages), renews the leases of the runs it executes and notices cancel flags and lost leases.
- **cancel listener**: pub/sub on the cancel channel, so a cancel reaches the script at once.

Stop: the first SIGTERM/SIGINT stops fetching and asks every script to stop (shutdown file,
SIGTERM, SIGKILL after its ``stopping_wait_time``); interrupted runs go back on the queue. A
second signal skips the waiting (scripts are killed now) but still puts every run back.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import redis
from dramatiq import Actor
from dramatiq.middleware import Retries

from jobyard import metrics
from jobyard.hooks import HookChain
from jobyard.keys import PRIORITY_LEVELS, Keys
from jobyard.models import TERMINAL_LUA, Job
from jobyard.packages import remove_tree
from jobyard.queue import DRAMATIQ_MAX_RETRIES, RUN_ACTOR, ClaimAs, Fetched, JobyardBroker
from jobyard.redis_conn import CONNECTION_ERRORS, connect, wait_for_redis
from jobyard.runs import RunStore
from jobyard.settings import Settings
from workers import packaging
from workers.callbacks import CallbackHooks, CallbackSender
from workers.continuous import Supervisor
from workers.executor import Executor, RunFailed
from workers.orphans import PidFiles
from workers.runner import StopControl, StopReason
from workers.scratch import Scratch

log = logging.getLogger(__name__)
T = TypeVar("T")
ORPHAN_CHECK_EVERY = 5  # heartbeats
ACK_CHECK_EVERY = 3  # heartbeats
DEAD_LETTER_SWEEP_EVERY = 30  # heartbeats


class Worker:
    """One worker process (see the module docstring); also the context its executor uses."""

    def __init__(self, settings: Settings, concurrency: int | None = None) -> None:
        self.settings = settings
        self.concurrency = max(1, concurrency or settings.concurrency)
        self.keys = Keys(settings.redis_prefix)
        self.client = connect(settings)
        # BLPOP blocks up to idle_wait_seconds; give that connection room beyond it.
        self.block_client = connect(settings, socket_timeout=settings.idle_wait_seconds + 10)
        wait_for_redis(self.client, settings)
        self.retries = Retries(max_retries=DRAMATIQ_MAX_RETRIES, min_backoff=1000, max_backoff=3_600_000)
        self.broker = JobyardBroker(
            self.client,
            self.keys,
            heartbeat_timeout_s=settings.heartbeat_timeout_seconds,
            dead_letter_ttl_s=settings.dead_letter_ttl_seconds,
            slot_lease_s=settings.run_lease_ttl_seconds,
            aging_s=settings.priority_aging_seconds,
            middleware=[self.retries],
        )
        Actor(
            _never_called,
            broker=self.broker,
            actor_name=RUN_ACTOR,
            queue_name="normal",
            priority=0,
            options={"throws": (RunFailed,), "max_retries": DRAMATIQ_MAX_RETRIES},
        )
        self.worker_id = self.broker.broker_id
        self.claim_as = ClaimAs(settings.instance_id, os.getpid(), settings.max_worker_deaths, TERMINAL_LUA)
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self.store = RunStore(self.client, self.keys, settings)
        self.hooks = HookChain()
        self.callbacks = CallbackSender(self)
        self.hooks.add(CallbackHooks(self))
        self.packages = packaging.HostPackages(settings, self.client, self.keys)
        self.executor = Executor(self)
        self.pid_dir = settings.data_dir / "pids"
        self.pid_files = PidFiles(self.pid_dir, self.pid)
        self._controls: dict[str, StopControl] = {}
        self._limited: dict[str, str] = {}  # run id -> job name, for runs holding a concurrency slot
        self._lock = threading.Lock()
        self._free = threading.Semaphore(self.concurrency)
        self._busy = 0
        self._held: set[str] = set()  # message ids fetched and not yet settled
        self._ack_suspects: set[tuple[str, str]] = set()
        self.stopping = False
        self.hard_stop = False
        self._stopped = threading.Event()
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="slot")
        self.started_at = time.time()
        self._connected_since = time.monotonic()
        self.consuming = False
        self.supervisor = Supervisor(self)
        # Removing a working copy cost ~15 % of a no-op run's time in its slot.
        self._janitor: queue.SimpleQueue[Path | None] = queue.SimpleQueue()
        self._janitor_thread = threading.Thread(target=self._janitor_loop, name="janitor", daemon=True)
        # Each slot keeps its attempt directory and working copy while runs leave them untouched.
        self.scratch = Scratch(self.settings.data_dir, self.remove_tree)

    # -- context used by the executor and attempts --------------------------------------------
    def retrying(self, fn: Callable[[], T], what: str) -> T:
        """Call ``fn`` until Redis answers (bounded backoff, a log line per retry)."""
        delay = 0.1
        while True:
            try:
                return fn()
            except CONNECTION_ERRORS as exc:
                if self.hard_stop:
                    # Told twice to stop: leave it. The message stays unacked in our ack set and
                    # the run is recovered by another worker once Redis is back.
                    raise
                log.warning("Redis unreachable while trying to %s (%s); retrying in %.1f s", what, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def is_running(self, run_id: str) -> bool:
        with self._lock:
            return run_id in self._controls

    def register(self, run_id: str, control: StopControl, job: Job | None = None) -> None:
        """Track a running attempt (its lease, and its job's concurrency slot, are renewed)."""
        with self._lock:
            self._controls[run_id] = control
            if job is not None and job.concurrency_limit:
                self._limited[run_id] = job.name

    def unregister(self, run_id: str) -> None:
        with self._lock:
            self._controls.pop(run_id, None)
            self._limited.pop(run_id, None)

    def track_process(self, run_id: str, pgid: int) -> None:
        self.pid_files.track(run_id, pgid)

    def untrack_process(self, run_id: str) -> None:
        self.pid_files.untrack(run_id)

    def write_log(self, run_id: str, lines: list[tuple[float, str, str]]) -> None:
        """Append log lines now (one round trip); raises a connection error for the caller to keep
        them, so a script's deadline and stop are still enforced while Redis is away."""
        pipe = self.client.pipeline(transaction=False)
        self.store.append_log(pipe, run_id, lines)
        pipe.execute()

    @property
    def cache(self) -> packaging.HostPackages:
        return self.packages

    def working_copy(self, src: Path, dest: Path) -> None:
        self.packages.working_copy(src, dest)

    def entry_for(self, job: Job, root: Path, entry: str | None) -> str:
        return self.packages.entry_for(job.package, root, entry)

    def command_for(self, workdir: Path, entry: str) -> list[str]:
        return self.packages.command_for(workdir, entry)

    def remove_tree(self, path: Path) -> None:
        """Delete an attempt's files later, on the janitor thread, off the run's path."""
        self._janitor.put(path)

    def _janitor_loop(self) -> None:
        while True:
            path = self._janitor.get()
            if path is None:
                return
            remove_tree(path)

    # -- lifecycle ----------------------------------------------------------------------------
    def run(self) -> int:
        """Serve until stopped; returns the process exit code."""
        from workers.orphans import reap_orphans

        reap_orphans(self.pid_dir)
        swept = self.scratch.sweep()
        if swept:
            log.info("removed %d attempt directories and working copies of workers that are gone", swept)
        threads = [
            threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True),
            threading.Thread(target=self._cancel_loop, name="cancel", daemon=True),
        ]
        for t in threads:
            t.start()
        self._janitor_thread.start()
        self._beat()
        self.supervisor.start()
        self.callbacks.start()
        log.info(
            "worker %s (%s, pid %d) consuming with %d slots",
            self.worker_id,
            self.settings.instance_id,
            self.pid,
            self.concurrency,
        )
        try:
            self._dispatch_loop()
        finally:
            self._drain()
        return 0

    def request_stop(self) -> None:
        """First call: graceful stop. Second call: kill scripts now (runs still go back on the queue)."""
        if self.stopping:
            self.hard_stop = True
            log.warning("second stop request: killing running scripts now")
        else:
            log.info("stopping: no new runs; asking %d running scripts to stop", len(self._controls))
        self.stopping = True
        with self._lock:
            controls = list(self._controls.values())
        self.supervisor.shutdown(hard=self.hard_stop)
        for control in controls:
            control.request(StopReason.SHUTDOWN, hard=self.hard_stop)

    def _dispatch_loop(self) -> None:
        self.consuming = True
        delay = 0.1
        while not self.stopping:
            if not self._free.acquire(timeout=0.5):
                continue
            handed_over = False
            try:
                if self.stopping:  # the stop came while we waited for a slot: take nothing
                    break
                got = self.broker.fetch(claim=self.claim_as)
                delay = 0.1
                if isinstance(got, Fetched):
                    self._start_slot(got)
                    handed_over = True
                    continue
                wait = self.settings.idle_wait_seconds
                if got is not None:
                    wait = min(wait, max(0.0, got - time.time()))
                self.broker.wait_for_wake(self.block_client, wait)
            except CONNECTION_ERRORS as exc:
                self.consuming = False
                log.warning("Redis unreachable while fetching (%s); retrying in %.1f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                self.consuming = True
            finally:
                if not handed_over:
                    self._free.release()
        self.consuming = False

    def _start_slot(self, fetched: Fetched) -> None:
        with self._lock:
            self._busy += 1
            self._held.add(fetched.redis_id)
        self._pool.submit(self._slot, fetched)

    def _slot(self, fetched: Fetched) -> None:
        """Run messages on this slot: the first from the dispatcher, then any fetched with the
        previous outcome (``Executor._finish_and_fetch``), until none comes."""
        current: Fetched | None = fetched
        try:
            while current is not None:
                try:
                    self.executor.process(current)
                except Exception:
                    log.exception("slot failed on message %s", current.redis_id)
                nxt = self.executor.take_next()
                with self._lock:
                    self._held.discard(current.redis_id)
                    if nxt is not None:
                        self._held.add(nxt.redis_id)
                current = nxt
        finally:
            with self._lock:
                self._busy -= 1
            self._free.release()

    def _drain(self) -> None:
        """Wait for the slots (their scripts were asked to stop), then deregister."""
        self.request_stop() if not self.stopping else None
        self._pool.shutdown(wait=True)
        self.supervisor.join(timeout_s=600)
        self.callbacks.stop()
        self.scratch.close()
        self._janitor.put(None)
        self._janitor_thread.join(30)
        self.pid_files.close()
        self._stopped.set()
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.zrem(self.keys.workers, self.worker_id)
            pipe.delete(self.keys.worker(self.worker_id))
            pipe.execute()
        except CONNECTION_ERRORS:
            log.warning("could not deregister from Redis; the entry expires by itself")
        log.info("worker %s stopped", self.worker_id)

    # -- heartbeat ----------------------------------------------------------------------------
    def _heartbeat_loop(self) -> None:
        from workers.orphans import reap_orphans

        beats = 0
        while not self._stopped.wait(self.settings.heartbeat_interval_seconds):
            beats += 1
            if beats % ORPHAN_CHECK_EVERY == 0:
                # a worker on this host may have died since we started: its scripts are orphans now
                reap_orphans(self.pid_dir)
            try:
                self._beat()
                if beats % ACK_CHECK_EVERY == 0:
                    self._reconcile_acks()
                if beats % DEAD_LETTER_SWEEP_EVERY == 0:
                    self._expire_dead_letters()
            except CONNECTION_ERRORS as exc:
                self._connected_since = time.monotonic()
                log.warning("heartbeat failed: Redis unreachable (%s)", exc)
            except Exception:
                log.exception("heartbeat failed")

    def _reconcile_acks(self) -> None:
        """Give back messages our ack sets hold that no slot of ours holds.

        A message is in this process's ack set from the fetch until its ack, and a slot holds it
        all that time. One found in an ack set twice in a row (a few heartbeats apart) that no slot
        held either time was left there by a fetch whose reply never arrived (the connection broke
        after the script ran), or by a Sentinel failover whose new master kept the fetch but not
        what followed. Nothing else would ever re-queue it: dramatiq's maintenance only looks at
        dead workers' ack sets. Put back with dramatiq's own requeue; its claim sorts out whether
        the run still has to run.
        """
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        for level in PRIORITY_LEVELS:
            pipe.smembers(f"{k.queue_namespace}:__acks__.{self.worker_id}.{level}")
        found = pipe.execute()
        with self._lock:
            held = set(self._held)
        suspects = {
            (level, raw.decode())
            for level, members in zip(PRIORITY_LEVELS, found, strict=True)
            for raw in members
            if raw.decode() not in held
        }
        again = suspects & self._ack_suspects
        self._ack_suspects = suspects - again
        for level in PRIORITY_LEVELS:
            ids = [mid for lvl, mid in again if lvl == level]
            if ids:
                log.warning(
                    "re-queueing %d message(s) left in our %s ack set with no slot holding them",
                    len(ids),
                    level,
                )
                self.broker.do_requeue(level, *ids)
        if again:
            self.client.lpush(k.wake, "1")

    def _expire_dead_letters(self) -> None:
        """Purge dead letters older than ``dead_letter_ttl_seconds`` with their run records and logs.

        dramatiq's maintenance purges its own copy of the message after the same time; this purges
        ours, which the dead-letter list is made from. Any worker may do it: it is idempotent.
        """
        k = self.keys
        cutoff = int((time.time() - self.settings.dead_letter_ttl_seconds) * 1000)
        found: Any = self.client.zrangebyscore(k.dead_letters, "-inf", cutoff, start=0, num=100)
        old: list[bytes] = list(found)
        if not old:
            return
        pipe = self.client.pipeline(transaction=False)
        for raw in old:
            pipe.hget(k.run(raw.decode()), "job")
        jobs = pipe.execute()
        pipe = self.client.pipeline(transaction=False)
        for raw, job in zip(old, jobs, strict=True):
            run_id = raw.decode()
            pipe.zrem(k.dead_letters, run_id)
            pipe.delete(k.run(run_id), k.run_log(run_id))
            if job:
                pipe.zrem(k.job_runs(job.decode()), run_id)
        pipe.execute()
        log.info("purged %d dead letters older than %.0f s", len(old), self.settings.dead_letter_ttl_seconds)

    def _beat(self) -> None:
        k = self.keys
        now_ms = int(time.time() * 1000)
        with self._lock:
            run_ids = list(self._controls)
            limited = dict(self._limited)
            busy = self._busy
        # Only declare other workers dead after we have been connected a whole heartbeat timeout
        # ourselves: after a Redis outage every live worker looks dead until it beats again.
        connected_for = time.monotonic() - self._connected_since
        pipe = self.client.pipeline(transaction=False)
        self.broker.heartbeat(pipe, maintain=connected_for >= self.settings.heartbeat_timeout_seconds)
        pipe.zadd(k.workers, {self.worker_id: now_ms})
        pipe.hset(
            k.worker(self.worker_id),
            mapping={
                "instance_id": self.settings.instance_id,
                "host": self.host,
                "pid": self.pid,
                "slots": self.concurrency,
                "busy": busy,
                "started_at": self.started_at,
                "stopping": int(self.stopping),
            },
        )
        pipe.pexpire(k.worker(self.worker_id), int(self.settings.heartbeat_timeout_seconds * 3000))
        cutoff = now_ms - int(self.settings.heartbeat_timeout_seconds * 3000)
        pipe.zremrangebyscore(k.workers, "-inf", cutoff)
        self.store.scripts.unpark(keys=[k.parked, k.wake], args=[k.prefix, now_ms], client=pipe)
        lease_ms = int(self.settings.run_lease_ttl_seconds * 1000)
        for run_id, job_name in limited.items():
            pipe.zadd(k.job_slots(job_name), {run_id: now_ms + lease_ms}, xx=True)
        if run_ids:
            self.store.scripts.renew_leases(
                keys=[k.run_lease(r) for r in run_ids],
                args=[self.worker_id, int(self.settings.run_lease_ttl_seconds * 1000)],
                client=pipe,
            )
            for r in run_ids:
                pipe.hget(k.run(r), "cancel_requested")
        results = pipe.execute()
        metrics.set_worker_slots(busy, self.concurrency)
        if not run_ids:
            return
        base = len(results) - len(run_ids) - 1  # renew_leases' answer, then one flag per run
        lost = {run_ids[i - 1] for i in results[base]}
        flags = results[base + 1 :]
        for run_id, flag in zip(run_ids, flags, strict=True):
            with self._lock:
                control = self._controls.get(run_id)
            if control is None:
                continue
            if run_id in lost:
                log.warning("run %s: lease taken by another worker; stopping our attempt", run_id)
                control.request(StopReason.LEASE_LOST, hard=True)
            elif flag == b"1":
                control.request(StopReason.CANCEL)

    # -- cancel -------------------------------------------------------------------------------
    def _cancel_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                pubsub = self.block_client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.keys.cancel_channel)
                while not self._stopped.is_set():
                    msg = pubsub.get_message(timeout=1.0)
                    if msg and msg.get("type") == "message":
                        self._cancel(msg["data"].decode())
                pubsub.close()
            except (redis.RedisError, OSError) as exc:
                log.warning("cancel listener lost Redis (%s); reconnecting", exc)
                self._stopped.wait(1.0)

    def _cancel(self, run_id: str) -> None:
        with self._lock:
            control = self._controls.get(run_id)
        if control is not None:
            log.info("run %s: cancel requested", run_id, extra={"run_id": run_id})
            control.request(StopReason.CANCEL)

    def ready(self) -> bool:
        """Readiness: consuming and Redis answering."""
        if not self.consuming or self.stopping:
            return False
        try:
            return bool(self.client.ping())
        except CONNECTION_ERRORS:
            return False


def _never_called(*_args: Any) -> None:
    """The actor exists so dramatiq's middleware can read its options; the executor runs messages."""
    raise RuntimeError("jobyard_run messages are processed by workers.executor")
