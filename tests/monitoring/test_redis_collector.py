"""The cluster gauges read from Redis at scrape time, and how they behave when Redis is away."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest

from jobyard.keys import Keys
from jobyard.metrics import RedisStateCollector, read_cluster_state, scrape_client
from tests.helpers import free_port
from tests.monitoring.conftest import promtool_check_metrics

KEYS = Keys("jobyard")
HEARTBEAT_TIMEOUT_S = 15.0


def registry_for(client: redis.Redis) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(RedisStateCollector(client, KEYS, HEARTBEAT_TIMEOUT_S))
    return registry


def populate(r: redis.Redis) -> None:
    """A cluster: 2 high, 5 normal, 0 low, 3 delayed, 4 dead letters, 2 live workers and 1 gone."""
    now_ms = int(time.time() * 1000)
    r.rpush(KEYS.queue("high"), "h1", "h2")
    r.rpush(KEYS.queue("normal"), *[f"n{i}" for i in range(5)])
    r.zadd(KEYS.delayed, {"normal|d1": now_ms + 60_000, "low|d2": now_ms + 1, "high|d3": now_ms + 5})
    r.zadd(KEYS.dead_letters, {f"run{i}": now_ms for i in range(4)})
    r.zadd(KEYS.workers, {"w1": now_ms - 1000, "w2": now_ms, "w-gone": now_ms - 60_000})
    r.hset(KEYS.worker("w1"), mapping={"slots": 4, "busy": 1, "host": "a"})
    r.hset(KEYS.worker("w2"), mapping={"slots": 8, "busy": 8, "host": "b"})
    r.hset(KEYS.worker("w-gone"), mapping={"slots": 100, "busy": 100, "host": "c"})
    r.set(KEYS.leader, "sched-1|7", px=5000)
    r.set(KEYS.leader_term, 7)


def test_reads_the_cluster_state(r: redis.Redis) -> None:
    populate(r)
    state = read_cluster_state(r, KEYS, HEARTBEAT_TIMEOUT_S)
    assert state.depths == {"high": 2, "normal": 5, "low": 0, "delayed": 3}
    assert state.dead_letters == 4
    assert sorted(state.worker_ids) == ["w1", "w2"]  # w-gone's heartbeat is too old
    assert (state.workers_alive, state.slots_busy, state.slots_total) == (2, 9, 12)
    assert state.leader_present and state.term == 7


def test_an_empty_cluster_reads_as_zeros(r: redis.Redis) -> None:
    state = read_cluster_state(r, KEYS, HEARTBEAT_TIMEOUT_S)
    assert state.depths == {"high": 0, "normal": 0, "low": 0, "delayed": 0}
    assert (state.dead_letters, state.workers_alive, state.slots_total, state.term) == (0, 0, 0, 0)
    assert not state.leader_present


def test_collector_exposes_the_gauges(r: redis.Redis, promtool: str) -> None:
    populate(r)
    registry = registry_for(r)
    get = registry.get_sample_value
    assert get("jobyard_redis_up") == 1
    assert get("jobyard_queue_depth", {"priority": "normal"}) == 5
    assert get("jobyard_queue_depth", {"priority": "low"}) == 0
    assert get("jobyard_queue_depth", {"priority": "delayed"}) == 3
    assert get("jobyard_dead_letters_current") == 4
    assert get("jobyard_workers_alive") == 2
    assert get("jobyard_cluster_worker_slots", {"state": "busy"}) == 9
    assert get("jobyard_cluster_worker_slots", {"state": "total"}) == 12
    assert get("jobyard_scheduler_lease_present") == 1
    assert get("jobyard_scheduler_term") == 7
    promtool_check_metrics(promtool, generate_latest(registry))


def test_registering_does_not_read_redis() -> None:
    # describe() answers without a call: a dead address must not matter at registration
    client = redis.Redis(port=free_port(), socket_connect_timeout=0.2)
    registry = CollectorRegistry(auto_describe=True)
    registry.register(RedisStateCollector(client, KEYS, HEARTBEAT_TIMEOUT_S))
    client.close()


def test_redis_down_gives_redis_up_0_and_no_gauges() -> None:
    client = scrape_client(redis.Redis(port=free_port()), timeout_s=0.5)
    registry = registry_for(client)
    start = time.monotonic()
    text = generate_latest(registry).decode()
    assert time.monotonic() - start < 2.0
    assert "jobyard_redis_up 0.0" in text
    assert "jobyard_queue_depth" not in text
    client.close()


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung or partitioned Redis)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


def test_a_hung_redis_fails_the_scrape_fast_not_never(black_hole: int) -> None:
    client = scrape_client(redis.Redis(port=black_hole), timeout_s=0.5)
    registry = registry_for(client)
    start = time.monotonic()
    assert registry.get_sample_value("jobyard_redis_up") == 0
    # one attempt, no retries: about the socket timeout, far below Prometheus's 10 s scrape timeout
    assert time.monotonic() - start < 2.0
    client.close()


def test_recovers_when_redis_is_back(redis_url: str) -> None:
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    dead = scrape_client(redis.Redis(port=free_port()), timeout_s=0.5)
    collector = RedisStateCollector(dead, KEYS, HEARTBEAT_TIMEOUT_S)
    assert [m.samples[0].value for m in collector.collect()] == [0]
    collector.client = scrape_client(redis.Redis(port=port), timeout_s=0.5)
    names = [m.name for m in collector.collect()]
    assert names[0] == "jobyard_redis_up" and "jobyard_queue_depth" in names
    dead.close()
    collector.client.close()
