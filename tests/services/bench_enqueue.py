"""Enqueue throughput through the HTTP API (a benchmark, not a test).

    python -m tests.services.bench_enqueue [--seconds 3] [--processes 2] [--concurrency 4]

Starts a private redis-server and ``jobyard api`` on free loopback ports, writes a job record,
then drives ``POST /api/jobs/{name}/runs`` from asyncio httpx clients (``--processes`` client
processes with ``--concurrency`` requests in flight each) for ``--seconds``, and the batch route
with 1,000 runs a request. Prints runs/s and the API process's CPU time per run. httpx itself
costs about as much CPU per request as the API, so on a small box one client process cannot
saturate the server; ``--processes`` spreads the client side.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from jobyard import tokens
from jobyard.keys import Keys
from tests.helpers import RedisServer
from tests.services.conftest import ADMIN_TOKEN, put_job, start_api_process

JOB = "bench"


async def _single(url: str, seconds: float, concurrency: int) -> tuple[int, float, float]:
    """(runs, seconds taken, client CPU seconds) of one client process."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=10) as client:
        await client.get("/healthz")  # connect before the clock starts
        done = 0
        started, cpu = time.perf_counter(), time.process_time()
        deadline = started + seconds

        async def loop() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                response = await client.post(f"/api/jobs/{JOB}/runs", json={"arguments": ["x"]})
                if response.status_code != 202:
                    raise RuntimeError(f"enqueue failed: {response.status_code} {response.text}")
                done += 1

        await asyncio.gather(*(loop() for _ in range(concurrency)))
        return done, time.perf_counter() - started, time.process_time() - cpu


def _client_process(
    url: str, seconds: float, concurrency: int, out: multiprocessing.Queue[tuple[int, float, float]]
) -> None:
    out.put(asyncio.run(_single(url, seconds, concurrency)))


def single_rate(url: str, seconds: float, processes: int, concurrency: int) -> tuple[float, float]:
    """Single enqueues per second from ``processes`` client processes, and client CPU s per run."""
    out: multiprocessing.Queue[tuple[int, float, float]] = multiprocessing.Queue()
    procs = [
        multiprocessing.Process(target=_client_process, args=(url, seconds, concurrency, out))
        for _ in range(processes)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 60) for _ in procs]
    for p in procs:
        p.join(30)
    runs = sum(n for n, _, _ in results)
    return sum(n / elapsed for n, elapsed, _ in results), sum(c for _, _, c in results) / max(runs, 1)


async def _raw(port: int, seconds: float, concurrency: int) -> int:
    """Enqueues over bare keep-alive HTTP/1.1 connections: the server's capacity, not httpx's."""
    body = b'{"arguments": ["x"]}'
    request = (
        f"POST /api/jobs/{JOB}/runs HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    deadline = time.perf_counter() + seconds
    done = 0

    async def loop() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < deadline:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 202"):
                    raise RuntimeError(f"enqueue failed: {head[:100]!r}")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                await reader.readexactly(length)
                done += 1
        finally:
            writer.close()

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return done


def batch_rate(url: str, seconds: float, size: int = 1000) -> float:
    """Runs per second through ``POST /api/runs/batch`` with ``size`` runs a request."""
    body = {"runs": [{"job": JOB, "arguments": ["x"]}] * size}
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        done = 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            response = client.post("/api/runs/batch", json=body)
            if response.status_code != 202:
                raise RuntimeError(f"batch failed: {response.status_code} {response.text[:200]}")
            done += size
        return done / (time.perf_counter() - started)


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="jobyard-bench-") as tmp:
        base = Path(tmp)
        server = RedisServer(base / "redis")
        server.start()
        try:
            (base / "data").mkdir()
            api = start_api_process(server.url, base / "data", base / "api.log")
            try:
                client = server.client()
                put_job(client, JOB)
                tokens.create_token(client, Keys(), "operator", "bench")
                proc = psutil.Process(api.role.pid)
                cpu0 = proc.cpu_times()
                rate, client_cpu_s = single_rate(api.url, args.seconds, args.processes, args.concurrency)
                cpu1 = proc.cpu_times()
                runs = client.zcard(Keys().job_runs(JOB))
                cpu_per_run_us = ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / max(runs, 1) * 1e6
                print(
                    f"single enqueue: {rate:,.0f} runs/s ({args.processes} httpx processes x "
                    f"{args.concurrency} in flight, {args.seconds:g} s); CPU per run: API "
                    f"{cpu_per_run_us:.0f} us, httpx client {client_cpu_s * 1e6:.0f} us"
                )
                client.flushall()
                put_job(client, JOB)
                port = int(api.url.rsplit(":", 1)[1])
                cpu0 = proc.cpu_times()
                started = time.perf_counter()
                raw = asyncio.run(_raw(port, args.seconds, 16)) / (time.perf_counter() - started)
                cpu1 = proc.cpu_times()
                cpu_per_run_us = (
                    ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / max(raw * args.seconds, 1) * 1e6
                )
                print(
                    f"single enqueue: {raw:,.0f} runs/s (bare HTTP/1.1 client, 16 connections); "
                    f"API CPU {cpu_per_run_us:.0f} us/run"
                )
                client.flushall()
                put_job(client, JOB)
                print(
                    f"batch enqueue:  {batch_rate(api.url, args.seconds):,.0f} runs/s (1,000 runs a request)"
                )
                client.close()
            finally:
                api.role.stop()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
