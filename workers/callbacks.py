"""Delivering run callbacks without holding a worker slot, and without losing them.

When a run with a ``callback_url`` ends, its id goes into the callbacks outbox (a zset in
Redis, ``P:callbacks``) as part of the run's lifecycle hooks; that is all the slot does. A
sender thread in every worker takes due ids with ``take_due.lua`` (which hides an id for a
visibility timeout rather than removing it, so a worker that dies mid-delivery leaves it for
another), POSTs the run JSON signed with ``X-Jobyard-Signature`` (HMAC-SHA256 under
``JOBYARD_CALLBACK_SECRET``), retrying with exponential backoff and jitter (tenacity) for up to
``DELIVERY_DEADLINE_S``, then records the result on the run (``callback_status``) and removes
the id. Several deliveries run at once so one slow endpoint does not hold up the rest.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import httpx
from tenacity import (
    before_sleep_log,
    retry,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from jobyard.callbacks import SIGNATURE_HEADER, body_of, signature
from jobyard.errors import NotFound
from jobyard.hooks import RunHooks
from jobyard.models import Job, Run
from jobyard.redis_conn import CONNECTION_ERRORS

if TYPE_CHECKING:
    from workers.worker import Worker

log = logging.getLogger(__name__)

DELIVERY_DEADLINE_S = 120.0
REQUEST_TIMEOUT_S = 10.0
VISIBILITY_S = 300.0  # longer than a whole delivery with its retries
PARALLEL = 4


class CallbackFailed(Exception):
    """The endpoint answered with a status that is worth trying again (5xx, 429, 408)."""


class CallbackHooks(RunHooks):
    """Puts finished runs that asked for a callback into the outbox."""

    def __init__(self, worker: Worker) -> None:
        self.w = worker

    def after_finish(self, run: Run, job: Job) -> None:
        """Queue the callback (one ZADD; delivery happens on the sender thread)."""
        if run.callback_url:
            self.w.client.zadd(self.w.keys.callbacks, {run.id: int(time.time() * 1000)})
            self.w.callbacks.wake()


class CallbackSender:
    """The sender thread and its small delivery pool."""

    def __init__(self, worker: Worker) -> None:
        self.w = worker
        self._wake = threading.Event()
        self._pool = ThreadPoolExecutor(PARALLEL, thread_name_prefix="callback")
        self._in_flight = threading.Semaphore(PARALLEL)
        self._stopped = threading.Event()
        self._http = httpx.Client(timeout=REQUEST_TIMEOUT_S, follow_redirects=False)
        self.thread = threading.Thread(target=self._loop, name="callbacks", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Stop taking callbacks; deliveries in flight finish or are taken again later."""
        self._stopped.set()
        self._wake.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            while not self._stopped.is_set() and self._in_flight.acquire(timeout=1.0):
                try:
                    run_id = self._take()
                except CONNECTION_ERRORS as exc:
                    log.warning("callbacks: Redis unreachable (%s)", exc)
                    run_id = None
                if run_id is None:
                    self._in_flight.release()
                    break
                self._pool.submit(self._deliver_and_release, run_id)

    def _take(self) -> str | None:
        w = self.w
        got = w.store.scripts.take_due(
            keys=[w.keys.callbacks], args=[int(time.time() * 1000), int(VISIBILITY_S * 1000)]
        )
        return got.decode() if got else None

    def _deliver_and_release(self, run_id: str) -> None:
        try:
            self.deliver(run_id)
        except Exception:
            log.exception("callback for run %s failed", run_id)
        finally:
            self._in_flight.release()

    def deliver(self, run_id: str) -> None:
        """POST one run's callback, with retries; record the outcome on the run."""
        w = self.w
        try:
            run = w.store.get(run_id)
        except NotFound:
            w.client.zrem(w.keys.callbacks, run_id)
            return
        if not run.callback_url:
            w.client.zrem(w.keys.callbacks, run_id)
            return
        body = body_of(run.as_api())
        headers = {"Content-Type": "application/json", "User-Agent": "jobyard-callback"}
        secret = w.settings.callback_secret.get_secret_value()
        if secret:
            headers[SIGNATURE_HEADER] = signature(body, secret)
        url = run.callback_url

        @retry(
            retry=retry_if_exception_type((httpx.TransportError, CallbackFailed)),
            wait=wait_exponential_jitter(multiplier=0.5, max=30.0),
            stop=stop_after_delay(DELIVERY_DEADLINE_S),
            before_sleep=before_sleep_log(log, logging.WARNING),
            reraise=True,
        )
        def post() -> int:
            response = self._http.post(url, content=body, headers=headers)
            if response.status_code >= 500 or response.status_code in (408, 429):
                raise CallbackFailed(f"HTTP {response.status_code}")
            return response.status_code

        try:
            status = post()
            outcome = f"delivered (HTTP {status})" if status < 400 else f"refused (HTTP {status})"
        except (httpx.HTTPError, CallbackFailed) as exc:
            outcome = f"failed after retries: {exc}"
        log.info("run %s: callback %s", run_id, outcome, extra={"run_id": run_id, "job_name": run.job})
        pipe = w.client.pipeline(transaction=False)
        pipe.hset(w.keys.run(run_id), "callback_status", outcome)
        pipe.zrem(w.keys.callbacks, run_id)
        pipe.execute()
