"""Job secrets: set by admins, encrypted at rest, given to runs, never shown, masked, rotatable."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from jobyard import secrets
from jobyard.keys import Keys
from jobyard.runs import RunStore
from tests.helpers import REPO, RedisServer, Role, role_env, wait_until
from tests.services.conftest import ADMIN_TOKEN, Api, error_shape
from tests.workers.conftest import enqueue, log_lines, wait_status

KEYS = Keys()
KEY_1 = secrets.new_key()
KEY_2 = secrets.new_key()
VALUE = "s3cr3t-" + os.urandom(8).hex()  # unique: any sighting of it is a leak

SHOW = """\
#!/bin/sh
echo "the key is $API_KEY"
echo "twice: $API_KEY/$API_KEY" >&2
printf '%s' "$API_KEY" | sha256sum | cut -c1-64 > "$JOBYARD_DATA_PATH/digest"
"""


def _put(api: Api, job: str, key: str, value: str, token: str = ADMIN_TOKEN) -> httpx.Response:
    with api.client(token) as client:
        return client.put(f"/api/jobs/{job}/secrets/{key}", json={"value": value})


def _every_get_answer(api: Api, job: str, run_id: str) -> str:
    """The bodies of every GET route of the API for this job and run, concatenated."""
    spec = httpx.get(api.url + "/openapi.json", timeout=10).json()
    bodies = []
    with api.client() as client:
        for path, ops in spec["paths"].items():
            if "get" not in ops or path.endswith("/stream"):
                continue
            url = path.replace("{name}", job).replace("{run_id}", run_id).replace("{job}", job)
            if "{" in url:
                continue
            bodies.append(client.get(url).text)
    return "\n".join(bodies)


def _dashboard_pages(api: Api, job: str, run_id: str) -> str:
    with httpx.Client(base_url=api.url, timeout=10) as browser:
        form = browser.get("/login").text
        login_token = re.search(r'name="csrf_token" value="([^"]+)"', form)
        assert login_token, form[:500]
        answer = browser.post(
            "/login",
            data={"csrf_token": login_token.group(1), "next": "/", "token": ADMIN_TOKEN},
            headers={"Origin": api.url},
        )
        assert answer.status_code in (302, 303), answer.text[:500]
        pages = [browser.get(p) for p in ("/", f"/jobs/{job}", f"/runs/{run_id}")]
        assert [p.status_code for p in pages] == [200, 200, 200], [p.url for p in pages]
        return "\n".join(p.text for p in pages)


def test_secrets_reach_the_run_and_nothing_else(
    deploy: Callable[..., Any],
    workers: Callable[..., Role],
    start_api: Callable[..., Api],
    store: RunStore,
    redis_url: str,
    redis_server: RedisServer,
    r: redis.Redis,
    data_dir: Path,
) -> None:
    api = start_api(redis_url, JOBYARD_SECRET_KEY=KEY_1)
    deploy("shows", {"run.sh": SHOW})
    # given: an admin sets the secret (201), sets it again (200); lesser roles may not
    assert _put(api, "shows", "API_KEY", "first").status_code == 201
    created = _put(api, "shows", "API_KEY", VALUE)
    assert created.status_code == 200, created.text
    assert VALUE not in created.text and set(created.json()) == {"name", "updated_at", "updated_by"}
    with api.client() as admin:
        for role in ("viewer", "operator"):
            token = admin.post("/api/tokens", json={"role": role}).json()["token"]
            error_shape(_put(api, "shows", "OTHER", "x" * 8, token), 403)
            with api.client(token) as lesser:
                assert lesser.get("/api/jobs/shows/secrets").status_code == 200  # names are not secret
        error_shape(_put(api, "shows", "JOBYARD_REDIS_URL", "x" * 8), 422)
        error_shape(_put(api, "nojob", "API_KEY", "x" * 8), 404)
        listed = admin.get("/api/jobs/shows/secrets").json()
        assert [s["name"] for s in listed["secrets"]] == ["API_KEY"] and VALUE not in str(listed)

    # then: a dump of Redis does not reveal it, nor the append-only file
    stored = r.hget(KEYS.job_secrets("shows"), "API_KEY")
    assert stored and VALUE.encode() not in stored
    dump = r.dump(KEYS.job_secrets("shows"))
    assert dump and VALUE.encode() not in dump
    aof = [p for p in Path(redis_server.dir).rglob("*") if p.is_file() and ".aof" in p.name]
    assert aof, list(Path(redis_server.dir).iterdir())
    wait_until(
        lambda: any(b"API_KEY" in p.read_bytes() for p in aof), timeout=5, what="the AOF to hold the write"
    )
    assert not any(VALUE.encode() in p.read_bytes() for p in aof)

    # when: a run prints it
    workers(concurrency=1, JOBYARD_SECRET_KEY=KEY_1)
    run = wait_status(store, enqueue(store, "shows"), {"succeeded", "failed"}, timeout=30)
    assert run.status.value == "succeeded", (run.error, log_lines(store, run.id))

    # then: the script had the value, the log shows ***, and no API answer or page holds it
    digest = (data_dir / "jobs" / "shows" / "data" / "digest").read_text().strip()
    assert digest == hashlib.sha256(VALUE.encode()).hexdigest()
    lines = [line for _, line in log_lines(store, run.id)]
    assert "the key is ***" in lines and "twice: ***/***" in lines, lines
    with api.client() as admin:
        assert VALUE not in admin.get(f"/api/runs/{run.id}/log").text
    assert VALUE not in _every_get_answer(api, "shows", run.id)
    assert VALUE not in _dashboard_pages(api, "shows", run.id)

    # and deleting it keeps it from later runs
    with api.client() as admin:
        assert admin.delete("/api/jobs/shows/secrets/API_KEY").json() == {"name": "API_KEY", "deleted": True}
        error_shape(admin.delete("/api/jobs/shows/secrets/API_KEY"), 404)


def test_without_a_key_secrets_are_refused_clearly(
    deploy: Callable[..., Any],
    workers: Callable[..., Role],
    start_api: Callable[..., Api],
    store: RunStore,
    redis_url: str,
    r: redis.Redis,
) -> None:
    api = start_api(redis_url)
    deploy("shows", {"run.sh": SHOW})
    body = error_shape(_put(api, "shows", "API_KEY", VALUE), 409)
    assert "JOBYARD_SECRET_KEY" in body["error"]
    # a worker without the key does not run a job that has secrets
    secrets.set_secret(r, KEYS, secrets.SecretBox([KEY_1]), "shows", "API_KEY", VALUE)
    workers(concurrency=1)
    run = wait_status(store, enqueue(store, "shows"), {"succeeded", "failed"}, timeout=30)
    assert run.status.value == "failed" and run.error and "no JOBYARD_SECRET_KEY" in run.error, run.error


def _rotate(redis_url: str, data_dir: Path, new: str, old: str) -> subprocess.CompletedProcess[str]:
    env = role_env(redis_url, data_dir, JOBYARD_SECRET_KEY=new, JOBYARD_OLD_SECRET_KEY=old)
    return subprocess.run(
        [sys.executable, "-m", "jobyard", "secrets", "rotate"],
        env=env,
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_rotation_re_encrypts_under_the_new_key(
    deploy: Callable[..., Any],
    workers: Callable[..., Role],
    store: RunStore,
    redis_url: str,
    r: redis.Redis,
    data_dir: Path,
) -> None:
    deploy("shows", {"run.sh": SHOW})
    secrets.set_secret(r, KEYS, secrets.SecretBox([KEY_1]), "shows", "API_KEY", VALUE)
    before = r.hget(KEYS.job_secrets("shows"), "API_KEY")
    # a new key alone cannot open the old value
    with pytest.raises(secrets.InvalidInput, match="cannot be decrypted"):
        secrets.load_for_run(r, KEYS, _settings(redis_url, data_dir, KEY_2), "shows")

    done = _rotate(redis_url, data_dir, KEY_2, KEY_1)
    assert done.returncode == 0, done.stderr
    assert "re-encrypted 1 secret values" in done.stderr
    assert r.hget(KEYS.job_secrets("shows"), "API_KEY") != before
    assert secrets.load_for_run(r, KEYS, _settings(redis_url, data_dir, KEY_2), "shows") == {"API_KEY": VALUE}
    with pytest.raises(secrets.InvalidInput):
        secrets.load_for_run(r, KEYS, _settings(redis_url, data_dir, KEY_1), "shows")
    events = r.xrevrange(KEYS.audit, count=1)
    assert events and events[0][1][b"action"] == b"secrets.rotate"

    workers(concurrency=1, JOBYARD_SECRET_KEY=KEY_2)
    run = wait_status(store, enqueue(store, "shows"), {"succeeded", "failed"}, timeout=30)
    assert run.status.value == "succeeded", run.error
    # a wrong old key is refused, and nothing changes
    failed = _rotate(redis_url, data_dir, secrets.new_key(), KEY_1)
    assert failed.returncode == 1 and "cannot be decrypted" in failed.stderr, failed.stderr


def test_a_token_copied_to_another_job_does_not_open_there(r: redis.Redis, redis_url: str) -> None:
    box = secrets.SecretBox([KEY_1])
    secrets.set_secret(r, KEYS, box, "a", "API_KEY", VALUE)
    r.hset(KEYS.job_secrets("b"), "API_KEY", r.hget(KEYS.job_secrets("a"), "API_KEY"))  # type: ignore[arg-type]
    with pytest.raises(secrets.InvalidInput, match="sealed for another job"):
        secrets.load_for_run(r, KEYS, _settings(redis_url, Path("."), KEY_1), "b")


def test_passphrases_are_stretched_and_short_ones_refused() -> None:
    box = secrets.SecretBox(["a long passphrase of many words"])
    token = box.seal("job", "K", "v")
    assert secrets.SecretBox(["a long passphrase of many words"]).open("job", "K", token) == "v"
    with pytest.raises(secrets.InvalidInput, match="characters"):
        secrets.SecretBox(["short"])


def _settings(redis_url: str, data_dir: Path, key: str) -> Any:
    from jobyard.settings import Settings

    return Settings(redis_url=redis_url, data_dir=data_dir, secret_key=key)  # type: ignore[arg-type]
