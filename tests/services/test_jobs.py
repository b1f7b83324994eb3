"""Jobs over HTTP: deploy (zip or one script), read, settings, delete, start/stop of continuous jobs."""

from __future__ import annotations

import io
import json
import time
import zipfile

import httpx
import redis

from jobyard.models import JobType, parse_iso
from jobyard.runs import EnqueueSpec, RunStore
from tests.services.conftest import KEYS, error_shape, put_job


def _zip(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return buf.getvalue()


def _deploy_zip(client: httpx.Client, name: str, files: dict[str, str], **params: str) -> httpx.Response:
    return client.put(
        f"/api/jobs/{name}", content=_zip(files), params=params, headers={"content-type": "application/zip"}
    )


def test_deploy_a_script_then_replace_it(admin: httpx.Client, r: redis.Redis) -> None:
    script = b"#!/bin/sh\necho hello\n"
    first = admin.put(
        "/api/jobs/greet",
        content=script,
        params={"filename": "greet.sh"},
        headers={"content-type": "application/octet-stream"},
    )
    assert first.status_code == 201, first.text
    job = first.json()
    assert job["name"] == "greet" and job["type"] == "triggered" and job["entry"] == "greet.sh"
    assert job["latest_run"] is None and job["schedule"] is None and job["instances"] == []
    assert first.headers["location"] == "/api/jobs/greet"
    assert r.sismember(KEYS.jobs, "greet")

    again = _deploy_zip(admin, "greet", {"run.py": "print('hi')\n", "settings.job": '{"max_retries": 2}'})
    assert again.status_code == 200, again.text
    assert again.json()["entry"] == "run.py" and again.json()["settings"] == {"max_retries": 2}
    assert again.json()["version"] > job["version"]
    assert [j["name"] for j in admin.get("/api/jobs").json()["jobs"]] == ["greet"]


def test_bad_packages_are_refused_and_leave_the_job_untouched(admin: httpx.Client) -> None:
    assert _deploy_zip(admin, "keep", {"run.sh": "echo 1\n"}).status_code == 201
    error_shape(_deploy_zip(admin, "keep", {"README.txt": "no script here"}), 422)
    error_shape(_deploy_zip(admin, "keep", {"../evil.sh": "echo 1\n"}), 422)
    error_shape(_deploy_zip(admin, "keep", {"run.sh": "x", "settings.job": '{"colour": 1}'}), 422)
    # not a zip and no filename
    error_shape(
        admin.put("/api/jobs/keep", content=b"echo hi", headers={"content-type": "application/octet-stream"}),
        422,
    )
    error_shape(admin.put("/api/jobs/keep", content=b"", headers={"content-type": "application/zip"}), 422)
    body = error_shape(admin.put("/api/jobs/keep", content=b"x", headers={"content-type": "image/png"}), 422)
    assert "Content-Type" in body["error"]
    body = error_shape(_deploy_zip(admin, "bad name", {"run.sh": "x"}), 422)
    assert "letters" in body["detail"]
    assert admin.get("/api/jobs/keep").json()["entry"] == "run.sh"


def test_type_override_and_continuous_start_stop(admin: httpx.Client, r: redis.Redis) -> None:
    response = _deploy_zip(admin, "daemon", {"run.sh": "while true; do sleep 1; done\n"}, type="continuous")
    assert response.status_code == 201 and response.json()["type"] == "continuous"
    r.hset(f"{KEYS.prefix}:job:daemon:instances", "host-a", json.dumps({"state": "running", "pid": 7}))
    with r.pubsub() as sub:
        sub.subscribe(KEYS.events)
        sub.get_message(timeout=1)
        stopped = admin.post("/api/jobs/daemon/stop")
        assert stopped.status_code == 200 and stopped.json()["stopped"] is True
        assert stopped.json()["instances"] == [{"state": "running", "pid": 7, "instance_id": "host-a"}]
        assert r.hget(KEYS.job("daemon"), "stopped") == b"1"
        started = admin.post("/api/jobs/daemon/start")
        assert started.json()["stopped"] is False and r.hget(KEYS.job("daemon"), "stopped") == b"0"
        events = []
        for _ in range(10):
            message = sub.get_message(timeout=1)
            if message and message["type"] == "message":
                events.append(json.loads(message["data"]))
            if len(events) == 2:
                break
        assert events == [{"event": "stopped", "job": "daemon"}, {"event": "started", "job": "daemon"}]
    error_shape(admin.post("/api/jobs/ghost/start"), 404)


def test_job_view_has_schedule_and_latest_run(admin: httpx.Client, r: redis.Redis, store: RunStore) -> None:
    put_job(r, "nightly", settings={"schedule": "0 30 2 * * *", "timezone": "Europe/Berlin"})
    first = store.create(EnqueueSpec(job="nightly"))
    second = store.create(EnqueueSpec(job="nightly", args=["b"]))
    job = admin.get("/api/jobs/nightly").json()
    assert job["latest_run"]["id"] == second.run_id != first.run_id
    schedule = job["schedule"]
    assert schedule["expr"] == "0 30 2 * * *" and schedule["timezone"] == "Europe/Berlin"
    assert schedule["paused"] is False
    assert time.time() < parse_iso(schedule["next_fire_time"]) < time.time() + 86400 + 3600
    listed = admin.get("/api/jobs").json()["jobs"]
    assert listed[0]["latest_run"]["id"] == second.run_id and listed[0]["schedule"]["expr"] == "0 30 2 * * *"
    put_job(r, "broken-cron", settings={"schedule": "not a schedule"})
    assert "error" in admin.get("/api/jobs/broken-cron").json()["schedule"]


def test_settings_are_read_and_replaced_with_validation(admin: httpx.Client) -> None:
    assert _deploy_zip(admin, "tuned", {"run.sh": "echo\n"}).status_code == 201
    assert admin.get("/api/jobs/tuned/settings").json() == {}
    response = admin.put("/api/jobs/tuned/settings", json={"timeout": 30, "priority": "high"})
    assert response.status_code == 200, response.text
    assert response.json()["settings"] == {"timeout": 30, "priority": "high"}
    assert admin.get("/api/jobs/tuned/settings").json() == {"timeout": 30, "priority": "high"}
    body = error_shape(admin.put("/api/jobs/tuned/settings", json={"timeout": "soon"}), 422)
    assert "timeout" in json.dumps(body)
    body = error_shape(admin.put("/api/jobs/tuned/settings", json={"nonsense": 1}), 422)
    assert "nonsense" in json.dumps(body)
    error_shape(
        admin.put("/api/jobs/tuned/settings", content=b"{", headers={"content-type": "application/json"}), 422
    )
    error_shape(admin.put("/api/jobs/ghost/settings", json={}), 404)
    assert admin.get("/api/jobs/tuned/settings").json() == {"timeout": 30, "priority": "high"}


def test_delete_a_job(admin: httpx.Client, r: redis.Redis) -> None:
    assert _deploy_zip(admin, "doomed", {"run.sh": "echo\n"}).status_code == 201
    response = admin.delete("/api/jobs/doomed")
    assert response.status_code == 200 and response.json() == {"name": "doomed", "deleted": True}
    error_shape(admin.get("/api/jobs/doomed"), 404)
    error_shape(admin.delete("/api/jobs/doomed"), 404)
    assert not r.sismember(KEYS.jobs, "doomed")
    assert put_job(r, "other").type == JobType.TRIGGERED
