"""``GET /metrics``: this process's metrics plus the cluster-wide gauges read from Redis.

No token (Prometheus scrapes it; keep the API port off the internet, or put the scrape behind
a proxy). The cluster gauges (queue depths, dead letters, live workers, slots, scheduler lease)
are served here only, by the API, so summing over targets never multiplies them by the number
of workers.

prometheus-client collects synchronously, so the Redis collector has its own small synchronous
client with a 1 s timeout and no retries, and the endpoint is a plain ``def`` that FastAPI runs
in its thread pool, off the event loop. A Redis outage yields ``jobyard_redis_up 0`` and no
cluster gauges, never a 500: the process metrics are still worth scraping.
"""

from __future__ import annotations

import threading

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from jobyard.metrics import RedisStateCollector, exposition, scrape_client
from jobyard.redis_conn import connect
from services.deps import Ctx, get_ctx

router = APIRouter(tags=["monitoring"])

SCRAPE_TIMEOUT_S = 1.0
_EXTRA_KEY = "metrics.redis_collector"
_create_lock = threading.Lock()


def redis_collector(ctx: Ctx) -> RedisStateCollector:
    """The app's Redis collector, created on the first scrape."""
    collector = ctx.extra.get(_EXTRA_KEY)
    if collector is None:
        with _create_lock:
            collector = ctx.extra.get(_EXTRA_KEY)
            if collector is None:
                client = scrape_client(
                    connect(ctx.settings, socket_timeout=SCRAPE_TIMEOUT_S), SCRAPE_TIMEOUT_S
                )
                collector = RedisStateCollector(client, ctx.keys, ctx.settings.heartbeat_timeout_seconds)
                ctx.extra[_EXTRA_KEY] = collector
    assert isinstance(collector, RedisStateCollector)
    return collector


@router.get(
    "/metrics",
    operation_id="metrics",
    summary="Prometheus metrics of the API process and of the cluster (no token)",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition"}},
)
def metrics(request: Request, ctx: Ctx = Depends(get_ctx)) -> Response:
    """The registry and the Redis gauges, in the format the scraper's ``Accept`` asks for."""
    body, content_type = exposition(request.headers.get("accept"), redis_collector(ctx))
    return Response(content=body, media_type=content_type)
