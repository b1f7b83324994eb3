"""The bench's private system: its own redis-server, API and worker processes, all stopped by pid.

Everything binds 127.0.0.1 on free ports and lives in one temporary directory, so a bench run
touches nothing else on the machine and leaves nothing running.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis
from dramatiq.brokers.redis import _scripts as dramatiq_scripts

from jobyard.keys import Keys
from jobyard.models import Run
from jobyard.scripts import SCRIPT_NAMES, source
from tests.helpers import RedisServer, Role, free_port, role_env, wait_until

KEYS = Keys()
NOOP_SCRIPT = "#!/bin/sh\ntrue\n"
# Fails when its first argument is "fail": the bench chooses which runs fail, so the count is exact.
FLAKY_SCRIPT = '#!/bin/sh\nif [ "$1" = fail ]; then exit 1; fi\ntrue\n'
LONG_SCRIPT = "#!/bin/sh\nsleep 60\n"
HISTORY = 10_000  # the most settings.job allows: no run of a section is trimmed before it is read


class Cluster:
    """One redis-server plus the jobyard roles the sections start and stop."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(root / "redis")
        self.token = secrets.token_urlsafe(24)
        self.api: Role | None = None
        self.api_url = ""
        self.workers: list[Role] = []
        self.r: redis.Redis | None = None
        self._http: httpx.Client | None = None
        self._logs = 0

    # -- processes ------------------------------------------------------------------------------
    def start_redis(self) -> None:
        """Start the private redis-server."""
        self.redis.start()
        self.r = self.redis.client()

    @property
    def redis_url(self) -> str:
        return self.redis.url

    @property
    def client(self) -> redis.Redis:
        assert self.r is not None, "start_redis() first"
        return self.r

    def env(self, **extra: str) -> dict[str, str]:
        """A role's environment: the private Redis, the bench's data dir and admin token."""
        return role_env(
            self.redis_url,
            self.data_dir,
            JOBYARD_ADMIN_TOKEN=self.token,
            JOBYARD_METRICS_PORT="0",
            **extra,
        )

    def _log_path(self, what: str) -> Path:
        self._logs += 1
        return self.root / f"{self._logs:02d}-{what}.log"

    def start_api(self) -> None:
        """Start ``jobyard api`` on a free port and wait for /healthz."""
        port = free_port()
        self.api = Role(["api", "--port", str(port)], self.env(), self._log_path("api"))
        self.api_url = f"http://127.0.0.1:{port}"
        api = self.api

        def up() -> bool:
            if not api.alive():
                raise RuntimeError(f"the API exited early:\n{api.output()[-3000:]}")
            try:
                return httpx.get(self.api_url + "/healthz", timeout=1.0).status_code == 200
            except httpx.TransportError:
                return False

        try:
            wait_until(up, timeout=30, what="the API to answer /healthz")
        except AssertionError as exc:
            raise RuntimeError(f"{exc}; its log ends:\n{api.output()[-2000:]}") from exc

    def start_worker(self, concurrency: int = 2, **extra: str) -> Role:
        """Start ``jobyard worker --concurrency N`` and wait until it has registered."""
        role = Role(
            ["worker", "--concurrency", str(concurrency)], self.env(**extra), self._log_path("worker")
        )
        self.workers.append(role)

        def registered() -> bool:
            if not role.alive():
                raise RuntimeError(f"a worker exited early:\n{role.output()[-3000:]}")
            return self.worker_id_of(role.pid) is not None

        wait_until(registered, timeout=30, what=f"worker pid {role.pid} to register")
        return role

    def worker_id_of(self, pid: int) -> str | None:
        """The broker id a worker process registered under, or None."""
        for raw in self.client.zrange(KEYS.workers, 0, -1):
            wid = raw.decode()
            if self.client.hget(KEYS.worker(wid), "pid") == str(pid).encode():
                return wid
        return None

    def stop_worker(self, role: Role) -> None:
        """Stop one worker (SIGTERM, then SIGKILL of its group)."""
        role.stop(timeout=15)
        if role in self.workers:
            self.workers.remove(role)

    def kill_worker(self, role: Role) -> list[psutil.Process]:
        """SIGKILL a worker; returns the script processes it leaves behind (for ``reap``)."""
        try:
            children = psutil.Process(role.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        role.signal(signal.SIGKILL)
        role.proc.wait(10)
        role.log_file.close()
        if role in self.workers:
            self.workers.remove(role)
        return children

    @staticmethod
    def reap(procs: list[psutil.Process]) -> None:
        """Kill processes a killed worker left behind (psutil checks they are still the same ones)."""
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(procs, timeout=5)

    def close(self) -> None:
        """Stop every role, then Redis."""
        if self._http is not None:
            self._http.close()
            self._http = None
        for role in list(self.workers):
            self.stop_worker(role)
        if self.api is not None:
            self.api.stop(timeout=15)
            self.api = None
        if self.r is not None:
            self.r.close()
            self.r = None
        self.redis.stop()

    def pids(self) -> dict[str, int]:
        """Role name -> pid, for CPU accounting and profiling."""
        out: dict[str, int] = {}
        if self.redis.proc is not None:
            out["redis"] = self.redis.proc.pid
        if self.api is not None:
            out["api"] = self.api.pid
        for i, w in enumerate(self.workers):
            out["worker" if i == 0 else f"worker{i}"] = w.pid
        out["bench"] = os.getpid()
        return out

    # -- HTTP -------------------------------------------------------------------------------------
    @property
    def http(self) -> httpx.Client:
        """A keep-alive client on the API with the admin token."""
        if self._http is None:
            self._http = httpx.Client(
                base_url=self.api_url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30.0
            )
        return self._http

    def deploy(self, name: str, script: str, filename: str = "run.sh", **job_settings: Any) -> None:
        """Deploy ``script`` as job ``name`` (PUT ?filename=...) and set its settings.job."""
        res = self.http.put(
            f"/api/jobs/{name}",
            params={"filename": filename},
            content=script.encode(),
            headers={"Content-Type": "application/octet-stream"},
        )
        if res.status_code not in (200, 201):
            raise RuntimeError(f"deploying {name} failed: {res.status_code} {res.text}")
        settings = {"history_size": HISTORY, **job_settings}
        res = self.http.put(
            f"/api/jobs/{name}/settings",
            content=json.dumps(settings).encode(),
            headers={"Content-Type": "application/json"},
        )
        if res.status_code != 200:
            raise RuntimeError(f"settings of {name} refused: {res.status_code} {res.text}")

    def enqueue(self, job: str, body: dict[str, Any] | None = None) -> str:
        """POST one run; returns its id."""
        res = self.http.post(f"/api/jobs/{job}/runs", json=body or {})
        if res.status_code != 202:
            raise RuntimeError(f"enqueue of {job} failed: {res.status_code} {res.text}")
        return str(res.json()["id"])

    def enqueue_batch(self, items: list[dict[str, Any]]) -> list[str]:
        """POST one batch; returns the run ids in order."""
        res = self.http.post("/api/runs/batch", json={"runs": items})
        if res.status_code != 202:
            raise RuntimeError(f"batch enqueue failed: {res.status_code} {res.text[:500]}")
        return [str(r["id"]) for r in res.json()["runs"]]

    # -- Redis reads --------------------------------------------------------------------------
    def run(self, run_id: str) -> Run | None:
        """The run record straight from Redis (None when missing)."""
        data = self.client.hgetall(KEYS.run(run_id))
        return Run.from_hash(data) if data else None

    def runs(self, run_ids: list[str]) -> list[Run | None]:
        """Many run records in one pipeline."""
        pipe = self.client.pipeline(transaction=False)
        for rid in run_ids:
            pipe.hgetall(KEYS.run(rid))
        return [Run.from_hash(d) if d else None for d in pipe.execute()]

    def log_lengths(self, run_ids: list[str]) -> list[int]:
        """Stored log entries per run."""
        pipe = self.client.pipeline(transaction=False)
        for rid in run_ids:
            pipe.xlen(KEYS.run_log(rid))
        return [int(n) for n in pipe.execute()]

    def command_stats(self) -> dict[str, tuple[int, int]]:
        """Redis command -> (calls, server microseconds) since the server started."""
        stats = self.client.info("commandstats")
        return {k.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for k, v in stats.items()}

    def slowlog_begin(self) -> None:
        """Log every top-level command with its duration (a script call is one entry)."""
        self.client.config_set("slowlog-max-len", 1_000_000)
        self.client.config_set("slowlog-log-slower-than", 0)
        self.client.slowlog_reset()

    def slowlog_end(self) -> dict[str, list[int]]:
        """Command (a script by its name) -> [calls, microseconds] since ``slowlog_begin``; logging off."""
        entries = self.client.slowlog_get(-1)
        self.client.config_set("slowlog-log-slower-than", 10_000)
        self.client.slowlog_reset()
        names = {hashlib.sha1(source(n).encode()).hexdigest(): n for n in SCRIPT_NAMES}
        for name, text in dramatiq_scripts.items():  # bytes or str, depending on the version
            raw = text if isinstance(text, bytes) else text.encode()
            names[hashlib.sha1(raw).hexdigest()] = f"dramatiq {name}"
        out: dict[str, list[int]] = {}
        for entry in entries:
            words = entry["command"].split()
            if not words:
                continue
            name = words[0].decode(errors="replace").lower()
            if name == "script" and len(words) > 1:
                name = "SCRIPT " + words[1].decode(errors="replace").upper()  # e.g. redis-py's EXISTS check
            elif name == "evalsha" and len(words) > 1:
                sha = words[1].decode(errors="replace")
                name = "script " + names.get(sha, sha[:8])
            acc = out.setdefault(name, [0, 0])
            acc[0] += 1
            acc[1] += int(entry["duration"])
        return out

    def active(self, job: str) -> int:
        """Runs of ``job`` queued, running or retrying."""
        return int(self.client.scard(KEYS.job_active(job)))

    def wait_idle(self, job: str, timeout_s: float) -> bool:
        """Wait until no run of ``job`` is active; False when ``timeout_s`` passed first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.active(job) == 0:
                return True
            time.sleep(0.02)
        return False


class CpuMeter:
    """CPU seconds used by each process between ``start`` and ``stop`` (children waited for included)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.before: dict[str, float] = {}

    @staticmethod
    def _cpu(proc: psutil.Process) -> float:
        t = proc.cpu_times()
        return float(t.user + t.system + t.children_user + t.children_system)

    def start(self) -> CpuMeter:
        self.before = {n: self._cpu(p) for n, p in self.procs.items()}
        return self

    def stop(self) -> dict[str, float]:
        """CPU seconds per process since ``start``."""
        out: dict[str, float] = {}
        for name, proc in self.procs.items():
            with contextlib.suppress(psutil.Error):
                out[name] = self._cpu(proc) - self.before.get(name, 0.0)
        return out
