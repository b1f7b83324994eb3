"""The queue layer: dramatiq's Redis broker, with strict-priority fetching and a blocking wake-up.

Layout and delivery are dramatiq's (see ``jobyard/keys.py``): messages are dramatiq messages
in dramatiq's Redis lists and hashes, acked and nacked through dramatiq's own ``dispatch.lua``,
failures re-enqueued by dramatiq's ``Retries`` middleware, dead workers' messages re-queued from
dramatiq's per-worker ack sets. What we change, and why:

- **Fetching** (``fetch.lua``): one call looks at high, then normal, then low and takes one
  message only for a free slot. dramatiq runs a consumer per queue with its own prefetch, which
  orders nothing across queues (its actor ``priority`` only sorts what one process prefetched).
- **Waking**: dramatiq's consumer polls with up to 1 s of backoff when idle. Every enqueue here
  also pushes a token on a wake list that idle consumers ``BLPOP``; a miss clears the list in
  the same atomic fetch, so no token is lost and an idle cluster costs one blocked call per
  worker process.
- **Delays**: dramatiq keeps delayed messages in worker memory until their eta. Here they wait
  in one Redis zset and the fetch script promotes them when due, so a ``run_at`` days away
  survives every restart and costs no worker memory.
- **Starvation**: priority is strict by design (a high run always goes first). Optional aging
  (``JOBYARD_PRIORITY_AGING_SECONDS``, off by default) lets a waiting run rise one level per
  period waited, for users who prefer that every run starts eventually.
- **Maintenance**: dramatiq runs it on 0.1 % of calls, so a SIGKILLed worker's message may
  wait many minutes, and then re-queues it at the tail, behind the whole backlog. Each worker
  runs ``requeue_dead.lua`` (the same job on the same keys, front of the queue) once per
  heartbeat, with a short heartbeat timeout (``JOBYARD_HEARTBEAT_TIMEOUT_SECONDS``), which
  bounds recovery: timeout + one heartbeat interval, however deep the queue.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import redis
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware

from jobyard.keys import PRIORITY_LEVELS, Keys
from jobyard.scripts import Scripts

RUN_ACTOR = "jobyard_run"
# Retries are decided on our run record (attempts include worker deaths, which dramatiq cannot
# see); dramatiq's own limit is set out of the way and the actor raises Retry(delay=...) or fails.
DRAMATIQ_MAX_RETRIES = 1_000_000


# The JSON dramatiq's Message.encode() writes for a run's message (its JSONEncoder: compact
# separators, the dataclass's field order), filled in by hand: building the Message, its
# asdict() and json.dumps were ~40 us a message, most of a batch's own work per run.
_MESSAGE = (
    '{"queue_name":%s,"actor_name":"' + RUN_ACTOR + '","args":[%s,%s],"kwargs":{},'
    '"options":{"redis_message_id":"%s","max_retries":' + str(DRAMATIQ_MAX_RETRIES) + "},"
    '"message_id":"%s","message_timestamp":%d}'
)
_PLAIN = re.compile(r"[A-Za-z0-9_.:-]*\Z")  # strings JSON quotes as they are
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def quoted(text: str) -> str:
    """``text`` as a JSON string (as ``json.dumps`` writes it)."""
    return f'"{text}"' if _PLAIN.match(text) else json.dumps(text)


def new_message_ids(count: int) -> list[str]:
    """``count`` random UUIDs (version 4) as text, as dramatiq makes its message ids."""
    raw = os.urandom(16 * count).hex()
    return [
        f"{raw[i : i + 8]}-{raw[i + 8 : i + 12]}-4{raw[i + 13 : i + 16]}-"
        f"{_VARIANT[raw[i + 16]]}{raw[i + 17 : i + 20]}-{raw[i + 20 : i + 32]}"
        for i in range(0, 32 * count, 32)
    ]


def build_message(
    run_id: str,
    job: str,
    level: str,
    *,
    ids: tuple[str, str] | None = None,
    timestamp_ms: int | None = None,
) -> tuple[str, str]:
    """A dramatiq message that asks for run ``run_id`` of ``job`` on queue ``level``: (redis id, encoded).

    ``ids``: its (redis id, message id), new ones when not given; ``timestamp_ms``: its
    dramatiq timestamp (now when not given). The text is what ``Message.encode()`` makes.
    """
    redis_id, message_id = ids or new_message_ids(2)
    if timestamp_ms is None:
        timestamp_ms = int(time.time() * 1000)
    text = _MESSAGE % (quoted(level), quoted(run_id), quoted(job), redis_id, message_id, timestamp_ms)
    return redis_id, text


@dataclass
class Fetched:
    """A message taken from a level for one slot (with the claim of its run, when asked for)."""

    level: str
    redis_id: str
    message: Message[Any]
    claim: list[Any] | None = None  # _claim.lua's reply


@dataclass(frozen=True)
class ClaimAs:
    """Who claims the run of a fetched message in the same call (see ``_claim.lua``)."""

    instance_id: str
    pid: int
    max_deaths: int
    terminal: str  # terminal statuses, comma-separated


class JobyardBroker(RedisBroker):
    """dramatiq's RedisBroker with our fetch, wake-up and delayed set (see the module docstring)."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        heartbeat_timeout_s: float = 15.0,
        dead_letter_ttl_s: float = 7 * 86400.0,
        slot_lease_s: float = 10.0,
        aging_s: float = 0.0,
        middleware: list[Middleware] | None = None,
    ) -> None:
        super().__init__(
            client=client,
            namespace=keys.queue_namespace,
            middleware=middleware if middleware is not None else [],
            heartbeat_timeout=int(heartbeat_timeout_s * 1000),
            dead_message_ttl=int(dead_letter_ttl_s * 1000),
            # maintenance is forced on our heartbeat instead of left to chance
            maintenance_chance=0,
        )
        self.keys = keys
        self.slot_lease_s = slot_lease_s
        self.aging_s = aging_s
        self.jy_scripts = Scripts(client)
        for level in PRIORITY_LEVELS:
            self.declare_queue(level)

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        """Put a message on its level now or after ``delay`` ms (used by dramatiq's Retries)."""
        level = message.queue_name
        if level.endswith(".DQ"):
            level = level[:-3]
        redis_id = str(uuid4())
        eta = int(time.time() * 1000) + delay if delay else 0
        message = message.copy(queue_name=level, options={"redis_message_id": redis_id, "eta": eta or None})
        self.emit_before("enqueue", message, delay)
        k = self.keys
        self.jy_scripts.push_message(
            keys=[k.queue(level), k.queue_msgs(level), k.delayed, k.wake],
            args=[redis_id, message.encode(), level, eta],
        )
        self.emit_after("enqueue", message, delay)
        return message

    def fetch(
        self, levels: tuple[str, ...] = PRIORITY_LEVELS, claim: ClaimAs | None = None
    ) -> Fetched | float | None:
        """Take the next message in priority order (skipping jobs at their concurrency limit);
        with ``claim``, claim its run in the same call (the run lease is ``slot_lease_s``).

        Returns the message, or when none waits the epoch seconds of the next delayed eta (None
        when nothing is delayed either; 0.0 when the scan was cut short and should go on now).
        """
        keys, args = self.fetch_call(levels, claim)
        return self.parse_fetch(self.jy_scripts.fetch(keys=keys, args=args))

    def fetch_call(
        self, levels: tuple[str, ...] = PRIORITY_LEVELS, claim: ClaimAs | None = None
    ) -> tuple[list[str], list[Any]]:
        """Keys and arguments of ``fetch.lua`` (for a caller that sends it in a pipeline)."""
        k = self.keys
        now = time.time()
        claim_args = ("", 0, 0, "")
        if claim is not None:
            claim_args = (claim.instance_id, claim.pid, claim.max_deaths, claim.terminal)
        args = [
            k.queue_namespace,
            self.broker_id,
            int(now * 1000),
            int(self.slot_lease_s * 1000),
            k.prefix,
            int(self.aging_s * 1000),
            *claim_args,
            now,
            *levels,
        ]
        return [k.heartbeats, k.delayed, k.wake], args

    @staticmethod
    def parse_fetch(res: list[Any]) -> Fetched | float | None:
        """Read ``fetch.lua``'s answer (see ``fetch``)."""
        level = res[0].decode()
        if level:
            return Fetched(level, res[1].decode(), Message.decode(res[2]), res[3] if len(res) > 3 else None)
        if res[1] == b"more":
            return 0.0
        return float(res[1]) / 1000 if res[1] else None

    def wait_for_wake(self, client: redis.Redis, timeout_s: float) -> bool:
        """Block on the wake list for up to ``timeout_s`` (on a client without a short socket timeout)."""
        return client.blpop([self.keys.wake], timeout=max(0.01, timeout_s)) is not None

    def ack_message(self, fetched: Fetched) -> None:
        """Done with it: drop the message (dramatiq's ack)."""
        self.do_ack(fetched.level, fetched.redis_id)

    def nack_message(self, fetched: Fetched) -> None:
        """Failed for good: move it to dramatiq's dead-letter queue for the level."""
        self.do_nack(fetched.level, fetched.redis_id)

    def requeue_message(self, fetched: Fetched) -> None:
        """Give it back unprocessed (graceful stop): to the tail of its level."""
        self.do_requeue(fetched.level, fetched.redis_id)

    def heartbeat(self, pipe: Any = None, *, maintain: bool = True) -> None:
        """Mark this process alive and (``maintain``) re-queue the messages of processes that are not.

        Uses ``requeue_dead.lua`` rather than dramatiq's maintenance: same keys and semantics, but
        a dead worker's messages go to the front of their level, so recovery is bounded under load.
        Queued on ``pipe`` when given (the caller executes it), else run now.
        """
        target = pipe if pipe is not None else self.client.pipeline(transaction=False)
        self.jy_scripts.requeue_dead(
            keys=[self.keys.heartbeats],
            args=[
                self.namespace,
                int(time.time() * 1000),
                self.heartbeat_timeout,
                self.dead_message_ttl,
                self.broker_id,
                1 if maintain else 0,
                *PRIORITY_LEVELS,
            ],
            client=target,
        )
        if pipe is None:
            target.execute()


def queue_depths_pipeline(client: Any, keys: Keys) -> Any:
    """A pipeline (sync or asyncio client) that reads the depths; pass its results to ``read_depths``."""
    pipe = client.pipeline(transaction=False)
    for level in PRIORITY_LEVELS:
        pipe.llen(keys.queue(level))
    pipe.zcard(keys.delayed)
    return pipe


def read_depths(values: list[int]) -> dict[str, int]:
    """``{"high": n, "normal": n, "low": n, "delayed": n}`` from ``queue_depths_pipeline`` results."""
    return {**dict(zip(PRIORITY_LEVELS, values[:3], strict=True)), "delayed": values[3]}
