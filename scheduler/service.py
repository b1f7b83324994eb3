"""One scheduler replica: the loop that elects, keeps the schedule table current and fires.

A single thread does everything that touches the lease and the fires, in this order each turn:
election tick (renew or try to acquire), then — only while the lease is surely held — sync the
table (pub/sub names at once, a version poll every ``POLL_INTERVAL_S``) and fire what is due.
It sleeps in between until the earliest of: the next tick, the next fire, the next poll, or a
wake-up (a change message, a signal). Long firing work (a catch-up) renews in between fires, and
checks the lease before each one.

Redis errors never end the loop: the fire that failed is retried (its fire key makes a retry of
one that did reach Redis a ``duplicate``), and the lease's local clock steps the leader down if
Redis stays away longer than the lease.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import redis

from jobyard.keys import Keys
from jobyard.runs import RunStore
from jobyard.settings import Settings
from scheduler.election import Election
from scheduler.events import EventListener, Waker
from scheduler.firing import MISFIRE_GRACE_S, NOJOB, Firer
from scheduler.stats import FENCED, SchedulerHooks, SchedulerStats
from scheduler.table import Entry, ScheduleTable

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 1.0  # fallback for a missed change message
MAX_SLEEP_S = 1.0
ERROR_BACKOFF_S = (0.1, 0.2, 0.5, 1.0)


class Scheduler:
    """A scheduler replica (``run()`` until ``stop()``); ``is_ready()`` for the readiness probe."""

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        *,
        events_client: redis.Redis | None = None,
        hooks: Iterable[SchedulerHooks] = (),
        instance_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.keys = Keys(settings.redis_prefix)
        self.client = client
        self.stats = SchedulerStats(hooks)
        self.election = Election(
            client,
            self.keys,
            instance_id or settings.instance_id,
            ttl_s=settings.leader_lease_ttl_seconds,
            renew_interval_s=settings.leader_renew_interval_seconds,
        )
        self.table = ScheduleTable(client, self.keys)
        self.firer = Firer(
            RunStore(client, self.keys, settings), self.keys, self.stats, settings.catch_up_window_seconds
        )
        self.waker = Waker()
        self.listener = EventListener(events_client or client, self.keys.events, self.waker)
        self._stopping = False
        self._needs_full_load = False
        self._next_poll = 0.0  # monotonic
        self._errors = 0
        self._retry_at = 0.0  # monotonic
        self._last_error_log = 0.0

    # -- control -------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to end (safe from a signal handler)."""
        self._stopping = True
        self.waker.wake()

    def is_ready(self) -> bool:
        """Leader with a live lease, or standby that saw a live leader within one lease time."""
        if self.election.leader:
            return self.election.held
        return self.election.standby_ready()

    def run(self) -> int:
        """Loop until ``stop()``; release the lease on the way out. Returns the exit code."""
        self.listener.start()
        try:
            while not self._stopping:
                self.step()
                if not self._stopping:
                    self.waker.wait(self._sleep_s())
        finally:
            was_leader = self.election.leader
            self.election.release()  # first: a standby may take over while we tidy up
            if was_leader:
                self.stats.leadership(False, None)
            self.listener.stop()
            self.waker.close()
            log.info("scheduler stopped: %s", self.stats.snapshot())
        return 0

    # -- one turn ------------------------------------------------------------------------------
    def step(self) -> None:
        """One turn of the loop (see the module docstring)."""
        if time.monotonic() < self._retry_at:
            if self.election.leader and not self.election.lease.held:
                self._tick()  # steps down without touching Redis
            return
        try:
            self._tick()
            if self.election.held:
                self._sync()
                self._fire_due()
        except redis.RedisError as exc:
            self._redis_error(exc)
        else:
            if self._errors:
                log.info("Redis answers again")
            self._errors = 0

    def _tick(self) -> None:
        change = self.election.tick()
        if change.lost:
            self._stepped_down()
        if change.elected:
            self.stats.leadership(True, self.election.term)
            self.table.clear()
            self._needs_full_load = True

    def _stepped_down(self) -> None:
        self.stats.leadership(False, None)
        self.table.clear()
        self._needs_full_load = False

    def _sync(self) -> None:
        names = self.listener.take()
        now_m = time.monotonic()
        if self._needs_full_load:
            self.table.sync(time.time(), new_term=True)
            self._needs_full_load = False
            self._next_poll = now_m + POLL_INTERVAL_S
            log.info("leader of term %s: %d schedules", self.election.term, len(self.table.entries))
        elif names or now_m >= self._next_poll:
            try:
                self.table.sync(time.time(), names=names)
            except redis.RedisError:
                self._restore(names)
                raise
            self._next_poll = now_m + POLL_INTERVAL_S

    def _restore(self, names: set[str]) -> None:
        # Keep the names for the next try rather than waiting for the poll.
        if names:
            self.listener.requeue(names)

    def _fire_due(self) -> None:
        now = time.time()
        term = self.election.term
        # Missed fire times first, one job at a time (a catch-up may fire many).
        for entry in self._due(now - MISFIRE_GRACE_S):
            if not self._may_fire():
                return
            if not self._handled(entry, self.firer.catch_up(entry, now, term)):
                return
        # Then what is due now: every job sharing a fire time in one round trip.
        while batch := self._due(now):
            if not self._may_fire():
                return
            items = [(entry, entry.next_fire or 0.0) for entry in batch]
            for (entry, fire_ts), outcome in zip(items, self.firer.fire_many(items, term), strict=True):
                if not self._handled(entry, outcome):
                    return
                if outcome != NOJOB:
                    entry.advance(fire_ts)

    def _due(self, until: float) -> list[Entry]:
        due = [
            e
            for e in self.table.entries.values()
            if e.next_fire is not None and not e.paused and e.next_fire <= until
        ]
        return sorted(due, key=lambda e: e.next_fire or 0.0)

    def _handled(self, entry: Entry, outcome: str | None) -> bool:
        """Act on a fire's outcome; False when firing must stop (this replica was fenced)."""
        if outcome == FENCED:
            log.warning("a newer leader term exists: stepping down")
            self.election.step_down()
            self._stepped_down()
            return False
        if outcome == NOJOB:
            self.table.entries.pop(entry.name, None)
        return True

    def _may_fire(self) -> bool:
        """Renew when due in the middle of firing; never fire without a surely held lease."""
        if self._stopping:
            return False
        if self.election.due_in() == 0:
            self._tick()
        return self.election.held

    # -- timing and errors ---------------------------------------------------------------------
    def _sleep_s(self) -> float:
        waits = [self.election.due_in(), MAX_SLEEP_S]
        now_m = time.monotonic()
        if self._retry_at > now_m:
            waits.append(self._retry_at - now_m)
        if self.election.held:
            waits.append(max(0.0, self._next_poll - now_m))
            nxt = self.table.next_due()
            if nxt is not None:
                waits.append(max(0.0, nxt - time.time()))
        return min(waits)

    def _redis_error(self, exc: redis.RedisError) -> None:
        self._errors += 1
        backoff = ERROR_BACKOFF_S[min(self._errors, len(ERROR_BACKOFF_S)) - 1]
        self._retry_at = time.monotonic() + backoff
        now_m = time.monotonic()
        if self._errors == 1 or now_m - self._last_error_log > 10:
            self._last_error_log = now_m
            log.warning(
                "Redis error (%s: %s); retrying%s",
                type(exc).__name__,
                exc,
                " (still leader while the lease lasts)" if self.election.held else "",
            )
