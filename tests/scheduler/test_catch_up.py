"""In-process replicas on a real Redis: catch-up policies, the window, fencing, clean release."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from jobyard.settings import Settings
from scheduler.service import Scheduler
from tests.helpers import wait_until
from tests.scheduler.conftest import KEYS, check_exactly_once, deploy, fire_stats, runs_of, settings_for


@pytest.fixture
def make(redis_url: str, data_dir: Path) -> Iterator[Any]:
    """Build in-process schedulers on their own clients (closed at the end)."""
    clients: list[redis.Redis] = []

    def build(**kw: Any) -> Scheduler:
        settings: Settings = settings_for(redis_url, data_dir, **kw)
        client = redis.Redis.from_url(redis_url)
        clients.append(client)
        return Scheduler(settings, client, instance_id=f"test{len(clients)}")

    yield build
    for client in clients:
        client.close()


def late(run: Any) -> float:
    return float(run.enqueued_at - run.scheduled_for)


@pytest.mark.parametrize("policy", ["none", "latest", "all"])
def test_missed_fires_follow_the_catch_up_policy(
    r: redis.Redis, data_dir: Path, make: Any, policy: str
) -> None:
    # given: a job every second whose last recorded fire is 10 s ago (no leader since)
    deploy(r, data_dir, "tick", {"schedule": "* * * * * *", "overlap": "allow", "catch_up": policy})
    last = math.floor(time.time()) - 10
    r.set(KEYS.job_last_fire("tick"), last)
    scheduler = make()
    # when: a new leader takes over
    scheduler.step()
    assert scheduler.election.leader
    # then
    runs = runs_of(r, "tick")
    caught = sorted(run.scheduled_for for run in runs if late(run) >= 1.0)
    skipped = fire_stats(r, "tick").get("skipped_missed", 0)
    missed = len(caught) + skipped
    assert 8 <= missed <= 10, (caught, skipped)
    if policy == "none":
        assert caught == []
    elif policy == "latest":
        assert caught == [last + missed]  # the most recent missed time, once
    else:
        assert caught == [last + i for i in range(1, missed + 1)] and skipped == 0
    assert scheduler.stats.snapshot()["catch_ups"] == 1
    check_exactly_once(r, "tick")


def test_catch_up_all_is_bounded_by_the_window(r: redis.Redis, data_dir: Path, make: Any) -> None:
    deploy(r, data_dir, "tick", {"schedule": "* * * * * *", "overlap": "allow", "catch_up": "all"})
    r.set(KEYS.job_last_fire("tick"), math.floor(time.time()) - 3600)
    before = time.time()
    scheduler = make(catch_up_window_seconds=5)
    scheduler.step()
    caught = [run.scheduled_for for run in runs_of(r, "tick") if late(run) >= 1.0]
    assert 3 <= len(caught) <= 5, caught
    assert min(caught) > before - 6
    # Fire times before the window are neither fired nor counted.
    assert fire_stats(r, "tick").get("skipped_missed", 0) == 0


def test_a_new_schedule_never_fires_the_past(r: redis.Redis, data_dir: Path, make: Any) -> None:
    deployed = time.time()
    deploy(r, data_dir, "tick", {"schedule": "* * * * * *", "overlap": "allow"})
    scheduler = make()
    wait_until(lambda: (scheduler.step(), r.zcard(KEYS.job_runs("tick")) >= 2)[1], timeout=5)
    assert all((run.scheduled_for or 0) > deployed - 1 for run in runs_of(r, "tick"))


def test_a_stale_leader_is_fenced_and_steps_down(r: redis.Redis, data_dir: Path, make: Any) -> None:
    deploy(r, data_dir, "tick", {"schedule": "* * * * * *", "overlap": "allow"})
    # A renews rarely, so that its next act is a fire, not a renewal.
    a = make(leader_lease_ttl_seconds=30, leader_renew_interval_seconds=20)
    b = make()
    a.step()
    assert a.election.leader and a.election.term == 1
    wait_until(lambda: (a.step(), r.zcard(KEYS.job_runs("tick")) >= 1)[1], timeout=5)
    # when: A's lease ends behind its back (frozen past its ttl) and B takes over
    r.delete(KEYS.leader)
    b.step()
    assert b.election.leader and b.election.term == 2
    assert a.election.held  # A still believes it is leader...
    # then: ...until its next fire, which Redis refuses: A steps down at once
    wait_until(lambda: (a.step(), not a.election.leader)[1], timeout=5, what="A to be fenced")
    assert a.stats.snapshot()["fenced"] == 1
    for _ in range(3):
        b.step()
    check_exactly_once(r, "tick")
    assert fire_stats(r, "tick").get("fenced") == 1


def test_clean_stop_releases_the_lease(r: redis.Redis, data_dir: Path, make: Any) -> None:
    a, b = make(), make()
    a.step()
    assert a.election.leader and r.hget(KEYS.leader_info, "instance") == b"test1"
    a.stop()
    assert a.run() == 0  # stop() before run(): one turn, then the release
    assert r.get(KEYS.leader) is None
    b.step()
    assert b.election.leader and b.election.term == 2
    assert r.hget(KEYS.leader_info, "term") == b"2"


def test_readiness(r: redis.Redis, data_dir: Path, make: Any) -> None:
    a, b = make(), make()
    assert not a.is_ready() and not b.is_ready()
    a.step()
    b.step()
    assert a.is_ready() and a.election.leader
    assert b.is_ready() and not b.election.leader  # a standby that sees a live leader
