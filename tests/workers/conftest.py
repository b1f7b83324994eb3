"""Fixtures for worker tests: deploy jobs straight into Redis, start real worker processes."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from jobyard.keys import Keys
from jobyard.models import Job, Run
from jobyard.runs import EnqueueSpec, RunStore
from jobyard.settings import Settings
from tests.helpers import Role, role_env, wait_until


@pytest.fixture
def settings(redis_url: str, data_dir: Path) -> Settings:
    return Settings(redis_url=redis_url, data_dir=data_dir)  # type: ignore[arg-type]


@pytest.fixture
def store(r: redis.Redis, settings: Settings) -> RunStore:
    return RunStore(r, Keys(), settings)


@pytest.fixture
def deploy(r: redis.Redis, settings: Settings, tmp_path: Path) -> Callable[..., Job]:
    """Deploy a job made of ``files`` (name -> text), with an optional settings.job."""
    from jobyard.deploy import deploy_job

    def make(
        name: str,
        files: dict[str, str],
        job_settings: dict[str, Any] | None = None,
        job_type: str | None = None,
    ) -> Job:
        path = tmp_path / f"{name}.zip"
        with zipfile.ZipFile(path, "w") as zf:
            for fname, text in files.items():
                info = zipfile.ZipInfo(fname)
                info.external_attr = 0o755 << 16
                zf.writestr(info, text)
            if job_settings is not None:
                zf.writestr("settings.job", json.dumps(job_settings))
        job, _ = deploy_job(r, Keys(), settings, name, path, f"{name}.zip", job_type)
        return job

    return make


@pytest.fixture
def workers(redis_url: str, data_dir: Path, tmp_path: Path) -> Iterator[Callable[..., Role]]:
    """Start ``jobyard worker`` processes; every one is stopped (by pid) at the end."""
    started: list[Role] = []

    def start(
        concurrency: int = 2, *, instance: str | None = None, own_data_dir: bool = False, **extra: str
    ) -> Role:
        d = data_dir if not own_data_dir else tmp_path / f"data-{len(started)}"
        d.mkdir(exist_ok=True)
        env = role_env(redis_url, d, JOBYARD_METRICS_PORT="0", **extra)
        if instance:
            env["JOBYARD_INSTANCE_ID"] = instance
        role = Role(
            ["worker", "--concurrency", str(concurrency)], env, tmp_path / f"worker-{len(started)}.log"
        )
        started.append(role)
        return role

    yield start
    for role in started:
        role.stop(timeout=15)


def wait_status(store: RunStore, run_id: str, statuses: set[str], timeout: float = 20.0) -> Run:
    """Wait until the run reaches one of ``statuses``."""

    def check() -> Run | None:
        run = store.get(run_id)
        return run if run.status.value in statuses else None

    return wait_until(check, timeout=timeout, what=f"run {run_id} to reach {statuses}")


def enqueue(store: RunStore, job: str, *args: str, **fields: Any) -> str:
    created = store.create(EnqueueSpec(job=job, args=list(args), **fields))
    assert created.created, created
    assert created.run_id
    return created.run_id


def log_lines(store: RunStore, run_id: str) -> list[tuple[str, str]]:
    return [(e["stream"], e["line"]) for e in store.read_log(run_id)]
