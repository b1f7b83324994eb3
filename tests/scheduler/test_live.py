"""A running scheduler replica: overlap, live schedule changes, and pause/resume through the API."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import redis

from jobyard import tokens
from jobyard.deploy import delete_job, update_settings
from jobyard.models import Job
from tests.helpers import free_port, wait_until
from tests.scheduler.conftest import (
    KEYS,
    Replicas,
    check_exactly_once,
    deploy,
    fire_stats,
    runs_of,
    settings_for,
    wait_runs,
)
from tests.services.conftest import start_api_process

YEARLY = "0 0 0 1 1 *"


def one_leader(replicas: Callable[..., Replicas], r: redis.Redis) -> Replicas:
    group = replicas()
    group.start(1)
    group.wait_leader(r)
    return group


def holds_for(predicate: Callable[[], bool], duration_s: float, what: str) -> None:
    """Assert ``predicate`` stays true for ``duration_s`` (an observation, polled)."""
    end = time.monotonic() + duration_s
    while time.monotonic() < end:
        assert predicate(), what
        time.sleep(0.05)


def test_overlap_skip_records_the_skipped_fires(
    r: redis.Redis, data_dir: Path, replicas: Callable[..., Replicas]
) -> None:
    # given: a run of the job still going (nobody works the queue in this test)
    deploy(r, data_dir, "busy", {"schedule": "* * * * * *", "overlap": "skip"})
    deploy(r, data_dir, "queued", {"schedule": "* * * * * *", "overlap": "queue"})
    for job in ("busy", "queued"):
        r.sadd(KEYS.job_active(job), "01RUNNINGRUN")
    one_leader(replicas, r)
    # then: skip records each fire as skipped and runs nothing; queue fires anyway
    wait_until(lambda: fire_stats(r, "busy").get("skipped_overlap", 0) >= 3, timeout=10, what="3 skips")
    assert runs_of(r, "busy") == []
    records = [r.get(k) for k in r.scan_iter(match=f"{KEYS.prefix}:fire:busy:*")]
    assert len(records) >= 3 and set(records) == {b"skipped:01RUNNINGRUN"}
    assert len(wait_runs(r, "queued", 3)) >= 3
    # when: the long run ends, the next fire starts one, which then holds back the following ones
    r.srem(KEYS.job_active("busy"), "01RUNNINGRUN")
    first = wait_runs(r, "busy", 1)[0]
    skips = fire_stats(r, "busy")["skipped_overlap"]
    wait_until(lambda: fire_stats(r, "busy")["skipped_overlap"] >= skips + 2, timeout=10, what="more skips")
    assert [run.id for run in runs_of(r, "busy")] == [first.id]
    assert r.get(KEYS.fire("busy", first.scheduled_for or 0)) == first.id.encode()


def test_settings_change_applies_within_a_second(
    r: redis.Redis, data_dir: Path, replicas: Callable[..., Replicas]
) -> None:
    settings = settings_for("redis://unused", data_dir)
    deploy(r, data_dir, "tick", {"schedule": YEARLY, "overlap": "allow"})
    group = one_leader(replicas, r)
    wait_until(lambda: "job tick: schedule" in group.roles[0].output(), timeout=5, what="the schedule loaded")
    # when: the settings change through the deploy path (version raised, change message published)
    changed = time.time()
    update_settings(r, KEYS, settings, "tick", {"schedule": "* * * * * *", "overlap": "allow"})
    first = wait_runs(r, "tick", 1, timeout=5)[0]
    # then: the first whole second after the change fires (never one before it)
    assert changed < (first.scheduled_for or 0) <= math.ceil(changed) + 1, (changed, first.scheduled_for)
    # when: a record is changed without a message: the version poll finds it within a second
    job = Job.from_hash(r.hgetall(KEYS.job("tick")))
    job.settings = {"schedule": YEARLY, "overlap": "allow"}
    job.version += 1
    r.hset(KEYS.job("tick"), mapping=job.to_hash())
    quiet_from = time.time() + 2.0  # poll interval + the fire in progress
    count = r.zcard(KEYS.job_runs("tick"))
    wait_until(lambda: time.time() > quiet_from + 1.5, timeout=5)
    late = [run for run in runs_of(r, "tick") if (run.scheduled_for or 0) > quiet_from]
    assert late == [], late
    assert r.zcard(KEYS.job_runs("tick")) <= count + 2
    check_exactly_once(r, "tick")
    # when: the job is deleted, its schedule goes with it
    delete_job(r, KEYS, "tick")
    wait_until(lambda: "job tick: schedule removed" in group.roles[0].output(), timeout=2, what="removal")


def test_pause_and_resume_through_the_api(
    r: redis.Redis, redis_url: str, data_dir: Path, tmp_path: Path, replicas: Callable[..., Replicas]
) -> None:
    api_data = tmp_path / "api-data"
    api_data.mkdir()
    api = start_api_process(redis_url, api_data, tmp_path / "api.log")
    try:
        berlin = {"schedule": "* * * * * *", "overlap": "allow", "timezone": "Europe/Berlin"}
        deploy(r, data_dir, "tick", berlin)
        deploy(r, data_dir, "plain", {})
        group = one_leader(replicas, r)
        wait_runs(r, "tick", 1)
        viewer = tokens.create_token(r, KEYS, "viewer", "test viewer")[0]
        with api.client() as http, api.client(viewer) as view:
            # listing (viewer may read)
            listed = view.get("/api/schedules")
            assert listed.status_code == 200, listed.text
            items = {item["job"]: item for item in listed.json()["schedules"]}
            assert set(items) == {"tick"}
            item = items["tick"]
            assert item["expr"] == "* * * * * *" and item["timezone"] == "Europe/Berlin"
            assert item["description"] == "Every second (Europe/Berlin)"
            assert len(item["next_fire_times"]) == 5 and item["next_fire_time"] == item["next_fire_times"][0]
            assert item["last_fire"] and item["paused"] is False and item["stats"]["fired"] >= 1
            # a viewer may not pause; unknown jobs and jobs without a schedule are refused
            assert view.post("/api/schedules/tick/pause").status_code == 403
            assert http.post("/api/schedules/nosuchjob/pause").status_code == 404
            assert http.post("/api/schedules/plain/pause").status_code == 409
            # pause: the leader stops firing within a second
            paused = http.post("/api/schedules/tick/pause")
            assert paused.status_code == 200, paused.text
            assert paused.json()["paused"] is True and paused.json()["next_fire_times"] == []
            stop_at = time.time()
            wait_until(lambda: "paused" in group.roles[0].output(), timeout=2, what="the pause applied")
            count = r.zcard(KEYS.job_runs("tick"))
            holds_for(lambda: r.zcard(KEYS.job_runs("tick")) <= count + 1, 2.5, "no fires while paused")
            # resume: fires again from now on; the paused time is not caught up
            resumed = http.post("/api/schedules/tick/resume")
            assert resumed.status_code == 200 and resumed.json()["paused"] is False
            resumed_at = time.time()
            count = r.zcard(KEYS.job_runs("tick"))
            wait_runs(r, "tick", count + 2)
            during = [t for run in runs_of(r, "tick") if (t := run.scheduled_for or 0) > stop_at + 1.5]
            gap = [t for t in during if t < resumed_at - 0.5]
            assert gap == [], gap
            # the cluster view names the leader
            cluster = http.get("/api/cluster").json()["scheduler"]
            assert cluster["term"] == int(r.get(KEYS.leader_term) or 0) and cluster["leader"]
        check_exactly_once(r, "tick")
    finally:
        api.role.stop()


def test_readyz_for_leader_and_standby(r: redis.Redis, replicas: Callable[..., Replicas]) -> None:
    ports = [free_port(), free_port()]
    leader_group = replicas(JOBYARD_METRICS_PORT=str(ports[0]))
    leader_group.start(1)
    leader_group.wait_leader(r)
    standby_group = replicas(JOBYARD_METRICS_PORT=str(ports[1]))
    standby_group.start(1)

    def ready(port: int) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(lambda: ready(ports[0]) and ready(ports[1]), timeout=10, what="leader and standby ready")
    assert leader_group.leader(r) is leader_group.roles[0]
