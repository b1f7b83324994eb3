"""Wake-ups for the scheduler loop: job change messages on ``P:events``, and stop requests.

The loop sleeps in ``select()`` on a pipe; the listener thread (a pub/sub connection of its own)
and the signal handlers write a byte to it. Writing to a pipe is safe from a signal handler,
unlike taking a lock, so a SIGTERM ends a wait at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import threading

import redis

log = logging.getLogger(__name__)

# Events that can change a schedule (others, e.g. continuous start/stop, are ignored).
SCHEDULE_EVENTS = frozenset({"deployed", "settings", "deleted", "paused", "resumed"})


class Waker:
    """A self-pipe: ``wake()`` from any thread or signal handler ends the current ``wait()``."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)

    def wake(self) -> None:
        """End the current or next wait (never blocks)."""
        # BlockingIOError (an OSError): the pipe is full, a wake-up is already pending.
        with contextlib.suppress(OSError):
            os.write(self._w, b"x")

    def wait(self, timeout_s: float) -> bool:
        """Sleep up to ``timeout_s``; True when woken."""
        ready, _, _ = select.select([self._r], [], [], max(0.0, timeout_s))
        if not ready:
            return False
        try:
            while os.read(self._r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
        return True

    def close(self) -> None:
        """Close both ends."""
        for fd in (self._r, self._w):
            with contextlib.suppress(OSError):
                os.close(fd)


class EventListener:
    """A daemon thread that collects the names of changed jobs from ``P:events``."""

    def __init__(self, client: redis.Redis, channel: str, waker: Waker) -> None:
        self.client = client
        self.channel = channel
        self.waker = waker
        self._lock = threading.Lock()
        self._names: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jobyard-scheduler-events", daemon=True)

    def start(self) -> None:
        """Start listening."""
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop listening and wait for the thread."""
        self._stop.set()
        self._thread.join(timeout_s)

    def take(self) -> set[str]:
        """The job names seen since the last call."""
        with self._lock:
            names, self._names = self._names, set()
        return names

    def requeue(self, names: set[str]) -> None:
        """Put names back (a reload that failed) for the next ``take()``."""
        with self._lock:
            self._names |= names

    def _run(self) -> None:
        backoff_s = 0.1
        while not self._stop.is_set():
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(self.channel)
                backoff_s = 0.1
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message and message.get("type") == "message":
                        self._handle(message["data"])
            except redis.RedisError as exc:
                # The once-a-second version poll covers what is missed meanwhile.
                log.debug("events subscription lost (%s); resubscribing in %.1f s", exc, backoff_s)
                self._stop.wait(backoff_s)
                backoff_s = min(backoff_s * 2, 2.0)
            finally:
                with contextlib.suppress(redis.RedisError):
                    pubsub.close()

    def _handle(self, data: bytes | str) -> None:
        try:
            event = json.loads(data)
            name = str(event["job"])
            kind = str(event.get("event", ""))
        except (ValueError, KeyError, TypeError):
            log.debug("ignoring an events message that is not {event, job} JSON: %r", data)
            return
        if kind not in SCHEDULE_EVENTS:
            return
        with self._lock:
            self._names.add(name)
        self.waker.wake()
