"""Deploying, replacing, re-configuring and deleting jobs on a real Redis."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis

from jobyard.deploy import delete_job, deploy_job, get_job, list_jobs, update_settings
from jobyard.errors import InvalidInput, NotFound, PayloadTooLarge
from jobyard.keys import Keys
from jobyard.models import JOB_NAME_RULE, Job, JobType, Run, RunStatus
from jobyard.packages import file_sha256
from jobyard.settings import Settings

KEYS = Keys("jy")
MiB = 1024 * 1024


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", redis_prefix="jy")


def make_zip(path: Path, files: dict[str, bytes | str], modes: dict[str, int] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in files.items():
            zi = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            zi.create_system = 3
            zi.compress_type = zipfile.ZIP_DEFLATED
            zi.external_attr = (stat.S_IFREG | (modes or {}).get(name, 0o644)) << 16
            zf.writestr(zi, content)
    return path


def snapshot(r: redis.Redis) -> dict[bytes, Any]:
    """Every key with its type and value: proof that a failed deploy wrote nothing."""
    out: dict[bytes, Any] = {}
    for key in r.keys("*"):
        kind = r.type(key)
        if kind == b"hash":
            out[key] = r.hgetall(key)
        elif kind == b"set":
            out[key] = r.smembers(key)
        elif kind == b"string":
            out[key] = r.get(key)
        elif kind == b"zset":
            out[key] = r.zrange(key, 0, -1, withscores=True)
        else:
            out[key] = kind
    return out


@pytest.fixture
def events(r: redis.Redis) -> Iterator[Any]:
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(KEYS.events)
    assert pubsub.get_message(timeout=5) is None  # consumes the subscribe confirmation
    yield pubsub
    pubsub.close()


def next_event(pubsub: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        msg = pubsub.get_message(timeout=0.5)
        if msg:
            return json.loads(msg["data"])  # type: ignore[no-any-return]
    raise AssertionError("no event published")


def test_deploy_a_new_zip(r: redis.Redis, tmp_path: Path, settings: Settings, events: Any) -> None:
    z = make_zip(tmp_path / "job.zip", {"run.sh": "echo hi", "settings.job": '{"max_retries": 2}'})
    job, created = deploy_job(r, KEYS, settings, "hello", z, "job.zip")
    assert created is True
    assert (job.name, job.type, job.entry, job.version) == ("hello", JobType.TRIGGERED, "run.sh", 1)
    assert job.settings == {"max_retries": 2}
    assert job.package == file_sha256(z)
    assert job.size == z.stat().st_size
    assert job.created_at == job.updated_at > 0
    assert get_job(r, KEYS, "hello") == job
    assert r.sismember(KEYS.jobs, "hello")
    assert r.get(KEYS.package(job.package)) == z.read_bytes()
    assert r.smembers(KEYS.package_refs(job.package)) == {b"hello"}
    assert next_event(events) == {"event": "deployed", "job": "hello", "version": 1}


def test_deploy_a_single_script(r: redis.Redis, tmp_path: Path, settings: Settings) -> None:
    script = tmp_path / "upload"
    script.write_text("#!/usr/bin/env python3\nprint('hi')\n")
    job, created = deploy_job(r, KEYS, settings, "py-job", script, "hello.py")
    assert created and job.entry == "hello.py" and job.filename == "hello.py"
    stored = r.get(KEYS.package(job.package))
    assert stored is not None
    (tmp_path / "back.zip").write_bytes(stored)
    with zipfile.ZipFile(tmp_path / "back.zip") as zf:
        assert zf.namelist() == ["hello.py"]
        assert (zf.getinfo("hello.py").external_attr >> 16) & 0o777 == 0o755
    # the same script again is the same package
    again, created_again = deploy_job(r, KEYS, settings, "py-job", script, "hello.py")
    assert again.package == job.package and created_again is False and again.version == 2


def test_replace_keeps_created_at_and_frees_the_old_package(
    r: redis.Redis, tmp_path: Path, settings: Settings, events: Any
) -> None:
    first, _ = deploy_job(r, KEYS, settings, "j", make_zip(tmp_path / "a.zip", {"run.sh": "echo 1"}), "")
    r.hset(KEYS.job("j"), mapping={"paused": "1"})
    second, created = deploy_job(r, KEYS, settings, "j", make_zip(tmp_path / "b.zip", {"run.py": "1"}), "")
    assert created is False
    assert second.version == 2 and second.created_at == first.created_at and second.paused == 1
    assert second.entry == "run.py" and second.package != first.package
    assert not r.exists(KEYS.package(first.package))
    assert not r.exists(KEYS.package_refs(first.package))
    assert [next_event(events)["version"], next_event(events)["version"]] == [1, 2]


def test_a_shared_package_lives_until_its_last_job_moves(
    r: redis.Redis, tmp_path: Path, settings: Settings
) -> None:
    shared = make_zip(tmp_path / "s.zip", {"run.sh": "echo shared"})
    a, _ = deploy_job(r, KEYS, settings, "a", shared, "")
    deploy_job(r, KEYS, settings, "b", shared, "")
    assert r.smembers(KEYS.package_refs(a.package)) == {b"a", b"b"}
    deploy_job(r, KEYS, settings, "a", make_zip(tmp_path / "n.zip", {"run.sh": "echo new"}), "")
    assert r.exists(KEYS.package(a.package))
    delete_job(r, KEYS, "b")
    assert not r.exists(KEYS.package(a.package))


def test_type_from_settings_and_override(r: redis.Redis, tmp_path: Path, settings: Settings) -> None:
    z = make_zip(tmp_path / "c.zip", {"run.sh": "", "settings.job": '{"type": "continuous"}'})
    assert deploy_job(r, KEYS, settings, "c", z, "")[0].type == JobType.CONTINUOUS
    assert deploy_job(r, KEYS, settings, "c", z, "", type_override="triggered")[0].type == JobType.TRIGGERED
    with pytest.raises(InvalidInput, match="job type 'daily'"):
        deploy_job(r, KEYS, settings, "c", z, "", type_override="daily")


def test_entry_on_linux_prefers_run_sh_over_run_cmd(
    r: redis.Redis, tmp_path: Path, settings: Settings
) -> None:
    z = make_zip(tmp_path / "w.zip", {"run.cmd": "@echo", "run.sh": "echo"})
    assert deploy_job(r, KEYS, settings, "w", z, "")[0].entry == "run.sh"


# -- bad input: a clear error, and nothing written --------------------------------------------


@pytest.mark.parametrize("name", ["", "-lead", "has space", "a/b", "x" * 65, "ü", "../etc", "a.b"])
def test_bad_name(r: redis.Redis, tmp_path: Path, settings: Settings, name: str) -> None:
    z = make_zip(tmp_path / "ok.zip", {"run.sh": "echo"})
    with pytest.raises(InvalidInput) as exc:
        deploy_job(r, KEYS, settings, name, z, "")
    assert JOB_NAME_RULE in exc.value.message
    assert snapshot(r) == {}


@pytest.fixture
def existing(r: redis.Redis, tmp_path: Path, settings: Settings) -> dict[bytes, Any]:
    """A deployed job called 'target'; the whole database as it was after deploying it."""
    deploy_job(r, KEYS, settings, "target", make_zip(tmp_path / "orig.zip", {"run.sh": "echo orig"}), "")
    return snapshot(r)


def _bomb(tmp_path: Path) -> Path:
    return make_zip(tmp_path / "bomb.zip", {"run.sh": "echo", "zeros": b"\0" * (20 * MiB)})


def _evil_link(tmp_path: Path) -> Path:
    return make_zip(
        tmp_path / "l.zip", {"run.sh": "echo", "link": "/etc/passwd"}, {"link": stat.S_IFLNK | 0o777}
    )


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda p: make_zip(p / "x.zip", {"run.sh": "", "../evil.sh": "x"}), InvalidInput, "contains '..'"),
        (lambda p: make_zip(p / "x.zip", {"run.sh": "", "/tmp/evil.sh": "x"}), InvalidInput, "absolute"),
        (_evil_link, InvalidInput, "symbolic link"),
        (_bomb, PayloadTooLarge, "expands"),
        (lambda p: make_zip(p / "x.zip", {"data.txt": "", "lib/readme.md": ""}), InvalidInput, "no runnable"),
        (
            lambda p: make_zip(p / "x.zip", {"run.sh": "", "settings.job": "{oops"}),
            InvalidInput,
            "not valid JSON",
        ),
        (
            lambda p: make_zip(p / "x.zip", {"run.sh": "", "settings.job": '{"retries": 1}'}),
            InvalidInput,
            "unknown field 'retries'",
        ),
        (
            lambda p: make_zip(p / "x.zip", {"run.sh": "", "settings.job": '{"timeout": "soon"}'}),
            InvalidInput,
            "field 'timeout': must be a number",
        ),
        (
            lambda p: make_zip(p / "x.zip", {"run.sh": "", "settings.job": '{"entry": "gone.sh"}'}),
            InvalidInput,
            "entry 'gone.sh' is not a file",
        ),
    ],
)
def test_a_bad_package_leaves_the_existing_job_untouched(
    r: redis.Redis,
    tmp_path: Path,
    settings: Settings,
    existing: dict[bytes, Any],
    build: Any,
    error: type[Exception],
    message: str,
) -> None:
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    package = build(sandbox)
    with pytest.raises(error, match=message):
        deploy_job(r, KEYS, settings, "target", package, "")
    assert snapshot(r) == existing
    with pytest.raises(error):
        deploy_job(r, KEYS, settings, "newjob", package, "")
    assert snapshot(r) == existing
    # nothing was extracted next to the upload either (the deploy's scratch space is gone)
    assert sorted(p.name for p in sandbox.iterdir()) == [package.name]
    assert not (tmp_path / "evil.sh").exists()


def test_a_body_that_is_not_a_zip_and_has_no_filename(
    r: redis.Redis, tmp_path: Path, settings: Settings
) -> None:
    body = tmp_path / "body"
    body.write_bytes(b"echo this is a script\n")
    with pytest.raises(InvalidInput, match="not a valid zip") as exc:
        deploy_job(r, KEYS, settings, "nozip", body, "")
    assert "filename" in str(exc.value.detail)
    with pytest.raises(InvalidInput, match="script file name"):
        deploy_job(r, KEYS, settings, "nozip", body, "../evil.sh")
    assert snapshot(r) == {}


def test_a_package_over_the_upload_cap(r: redis.Redis, tmp_path: Path) -> None:
    z = make_zip(tmp_path / "big.zip", {"run.sh": "echo", "blob": os.urandom(200_000)})
    with pytest.raises(PayloadTooLarge, match="more than 100000"):
        deploy_job(r, KEYS, Settings(max_package_bytes=100_000, redis_prefix="jy"), "big", z, "")
    assert snapshot(r) == {}


# -- settings through the API ------------------------------------------------------------------


def test_update_settings(r: redis.Redis, tmp_path: Path, settings: Settings, events: Any) -> None:
    z = make_zip(tmp_path / "u.zip", {"run.sh": "echo", "tools/alt.py": "print(1)"})
    job, _ = deploy_job(r, KEYS, settings, "u", z, "")
    next_event(events)
    updated = update_settings(r, KEYS, settings, "u", '{"type": "continuous", "entry": "tools/alt.py"}')
    assert updated.type == JobType.CONTINUOUS and updated.entry == "tools/alt.py"
    assert updated.version == job.version + 1 and updated.created_at == job.created_at
    assert get_job(r, KEYS, "u") == updated
    assert next_event(events) == {"event": "settings", "job": "u", "version": 2}
    back = update_settings(r, KEYS, settings, "u", {"max_retries": 1})
    assert back.entry == "run.sh" and back.settings == {"max_retries": 1}


def test_update_settings_refuses_bad_input_and_keeps_the_job(
    r: redis.Redis, tmp_path: Path, settings: Settings, existing: dict[bytes, Any]
) -> None:
    for raw, message in [
        ('{"max_retries": 1000}', "field 'max_retries'"),
        ('{"entry": "nope.sh"}', "entry 'nope.sh' is not a file"),
        ("not json", "not valid JSON"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            update_settings(r, KEYS, settings, "target", raw)
    assert snapshot(r) == existing
    with pytest.raises(NotFound):
        update_settings(r, KEYS, settings, "absent", "{}")


# -- delete and list ---------------------------------------------------------------------------


def _add_run(r: redis.Redis, job: str, status: RunStatus, n: int) -> str:
    run = Run(id=f"01RUN{n:021d}", job=job, status=status, enqueued_at=time.time())
    r.hset(KEYS.run(run.id), mapping=run.to_hash())  # type: ignore[arg-type]
    r.zadd(KEYS.job_runs(job), {run.id: n})
    r.xadd(KEYS.run_log(run.id), {"t": "1", "s": "INFO", "m": "line"})
    return run.id


def test_delete_job(r: redis.Redis, tmp_path: Path, settings: Settings, events: Any) -> None:
    job, _ = deploy_job(r, KEYS, settings, "d", make_zip(tmp_path / "d.zip", {"run.sh": "echo"}), "")
    done = _add_run(r, "d", RunStatus.SUCCEEDED, 1)
    dead = _add_run(r, "d", RunStatus.FAILED, 2)
    r.zadd(KEYS.dead_letters, {dead: 1})
    running = _add_run(r, "d", RunStatus.RUNNING, 3)
    next_event(events)
    delete_job(r, KEYS, "d")
    assert not r.exists(KEYS.job("d"), KEYS.job_runs("d"), KEYS.package(job.package))
    assert not r.sismember(KEYS.jobs, "d")
    for rid in (done, dead):
        assert not r.exists(KEYS.run(rid), KEYS.run_log(rid))
    assert r.zcard(KEYS.dead_letters) == 0
    assert r.hget(KEYS.run(running), "status") == b"running"  # a live run can still end and be read
    assert next_event(events) == {"event": "deleted", "job": "d", "version": 1}
    with pytest.raises(NotFound):
        delete_job(r, KEYS, "d")
    with pytest.raises(NotFound):
        get_job(r, KEYS, "d")


def test_list_jobs(r: redis.Redis, tmp_path: Path, settings: Settings) -> None:
    z = make_zip(tmp_path / "l.zip", {"run.sh": "echo"})
    for name in ("b", "a", "c"):
        deploy_job(r, KEYS, settings, name, z, "")
    jobs = list_jobs(r, KEYS)
    assert [j.name for j in jobs] == ["a", "b", "c"]
    assert all(isinstance(j, Job) for j in jobs)
    assert list_jobs(r, Keys("other")) == []


def test_concurrent_deploys_and_deletes_stay_consistent(
    r: redis.Redis, tmp_path: Path, settings: Settings
) -> None:
    # Given eight packages, one of them shared with a job that is deleted while others deploy
    packages = [make_zip(tmp_path / f"p{i}.zip", {"run.sh": f"echo {i}"}) for i in range(8)]
    deploy_job(r, KEYS, settings, "other", packages[0], "")
    start = threading.Barrier(9)

    def deploy(i: int) -> None:
        start.wait(timeout=10)
        deploy_job(r, KEYS, settings, "same", packages[i], "")

    def delete() -> None:
        start.wait(timeout=10)
        delete_job(r, KEYS, "other")

    # When they all run at once
    with ThreadPoolExecutor(9) as pool:
        futures = [pool.submit(deploy, i) for i in range(8)] + [pool.submit(delete)]
        for f in futures:
            f.result(timeout=60)
    # Then one record won, every deploy counted, and only its package is left
    job = get_job(r, KEYS, "same")
    assert job.version == 8
    assert list_jobs(r, KEYS) == [job]
    stored = {k.decode().rsplit(":", 1)[-1] for k in r.keys(KEYS.package("*")) if k.count(b":") == 2}
    assert stored == {job.package}
    assert r.smembers(KEYS.package_refs(job.package)) == {b"same"}
    assert r.keys("jy:pkg:*:upload:*") == []
