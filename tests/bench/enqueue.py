"""Section (d): how fast the API accepts runs, single requests and the batch route.

The load generator is ``wrk`` when it is on PATH (Debian package ``wrk``), else a pure-Python
asyncio httpx client. Either way the same client is also run against ``GET /healthz``, which
does no work, so the table shows how much of the ceiling is the client's own cost. Runs created
are counted in Redis (the job's history), not taken from the client's word.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from jobyard.keys import Keys
from tests.bench.cluster import Cluster, CpuMeter
from tests.bench.report import percentile

KEYS = Keys()


@dataclass
class Load:
    """What one load run measured."""

    client: str
    requests: int
    ok: int
    elapsed_s: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s else 0.0


def have_wrk() -> bool:
    """Whether the wrk load generator is installed."""
    return shutil.which("wrk") is not None


# -- wrk ------------------------------------------------------------------------------------------
_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _wrk_ms(text: str) -> float | None:
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text.strip())
    return float(m.group(1)) * _WRK_UNITS[m.group(2)] if m else None


def parse_wrk(out: str) -> Load:
    """Read wrk's summary (requests, duration, non-2xx count, socket errors, latency percentiles)."""
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m),", out)
    if not m:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    requests = int(m.group(1))
    elapsed = float(m.group(2)) * _WRK_UNITS[m.group(3)] / 1000
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    return Load(
        client="wrk",
        requests=requests,
        ok=requests - (int(bad.group(1)) if bad else 0),
        elapsed_s=elapsed,
        p50_ms=_wrk_ms(p50.group(1)) if p50 else None,
        p99_ms=_wrk_ms(p99.group(1)) if p99 else None,
        errors=(sock.group(1) if sock else "") + (f"; {bad.group(1)} non-2xx" if bad else ""),
    )


def _lua_string(text: str) -> str:
    return "[==[" + text + "]==]"


def run_wrk(
    url: str,
    path: str,
    *,
    method: str,
    body: bytes | None,
    token: str,
    connections: int,
    duration_s: float,
    tmp: Path,
) -> Load:
    """One wrk run (1 thread, so the client leaves the other core to the API and Redis)."""
    script = tmp / f"wrk-{abs(hash((path, method, connections)))}.lua"
    lines = [f"wrk.method = {_lua_string(method)}", f'wrk.headers["Authorization"] = "Bearer {token}"']
    if body is not None:
        lines += [
            f"wrk.body = {_lua_string(body.decode())}",
            'wrk.headers["Content-Type"] = "application/json"',
        ]
    script.write_text("\n".join(lines) + "\n")
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration_s))}s", "--timeout", "10s"]
    argv += ["--latency", "-s", str(script), url + path]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


# -- pure Python ----------------------------------------------------------------------------------
async def _python_load(
    url: str, path: str, method: str, body: bytes | None, token: str, connections: int, duration_s: float
) -> Load:
    headers = {"Authorization": f"Bearer {token}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    latencies: list[float] = []
    counts = {"ok": 0, "bad": 0, "error": 0}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=30.0) as client:
        deadline = time.perf_counter() + duration_s

        async def user() -> None:
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                try:
                    res = await client.request(method, path, content=body)
                except httpx.HTTPError:
                    counts["error"] += 1
                    continue
                latencies.append(time.perf_counter() - t)
                counts["ok" if res.status_code < 300 else "bad"] += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(connections)))
        elapsed = time.perf_counter() - t0
    return Load(
        client="python-httpx",
        requests=sum(counts.values()),
        ok=counts["ok"],
        elapsed_s=elapsed,
        p50_ms=(percentile(latencies, 0.5) or 0) * 1000 if latencies else None,
        p99_ms=(percentile(latencies, 0.99) or 0) * 1000 if latencies else None,
        errors=f"{counts['bad']} non-2xx, {counts['error']} transport errors"
        if counts["bad"] + counts["error"]
        else "",
    )


def run_python(
    url: str,
    path: str,
    *,
    method: str,
    body: bytes | None,
    token: str,
    connections: int,
    duration_s: float,
    tmp: Path,
) -> Load:
    """One run of the asyncio httpx client (uvloop when installed)."""
    coro = _python_load(url, path, method, body, token, connections, duration_s)
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


# -- the section ----------------------------------------------------------------------------------
def enqueue_rates(
    cluster: Cluster, job: str, client: str, duration_s: float, tmp: Path, connections: int = 32
) -> dict[str, Any]:
    """healthz baseline, single enqueue and batch enqueue, with the runs counted in Redis."""
    load = run_wrk if client == "wrk" else run_python
    common = {"token": cluster.token, "duration_s": duration_s, "tmp": tmp}
    out: dict[str, Any] = {"client": client, "connections": connections, "duration_s": duration_s}

    def runs_now() -> int:
        return int(cluster.client.zcard(KEYS.job_runs(job)))

    out["healthz"] = load(
        cluster.api_url, "/healthz", method="GET", body=None, connections=connections, **common
    )
    before = runs_now()
    meter = CpuMeter({k: v for k, v in cluster.pids().items() if k in ("api", "redis")}).start()
    single = load(
        cluster.api_url, f"/api/jobs/{job}/runs", method="POST", body=b"{}", connections=connections, **common
    )
    cpu = meter.stop()
    single.extra["created"] = runs_now() - before
    single.extra["cpu_ms_per_run"] = {k: 1000 * v / max(1, single.extra["created"]) for k, v in cpu.items()}
    single.extra["cpu_share"] = {k: v / single.elapsed_s for k, v in cpu.items()}
    out["single"] = single
    batch_body = json.dumps({"runs": [{"job": job}] * 1000}, separators=(",", ":")).encode()
    before = runs_now()
    meter.start()
    batch = load(cluster.api_url, "/api/runs/batch", method="POST", body=batch_body, connections=2, **common)
    cpu = meter.stop()
    batch.extra["created"] = runs_now() - before
    batch.extra["cpu_ms_per_run"] = {k: 1000 * v / max(1, batch.extra["created"]) for k, v in cpu.items()}
    batch.extra["cpu_share"] = {k: v / batch.elapsed_s for k, v in cpu.items()}
    out["batch"] = batch
    return out
