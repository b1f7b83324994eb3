"""The API process: refuses to start without Redis, binds loopback, stops cleanly on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import redis

from jobyard.runs import EnqueueSpec, RunStore
from tests.helpers import REPO, free_port, role_env
from tests.services.conftest import KEYS, put_job


def test_unreachable_redis_at_start_is_a_clear_error_and_exit_1(data_dir: Path) -> None:
    dead_port = free_port()
    env = role_env(f"redis://127.0.0.1:{dead_port}/0", data_dir, JOBYARD_REDIS_CONNECT_TIMEOUT_SECONDS="1")
    result = subprocess.run(
        [sys.executable, "-m", "jobyard", "api", "--port", str(free_port())],
        env=env,
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"127.0.0.1:{dead_port}" in result.stderr and "JOBYARD_REDIS_URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_sigterm_stops_the_api_cleanly_even_with_a_log_stream_open(
    redis_url: str, r: redis.Redis, store: RunStore, start_api: Any
) -> None:
    api = start_api(redis_url)
    put_job(r, "forever")
    created = store.create(EnqueueSpec(job="forever"))
    assert created.run_id is not None
    r.hset(KEYS.run(created.run_id), "status", "running")  # a run that never ends
    opened = threading.Event()
    outcome: dict[str, Any] = {}

    def follow() -> None:
        try:
            with (
                api.client() as client,
                client.stream("GET", f"/api/runs/{created.run_id}/log/stream") as response,
            ):
                opened.set()
                for _ in response.iter_lines():
                    pass
            outcome["closed"] = True
        except httpx.HTTPError as exc:
            outcome["error"] = exc

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    assert opened.wait(10)
    started = time.monotonic()
    api.role.signal(signal.SIGTERM)
    api.role.proc.wait(20)
    assert api.role.proc.returncode == 0, api.role.output()
    assert time.monotonic() - started < 4  # the stream ended by itself, no graceful-timeout wait
    reader.join(10)
    assert not reader.is_alive() and outcome
    assert "Traceback" not in api.role.output()
