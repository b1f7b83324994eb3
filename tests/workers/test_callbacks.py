"""Run callbacks: signed, retried on failure, never holding a worker slot."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from jobyard.callbacks import SIGNATURE_HEADER, verify
from tests.helpers import wait_until
from tests.workers.conftest import enqueue, wait_status

SECRET = "callback-secret-for-tests"


class Receiver:
    """A loopback HTTP endpoint that fails the first ``fail_first`` requests with 503."""

    def __init__(self, fail_first: int = 0, delay_s: float = 0.0) -> None:
        self.fail_first = fail_first
        self.delay = threading.Event()
        self.delay_s = delay_s
        self.requests: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests.append((dict(self.headers), body))
                if outer.delay_s:
                    outer.delay.wait(outer.delay_s)
                code = 503 if len(outer.requests) <= outer.fail_first else 204
                self.send_response(code)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.delay.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver(fail_first=1)
    yield rec
    rec.close()


def test_callback_is_signed_and_retried(deploy, store, workers, receiver: Receiver) -> None:  # type: ignore[no-untyped-def]
    deploy("cb", {"run.sh": "echo done\n"})
    workers(1, JOBYARD_CALLBACK_SECRET=SECRET)
    run_id = enqueue(store, "cb", callback_url=receiver.url)
    wait_status(store, run_id, {"succeeded"})
    wait_until(lambda: len(receiver.requests) >= 2, timeout=20, what="the retried callback")
    headers, body = receiver.requests[-1]
    assert verify(body, SECRET, headers[SIGNATURE_HEADER])
    assert not verify(body + b" ", SECRET, headers[SIGNATURE_HEADER])
    sent = json.loads(body)
    assert sent["id"] == run_id and sent["status"] == "succeeded"
    status = wait_until(lambda: store.get(run_id).callback_status, timeout=10)
    assert status == "delivered (HTTP 204)"


def test_a_slow_callback_does_not_hold_the_slot(deploy, store, workers) -> None:  # type: ignore[no-untyped-def]
    slow = Receiver(delay_s=30)
    try:
        deploy("cb2", {"run.sh": "true\n"})
        workers(1, JOBYARD_CALLBACK_SECRET=SECRET)
        first = enqueue(store, "cb2", callback_url=slow.url)
        wait_status(store, first, {"succeeded"})
        wait_until(lambda: slow.requests, timeout=10, what="the slow callback to be in flight")
        # the only slot is free again while the callback still waits for its endpoint
        second = enqueue(store, "cb2")
        assert wait_status(store, second, {"succeeded"}, timeout=10).status.value == "succeeded"
    finally:
        slow.close()
