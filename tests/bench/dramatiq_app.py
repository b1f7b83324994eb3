"""The bare-dramatiq peer of section (b), loaded by the ``dramatiq`` CLI: one actor running ``sh -c true``.

Each call records "<i> <started> <ended>" (epoch seconds) on a Redis list in one round trip at
the end, so the bench reads throughput and enqueue-to-start latency without touching the actor's
timing. The broker URL comes from ``BENCH_DRAMATIQ_REDIS_URL`` (the bench's private Redis).
"""

from __future__ import annotations

import os
import subprocess
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker

NAMESPACE = "bench-dramatiq"
QUEUE = "bench"
DONE_LIST = "bench-dramatiq:done"

broker = RedisBroker(url=os.environ.get("BENCH_DRAMATIQ_REDIS_URL", ""), namespace=NAMESPACE)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def spawn(i: int) -> None:
    """Run ``sh -c true`` and record when this call started and ended."""
    started = time.time()
    subprocess.run(("sh", "-c", "true"), check=False)
    broker.client.rpush(DONE_LIST, f"{i} {started:.6f} {time.time():.6f}")
