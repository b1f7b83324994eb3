"""Scheduler test helpers: deploy scheduled jobs, run replicas, read back what fired."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from jobyard.deploy import deploy_job, update_settings
from jobyard.keys import Keys
from jobyard.models import Job, Run, Trigger
from jobyard.settings import Settings
from tests.helpers import Role, role_env, wait_until

KEYS = Keys()
# Short leases keep handovers (and so the suite) fast: ttl 2 s, renew every 0.4 s.
FAST_LEASE = {
    "JOBYARD_LEADER_LEASE_TTL_SECONDS": "2",
    "JOBYARD_LEADER_RENEW_INTERVAL_SECONDS": "0.4",
    "JOBYARD_METRICS_PORT": "0",
}
SCRIPT = b"#!/bin/bash\necho tick\n"


def settings_for(redis_url: str, data_dir: Path, **kw: Any) -> Settings:
    """Settings of an in-process role on the test's Redis."""
    return Settings(redis_url=redis_url, data_dir=data_dir, **kw)  # type: ignore[arg-type]


def deploy(r: redis.Redis, data_dir: Path, name: str, job_settings: dict[str, Any]) -> Job:
    """Deploy a one-line script as ``name`` and give it ``job_settings`` (the real deploy path)."""
    settings = settings_for("redis://unused", data_dir)
    script = data_dir / f"{name}.sh"
    script.write_bytes(SCRIPT)
    deploy_job(r, KEYS, settings, name, script, "run.sh")
    return update_settings(r, KEYS, settings, name, job_settings)


def runs_of(r: redis.Redis, job: str) -> list[Run]:
    """Every run of ``job`` in its history, oldest first."""
    ids = [i.decode() for i in r.zrange(KEYS.job_runs(job), 0, -1)]
    pipe = r.pipeline(transaction=False)
    for rid in ids:
        pipe.hgetall(KEYS.run(rid))
    return [Run.from_hash(d) for d in pipe.execute() if d]


def fire_stats(r: redis.Redis, job: str) -> dict[str, int]:
    """The scheduler's counters for ``job``."""
    return {k.decode(): int(v) for k, v in r.hgetall(KEYS.job_fire_stats(job)).items()}


def check_exactly_once(r: redis.Redis, job: str) -> list[float]:
    """Assert each fire time has one run, recorded under its fire key; the sorted fire times."""
    runs = runs_of(r, job)
    assert all(run.trigger == Trigger.SCHEDULE for run in runs)
    fired = [run.scheduled_for for run in runs]
    assert None not in fired
    times = sorted(float(t) for t in fired if t is not None)
    dupes = sorted({t for t in times if times.count(t) > 1})
    assert not dupes, f"fire times that fired twice: {dupes}"
    assert len({run.id for run in runs}) == len(runs)
    # No run outside the job's history, and each fire key names its run.
    all_runs = sum(1 for k in r.scan_iter(match=f"{KEYS.prefix}:run:*", count=1000) if k.count(b":") == 2)
    assert all_runs == len(runs), (all_runs, len(runs))
    for run in runs:
        assert run.scheduled_for is not None
        assert r.get(KEYS.fire(job, run.scheduled_for)) == run.id.encode()
    return times


def leader_holder(r: redis.Redis) -> str | None:
    """The lease's value ("<instance>:<pid>") or None."""
    value = r.get(KEYS.leader)
    return value.decode() if value else None


def term(r: redis.Redis) -> int:
    """The current fencing term (0 before any)."""
    return int(r.get(KEYS.leader_term) or 0)


class Replicas:
    """``jobyard scheduler`` processes, each stopped by its pid."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.roles: list[Role] = []

    def start(self, n: int = 1) -> list[Role]:
        """Start ``n`` more replicas."""
        first = len(self.roles)
        new = [Role(["scheduler"], self.env, self.log_dir / f"scheduler{first + i}.log") for i in range(n)]
        self.roles += new
        return new

    def alive(self) -> list[Role]:
        return [role for role in self.roles if role.alive()]

    def leader(self, r: redis.Redis) -> Role | None:
        """The live replica holding the lease."""
        holder = leader_holder(r)
        for role in self.alive():
            if holder and holder.endswith(f":{role.pid}"):
                return role
        return None

    def wait_leader(self, r: redis.Redis, timeout: float = 15.0) -> Role:
        """Wait for a live replica to hold the lease."""
        return wait_until(lambda: self.leader(r), timeout=timeout, what="a scheduler leader")

    def output(self) -> str:
        parts = [f"--- {role.log_path.name} (pid {role.pid})\n{role.output()[-4000:]}" for role in self.roles]
        return "\n".join(parts)

    def stop_all(self) -> None:
        for role in self.roles:
            role.stop()


@pytest.fixture
def replicas(redis_url: str, data_dir: Path, tmp_path: Path) -> Iterator[Callable[..., Replicas]]:
    """Make a ``Replicas`` set on the test's Redis (``**env`` adds variables); all stopped at the end."""
    made: list[Replicas] = []

    def make(url: str | None = None, **env: str) -> Replicas:
        merged = {**FAST_LEASE, **env}
        group = Replicas(role_env(url or redis_url, data_dir, **merged), tmp_path)
        made.append(group)
        return group

    yield make
    for group in made:
        group.stop_all()


def wait_runs(r: redis.Redis, job: str, n: int, timeout: float = 15.0) -> list[Run]:
    """Wait until ``job`` has at least ``n`` runs."""
    wait_until(lambda: r.zcard(KEYS.job_runs(job)) >= n, timeout=timeout, what=f"{n} runs of {job}")
    return runs_of(r, job)
