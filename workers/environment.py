"""The environment a script runs in: jobyard's variables, the WebJobs names, and nothing secret.

A run starts from an empty environment, not the worker's: the worker's holds the Redis URL and
API tokens. Only the names in ``JOBYARD_RUN_ENV_PASSTHROUGH`` (PATH, LANG, LC_ALL, TZ by default)
are copied, then the job's ``env`` from settings.job, then the run request's ``env``, then the
run's own variables, which nothing can override.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from jobyard.models import Job, Run
from jobyard.settings import Settings


@dataclass(frozen=True)
class RunPaths:
    """Where one attempt's files are."""

    workdir: Path  # the working copy (or the package itself with is_in_place)
    data: Path  # per job, per host, kept across runs
    attempt_dir: Path  # private to this attempt: shutdown and result files, temp dir
    home: Path

    # Computed once per attempt: pathlib's joins and str() were a few % of a short run's CPU.
    @cached_property
    def shutdown_file(self) -> Path:
        return self.attempt_dir / "shutdown"

    @cached_property
    def result_file(self) -> Path:
        return self.attempt_dir / "result.json"

    @cached_property
    def tmp(self) -> Path:
        return self.attempt_dir / "tmp"


def build_env(
    settings: Settings,
    job: Job,
    run: Run,
    paths: RunPaths,
    *,
    job_env: dict[str, str],
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """The complete environment of one attempt of ``run``."""
    env: dict[str, str] = {}
    for name in filter(None, (n.strip() for n in settings.run_env_passthrough.split(","))):
        if name in os.environ and not name.startswith("JOBYARD_"):
            env[name] = os.environ[name]
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["HOME"] = str(paths.home)
    env["TMPDIR"] = str(paths.tmp)
    env.update(job_env)
    env.update(run.env)
    args = " ".join(shlex.quote(a) for a in run.args)
    own = {
        "JOBYARD_JOB_NAME": job.name,
        "JOBYARD_JOB_TYPE": job.type.value,
        "JOBYARD_RUN_ID": run.id,
        "JOBYARD_ATTEMPT": str(run.attempt),
        "JOBYARD_DATA_PATH": str(paths.data),
        "JOBYARD_SHUTDOWN_FILE": str(paths.shutdown_file),
        "JOBYARD_RESULT_FILE": str(paths.result_file),
        "JOBYARD_INSTANCE_ID": settings.instance_id,
        "WEBJOBS_NAME": job.name,
        "WEBJOBS_TYPE": job.type.value,
        "WEBJOBS_RUN_ID": run.id,
        "WEBJOBS_DATA_PATH": str(paths.data),
        "WEBJOBS_SHUTDOWN_FILE": str(paths.shutdown_file),
        "WEBJOBS_COMMAND_ARGUMENTS": args,
        "WEBSITE_INSTANCE_ID": settings.instance_id,
    }
    env.update(own)
    if extra:
        env.update(extra)
    return env
