"""What the cluster tests share: jobs that record each execution, and reading the records back.

A job's script appends one line per execution to a side-effect file (``<tag> <run id> <attempt>
<epoch s> <instance id>``), so a test sees which attempts really ran, where and when, whatever
the run records say. Lines this short are appended atomically (O_APPEND), also across hosts that
share the file system.
"""

from __future__ import annotations

import contextlib
import shlex
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from jobyard.deploy import deploy_job, update_settings
from jobyard.keys import Keys
from jobyard.models import Run, Trigger
from jobyard.runs import RunStore
from jobyard.settings import Settings
from tests.helpers import wait_until

KEYS = Keys()


@dataclass(frozen=True)
class Execution:
    """One line of a side-effect file."""

    tag: str
    run_id: str
    attempt: int
    t: float
    instance: str


def recording_script(effects: Path, tag: str, *, sleep_s: float = 0.0, done_tag: str | None = None) -> str:
    """A bash script that records its start (``tag``), sleeps ``sleep_s``, then records ``done_tag``."""
    fields = '"$JOBYARD_RUN_ID $JOBYARD_ATTEMPT $EPOCHREALTIME $JOBYARD_INSTANCE_ID"'
    line = f"{fields} >> {shlex.quote(str(effects))}"
    text = f"#!/bin/bash\necho {tag} {line}\n"
    if sleep_s:
        text += f"sleep {sleep_s}\n"
    if done_tag:
        text += f"echo {done_tag} {line}\n"
    return text


def deploy_script(
    client: redis.Redis,
    settings: Settings,
    workdir: Path,
    name: str,
    script: str,
    job_settings: dict[str, Any],
) -> None:
    """Deploy ``script`` as job ``name`` (the real deploy path) with ``job_settings``."""
    path = workdir / f"{name}.sh"
    path.write_text(script)
    deploy_job(client, KEYS, settings, name, path, "run.sh")
    update_settings(client, KEYS, settings, name, job_settings)


def read_executions(path: Path) -> list[Execution]:
    """Every execution recorded in ``path``, in file order."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        tag, run_id, attempt, t, instance = line.split()
        out.append(Execution(tag, run_id, int(attempt), float(t), instance))
    return out


def existing(client: redis.Redis, run_ids: list[str]) -> set[str]:
    """Which of ``run_ids`` have a record (one pipelined round trip)."""
    pipe = client.pipeline(transaction=False)
    for rid in run_ids:
        pipe.exists(KEYS.run(rid))
    return {rid for rid, found in zip(run_ids, pipe.execute(), strict=True) if found}


class RunsNeverEnded(AssertionError):
    """Accepted runs that did not reach a terminal state in time."""


def wait_terminal(store: RunStore, run_ids: list[str], timeout: float) -> dict[str, Run]:
    """Wait until every run is terminal; the runs. Fails naming how many are not, in which states."""
    pending = set(run_ids)
    done: dict[str, Run] = {}

    def check() -> bool:
        with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
            pipe = store.r.pipeline(transaction=False)
            ids = sorted(pending)
            for rid in ids:
                pipe.hgetall(KEYS.run(rid))
            for rid, data in zip(ids, pipe.execute(), strict=True):
                if data and Run.from_hash(data).status.terminal:
                    done[rid] = Run.from_hash(data)
                    pending.discard(rid)
        return not pending

    try:
        wait_until(check, timeout=timeout, interval=0.2, what="every run to end")
    except AssertionError:
        states: Counter[str] = Counter()
        for rid in pending:
            data = store.r.hgetall(KEYS.run(rid))
            states[Run.from_hash(data).status.value if data else "missing"] += 1
        example = sorted(pending)[0]
        raise RunsNeverEnded(
            f"{len(pending)} of {len(run_ids)} runs never ended: {dict(states)}; e.g. {example}: "
            f"{store.r.hgetall(KEYS.run(example))}"
        ) from None
    return done


def runs_of(client: redis.Redis, job: str) -> list[Run]:
    """Every run in ``job``'s history, oldest first."""
    ids = [i.decode() for i in client.zrange(KEYS.job_runs(job), 0, -1)]
    pipe = client.pipeline(transaction=False)
    for rid in ids:
        pipe.hgetall(KEYS.run(rid))
    return [Run.from_hash(d) for d in pipe.execute() if d]


def check_fires_once(client: redis.Redis, job: str) -> list[float]:
    """Assert every scheduled fire time of ``job`` has exactly one run; the sorted fire times."""
    runs = runs_of(client, job)
    assert runs, f"{job} never fired"
    assert all(run.trigger == Trigger.SCHEDULE for run in runs)
    times = [float(run.scheduled_for) for run in runs if run.scheduled_for is not None]
    assert len(times) == len(runs), "a scheduled run without its fire time"
    twice = sorted(t for t, n in Counter(times).items() if n > 1)
    assert not twice, f"fire times that fired more than once: {twice}"
    for run in runs:
        assert run.scheduled_for is not None
        assert client.get(KEYS.fire(job, run.scheduled_for)) == run.id.encode(), run
    return sorted(times)
