"""Leader election: one scheduler replica holds ``P:leader`` at a time, fenced by ``P:leader:term``.

Every replica calls ``tick()`` from its loop. A standby tries to acquire the lease every renew
interval; the leader renews it on the same beat and steps down as soon as a renewal fails or the
lease is no longer surely held locally (``Lease.held``: ttl minus a margin since the last renewal).
On acquisition the leader writes ``P:leader:info`` (instance, holder, term, since) for
``GET /api/cluster``. A clean exit releases the lease so a standby takes over on its next try.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import redis

from jobyard.keys import Keys
from jobyard.lease import Lease

log = logging.getLogger(__name__)


@dataclass
class Change:
    """What a tick changed: ``elected`` (a new term began) or ``lost`` (stop firing now)."""

    elected: bool = False
    lost: bool = False


class Election:
    """This replica's side of the election (see the module docstring)."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        instance_id: str,
        *,
        ttl_s: float,
        renew_interval_s: float,
        pid: int | None = None,
    ) -> None:
        self.client = client
        self.keys = keys
        self.instance_id = instance_id
        self.holder = f"{instance_id}:{pid or os.getpid()}"
        self.renew_interval_s = renew_interval_s
        self.lease = Lease(client, keys.leader, self.holder, ttl_s, keys.leader_term)
        self.leader = False
        self.since: float | None = None
        self._next_tick = 0.0  # monotonic
        self._info_written = False
        self._saw_leader_at: float | None = None  # monotonic: when a standby last saw a live lease

    @property
    def term(self) -> int | None:
        """The fencing term while leader, else None."""
        return self.lease.term if self.leader else None

    @property
    def held(self) -> bool:
        """Leader with a lease that is surely still ours (local check, no Redis call)."""
        return self.leader and self.lease.held

    def due_in(self) -> float:
        """Seconds until the next tick is due (0 when overdue)."""
        return max(0.0, self._next_tick - time.monotonic())

    def tick(self) -> Change:
        """Renew (leader) or try to acquire (standby) when due. Raises ``redis.RedisError``."""
        change = Change()
        if self.leader and not self.lease.held:
            # Renewals failed for ttl - margin: another replica may take over any moment now.
            log.warning(
                "leader lease of term %s ran out before it could be renewed: stepping down", self.term
            )
            self.step_down()
            change.lost = True
        now = time.monotonic()
        if now < self._next_tick:
            return change
        self._next_tick = now + self.renew_interval_s
        if self.leader:
            if not self.lease.renew():
                log.warning(
                    "leader lease of term %s was lost (taken over or expired): stepping down", self.term
                )
                self.step_down()
                change.lost = True
            elif not self._info_written:
                self._write_info()
            return change
        if self.lease.acquire():
            self.leader = True
            self.since = time.time()
            self._info_written = False
            log.info("became scheduler leader, term %s (%s)", self.lease.term, self.holder)
            self._write_info()
            change.elected = True
        else:
            self._saw_leader_at = now
        return change

    def _write_info(self) -> None:
        try:
            self.client.hset(
                self.keys.leader_info,
                mapping={
                    "instance": self.instance_id,
                    "holder": self.holder,
                    "term": str(self.lease.term),
                    "since": repr(self.since),
                },
            )
            self._info_written = True
        except redis.RedisError as exc:
            log.warning("could not write the leader info (retrying at the next renewal): %s", exc)

    def step_down(self) -> None:
        """Stop acting as leader at once (the key expires by itself or belongs to another)."""
        self.lease.abandon()
        self.leader = False
        self.since = None
        # Let another replica win the next round: do not try again before a full interval.
        self._next_tick = time.monotonic() + self.renew_interval_s

    def release(self) -> None:
        """Clean exit: give the lease up so a standby takes over at its next try."""
        if not self.leader:
            return
        term = self.term
        self.leader = False
        try:
            released = self.lease.release()
        except redis.RedisError as exc:
            log.warning("could not release the leader lease (it expires by itself): %s", exc)
            return
        if released:
            log.info("released the scheduler leader lease of term %s", term)

    def standby_ready(self) -> bool:
        """A standby is ready while it saw a live leader within one lease time."""
        seen = self._saw_leader_at
        return seen is not None and time.monotonic() - seen < self.lease.ttl_s
