"""A steady stream of enqueues from a few threads, keeping what was accepted and when.

``submit`` makes one enqueue and returns the run id when it was accepted (202, or the store's
``created`` plus any acknowledgement the test asks for), or None when it was refused (503, a
connection error, an unconfirmed write). Anything else is a failure of the test: it is kept in
``errors`` and re-raised by ``check``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from tests.helpers import wait_until


@dataclass
class Accepted:
    run_id: str
    sent_at: float  # epoch s when the request was sent
    at: float  # epoch s when the acceptance arrived


@dataclass
class Stream:
    """Call ``submit`` from ``threads`` threads, each at most every ``interval_s``, until ``stop``."""

    submit: Callable[[], str | None]
    threads: int = 4
    interval_s: float = 0.02
    accepted: list[Accepted] = field(default_factory=list)
    refused: list[float] = field(default_factory=list)  # epoch s of each refusal
    errors: list[BaseException] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers = [
            threading.Thread(target=self._loop, name=f"stream-{i}", daemon=True) for i in range(self.threads)
        ]

    def start(self) -> Stream:
        for t in self._workers:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(30)
        self.check()

    def check(self) -> None:
        """Re-raise the first unexpected error a producer met."""
        if self.errors:
            raise AssertionError(f"{len(self.errors)} unexpected enqueue errors") from self.errors[0]

    def _loop(self) -> None:
        while not self._stop.is_set():
            sent = time.time()
            try:
                run_id = self.submit()
            except BaseException as exc:
                with self._lock:
                    self.errors.append(exc)
                return
            with self._lock:
                if run_id:
                    self.accepted.append(Accepted(run_id, sent, time.time()))
                else:
                    self.refused.append(time.time())
            # pacing, so the workers keep up; never used to wait for an event
            self._stop.wait(max(0.0, self.interval_s - (time.time() - sent)))

    # -- reading -----------------------------------------------------------------------------
    def count(self) -> int:
        with self._lock:
            return len(self.accepted)

    def attempts(self) -> int:
        with self._lock:
            return len(self.accepted) + len(self.refused)

    def ids(self) -> list[str]:
        with self._lock:
            return [a.run_id for a in self.accepted]

    def accepted_since(self, t: float) -> int:
        with self._lock:
            return sum(1 for a in self.accepted if a.sent_at >= t)

    def wait_accepted(self, n: int, *, since: float = 0.0, timeout: float = 30.0) -> None:
        """Wait until ``n`` runs sent after ``since`` were accepted."""

        def enough() -> bool:
            self.check()
            return self.accepted_since(since) >= n

        wait_until(enough, timeout=timeout, interval=0.02, what=f"{n} accepted runs")


def api_submit(client: httpx.Client, job: str) -> Callable[[], str | None]:
    """``submit`` through ``POST /api/jobs/{job}/runs``: 202 accepted; 503 or no answer refused."""

    def submit() -> str | None:
        try:
            response = client.post(f"/api/jobs/{job}/runs", json={})
        except httpx.TransportError:
            return None
        if response.status_code == 202:
            return str(response.json()["id"])
        if response.status_code == 503:
            return None
        raise AssertionError(f"enqueue answered {response.status_code}: {response.text}")

    return submit
