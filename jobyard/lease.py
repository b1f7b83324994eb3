"""A time-bound, exclusive lease on one Redis key, with a fencing token per term.

Used by the scheduler's leader election and by anything else that must have at most one
actor at a time (continuous singleton jobs). The scripts live in ``jobyard/lua/lease_*.lua``
(with the other atomic scripts, so the key layout stays readable in one folder); a ``Lease``
registers just those three on the client it is given instead of the whole ``Scripts`` set,
because a lease usually runs on a connection of its own with short timeouts.

Contract
--------

- **Exclusive.** At most one holder at a time holds the key: ``acquire`` is ``SET key holder NX
  PX ttl``; ``renew`` and ``release`` compare the stored value with ``holder`` before they extend
  or delete it (compare-and-extend, compare-and-delete), so nobody can extend or free a lease
  another holder took over.
- **A term per acquisition.** When ``term_key`` is given, every successful ``acquire`` raises that
  counter in the same script and keeps the new value in ``term``: the fencing token. Writes the
  holder makes are checked against it inside their own script (``create_run.lua`` compares it
  with the counter), so a holder that was paused and woke up after someone else took over is
  refused by Redis even if it still believes it holds the lease.
- **When it may be taken over.** The key expires ``ttl_s`` after the last successful acquire or
  renew; from then on anyone may acquire it. A lease that expired is never silently revived:
  ``renew`` then fails and the holder must ``acquire`` again, which opens a new term.
- **When the holder must stop acting.** ``held`` is computed locally, without a round trip:
  ``monotonic() - last_renewed < ttl_s - margin_s``, where ``last_renewed`` is the monotonic time
  *before* the acquire/renew command was sent (Redis starts the TTL later than that). A holder
  that cannot renew (Redis unreachable, process starved) therefore stops acting ``margin_s``
  before Redis lets anyone else in. Renew at about ``ttl_s / 3`` or more often.
- **Errors.** ``acquire``, ``renew`` and ``release`` raise ``redis.RedisError`` when Redis cannot be
  reached; ``held`` keeps its local meaning meanwhile, so a caller may keep working until it
  turns false and retry the renewal.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from jobyard.errors import InvalidInput
from jobyard.scripts import source

DEFAULT_MARGIN_FRACTION = 0.2


class Lease:
    """One holder's view of an exclusive, expiring lease on ``key`` (see the module contract)."""

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        holder: str,
        ttl_s: float,
        term_key: str | None = None,
        *,
        margin_s: float | None = None,
    ) -> None:
        if ttl_s <= 0:
            raise InvalidInput(
                f"a lease needs a positive ttl_s, got {ttl_s!r}", "give the lease time in seconds"
            )
        self.client = client
        self.key = key
        self.holder = holder
        self.ttl_s = float(ttl_s)
        self.term_key = term_key
        # Stop acting this long before Redis would let another holder in.
        self.margin_s = float(margin_s) if margin_s is not None else self.ttl_s * DEFAULT_MARGIN_FRACTION
        if not 0 <= self.margin_s < self.ttl_s:
            raise InvalidInput(
                f"margin_s must be in [0, ttl_s), got {self.margin_s!r} for ttl_s {self.ttl_s!r}",
                "use a margin smaller than the lease time (default: a fifth of it)",
            )
        self.term: int | None = None
        self.last_renewed: float | None = None
        self._acquire: Any = client.register_script(source("lease_acquire"))
        self._renew: Any = client.register_script(source("lease_renew"))
        self._release: Any = client.register_script(source("lease_release"))

    @property
    def ttl_ms(self) -> int:
        """The lease time in milliseconds, as ``PX`` takes it."""
        return max(1, int(self.ttl_s * 1000))

    @property
    def held(self) -> bool:
        """Whether this holder may act now (local: no Redis call)."""
        if self.last_renewed is None:
            return False
        return time.monotonic() - self.last_renewed < self.ttl_s - self.margin_s

    def remaining_s(self) -> float:
        """Seconds this holder may still act without another renewal (0 when not held)."""
        if self.last_renewed is None:
            return 0.0
        return max(0.0, self.ttl_s - self.margin_s - (time.monotonic() - self.last_renewed))

    def acquire(self) -> bool:
        """Take the lease if nobody holds it; on success open a new term (``term``)."""
        sent = time.monotonic()
        keys = [self.key, self.term_key] if self.term_key else [self.key]
        result = int(self._acquire(keys=keys, args=[self.holder, self.ttl_ms]))
        if result < 0:
            return False
        self.term = result if self.term_key else None
        self.last_renewed = sent
        return True

    def renew(self) -> bool:
        """Extend the lease if this holder still has it; False (and not held) when it was lost."""
        sent = time.monotonic()
        if int(self._renew(keys=[self.key], args=[self.holder, self.ttl_ms])):
            self.last_renewed = sent
            return True
        self.last_renewed = None
        return False

    def release(self) -> bool:
        """Give the lease up now so another holder can take it at once; True when it was ours."""
        self.last_renewed = None
        return bool(int(self._release(keys=[self.key], args=[self.holder])))

    def abandon(self) -> None:
        """Stop acting as holder without touching Redis (the key expires on its own)."""
        self.last_renewed = None

    def current_holder(self) -> str | None:
        """Who holds the key in Redis right now (any holder), or None."""
        value = self.client.get(self.key)
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    def current_term(self) -> int | None:
        """The term counter's value in Redis (None without a term key or before any term)."""
        if not self.term_key:
            return None
        value = self.client.get(self.term_key)
        return int(value) if value is not None else None
