"""One attempt of a claimed run on this host: package, working copy, environment, process, outcome."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobyard.errors import JobyardError
from jobyard.models import Job, Run, RunStatus
from jobyard.runs import LOG_SYS
from jobyard.secrets import load_for_run
from workers.confinement import Confinement
from workers.environment import RunPaths, build_env
from workers.output import RunLog
from workers.runner import AttemptOutcome, ScriptRunner, StopControl, StopReason
from workers.scratch import Scratch

if TYPE_CHECKING:
    from workers.worker import Worker as WorkerContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobRunSettings:
    """The settings.job values an attempt needs, with their defaults."""

    timeout_s: float | None
    stopping_wait_s: float
    in_place: bool
    entry: str | None
    env: dict[str, str]
    max_output_bytes: int
    retry_min_s: float
    retry_max_s: float

    @classmethod
    def of(
        cls, job: Job, run: Run, default_stopping_wait_s: float, default_max_output_mb: float
    ) -> JobRunSettings:
        """Read them from the job's (deploy-time validated) settings."""
        js = job.settings
        backoff = js.get("retry_backoff") or {}
        timeout = run.timeout_s if run.timeout_s is not None else js.get("timeout")
        return cls(
            timeout_s=float(timeout) if timeout else None,
            stopping_wait_s=float(js.get("stopping_wait_time", default_stopping_wait_s)),
            in_place=bool(js.get("is_in_place", False)),
            entry=js.get("entry"),
            env=dict(js.get("env") or {}),
            max_output_bytes=int(float(js.get("max_output_mb", default_max_output_mb)) * 1024 * 1024),
            retry_min_s=float(backoff.get("min", 1.0)),
            retry_max_s=float(backoff.get("max", 60.0)),
        )


@dataclass
class AttemptResult:
    """How the attempt ended, and the log lines still to be written with the outcome."""

    status: RunStatus
    job_settings: JobRunSettings
    lines: list[tuple[float, str, str]] = field(default_factory=list)
    exit_code: int | None = None
    error: str | None = None
    result: Any = None
    package: str | None = None
    interrupted: bool = False  # worker stopping: back on the queue, not a failure
    lease_lost: bool = False  # another attempt owns the run now: record nothing

    def fields(self) -> dict[str, Any]:
        """Run fields to record."""
        return {
            "exit_code": self.exit_code,
            "error": self.error,
            "result": self.result,
            "package": self.package,
        }


def describe_exit(code: int | None) -> str:
    """``exit code 3`` or ``killed by SIGKILL``."""
    if code is None:
        return "no exit code"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def run_attempt(
    ctx: WorkerContext,
    run: Run,
    job: Job,
    *,
    control: StopControl | None = None,
    extra_env: dict[str, str] | None = None,
    secrets_raw: dict[bytes, bytes] | None = None,
    scratch: Scratch | None = None,
) -> AttemptResult:
    """Prepare and run attempt ``run.attempt`` of ``run``; never raises for the script's faults.

    ``scratch``: the slot's kept attempt directory and working copy (``workers.scratch``); without
    it the attempt gets new ones, named after the run, removed when it ends."""
    s = ctx.settings
    js = JobRunSettings.of(job, run, s.default_stopping_wait_seconds, s.max_output_mb)
    base = f"{run.id}.{run.attempt}"
    runlog = RunLog(lambda lines: ctx.write_log(run.id, lines), js.max_output_bytes)
    control = control or StopControl()
    ctx.register(run.id, control, job)
    attempt_dir: Path | None = None
    workdir: Path | None = None
    conf: Confinement | None = None
    in_place = js.in_place
    try:
        data = job_data_dir(s.data_dir, job.name)
        if scratch is not None:
            attempt_dir = scratch.attempt_dir()
        else:
            attempt_dir = s.data_dir / "attempts" / base
            make_attempt_dirs(attempt_dir)
        paths = RunPaths(
            workdir=s.data_dir / "work" / base,
            data=data,
            attempt_dir=attempt_dir,
            home=attempt_dir / "home",
        )
        try:
            conf = Confinement.for_attempt(s, job.settings, base)
            in_place = js.in_place and conf.account is None  # the package cache is shared: never hand it over
            package_root = ctx.cache.extracted(job.package)
            if in_place:
                workdir = package_root
            elif scratch is not None and conf.account is None:
                workdir = scratch.working_copy(job.package, package_root, ctx.working_copy)
            else:
                workdir = paths.workdir
                ctx.working_copy(package_root, workdir)
            entry = ctx.entry_for(job, package_root, js.entry)
            argv = [*ctx.command_for(workdir, entry), *run.args]
            secrets = ctx.retrying(
                lambda: load_for_run(ctx.client, ctx.keys, s, job.name, raw=secrets_raw), "read secrets"
            )
            conf.prepare(
                s.data_dir,
                workdir=None if in_place else workdir,
                attempt_dir=paths.attempt_dir,
                home=paths.home,
                tmp=paths.tmp,
                data=paths.data,
                result_file=paths.result_file,
            )
        except (JobyardError, OSError) as exc:
            message = getattr(exc, "message", None) or str(exc)
            runlog.add(LOG_SYS, f"attempt {run.attempt} could not start: {message}")
            return AttemptResult(
                RunStatus.FAILED, js, runlog.take_pending(), error=message, package=job.package
            )
        env = {**build_env(s, job, run, paths, job_env=js.env, extra=extra_env), **secrets}
        runlog.mask(secrets.values())
        runner = ScriptRunner(
            argv,
            cwd=workdir,
            env=env,
            log=runlog,
            shutdown_file=paths.shutdown_file,
            result_file=paths.result_file,
            timeout_s=js.timeout_s,
            stopping_wait_s=js.stopping_wait_s,
            max_line_bytes=s.max_line_bytes,
            max_result_bytes=s.max_result_bytes,
            control=control,
            preexec=conf.preexec if conf.needs_preexec else None,
        )
        runlog.add(
            LOG_SYS,
            f"attempt {run.attempt} on {s.instance_id} (worker pid {ctx.pid}): {shlex.join(argv)}",
        )
        runlog.add(LOG_SYS, conf.describe())
        if ctx.stopping:
            control.request(StopReason.SHUTDOWN)
        try:
            pid = runner.start()
        except (OSError, subprocess.SubprocessError) as exc:
            message = f"could not start {argv[0]}: {getattr(exc, 'strerror', None) or exc}"
            runlog.add(LOG_SYS, message)
            return AttemptResult(
                RunStatus.FAILED, js, runlog.take_pending(), error=message, package=job.package
            )
        conf.started(pid)
        ctx.track_process(run.id, pid)
        ctx.hooks.emit("after_start", run, job, pid)
        try:
            outcome = runner.wait()
        finally:
            ctx.untrack_process(run.id)
        limit_error = conf.finish(outcome.exit_code, [*runlog.error_tail, *runlog.last_lines])
        return _judge(run, js, runlog, outcome, job.package, limit_error)
    finally:
        ctx.unregister(run.id)
        # What was handed to a run_as account is never handed on (see workers.scratch).
        reusable = conf is not None and conf.account is None
        if conf is not None:
            conf.close()
        if workdir is not None and not in_place:
            if scratch is not None:
                scratch.release_working_copy(workdir, job.package, reusable)
            else:
                ctx.remove_tree(workdir)
        if attempt_dir is not None:
            if scratch is not None:
                scratch.release_attempt_dir(attempt_dir, reusable)
            else:
                ctx.remove_tree(attempt_dir)


_DATA_DIRS: dict[tuple[Path, str], Path] = {}  # jobs' data directories this process made or found


def job_data_dir(data_dir: Path, job: str) -> Path:
    """``<data dir>/jobs/<job>/data``, kept across runs: made or found once per process, and
    the same Path object every time after (its str() kept)."""
    path = _DATA_DIRS.get((data_dir, job))
    if path is None:
        path = data_dir / "jobs" / job / "data"
        _make_dir(path)
        _DATA_DIRS[(data_dir, job)] = path
    return path


def make_attempt_dirs(attempt_dir: Path) -> None:
    """An attempt's own directory (new), with its ``tmp`` and ``home``."""
    _make_dir(attempt_dir)
    for name in ("tmp", "home"):
        with contextlib.suppress(FileExistsError):
            os.mkdir(attempt_dir / name)


def _make_dir(path: Path) -> None:
    try:
        os.mkdir(path)
    except FileExistsError:
        pass
    except FileNotFoundError:  # the first run of this job (or on this host)
        path.mkdir(parents=True, exist_ok=True)


def _judge(
    run: Run,
    js: JobRunSettings,
    runlog: RunLog,
    outcome: AttemptOutcome,
    package: str,
    limit_error: str | None = None,
) -> AttemptResult:
    """Turn the process outcome into a run status and an error text."""
    code = outcome.exit_code
    reason = outcome.stop_reason
    took = f"after {outcome.duration_s:.2f} s"
    if outcome.result_error:
        runlog.add(LOG_SYS, outcome.result_error)
    error: str | None = None
    interrupted = lease_lost = False
    if reason is StopReason.LEASE_LOST:
        status, lease_lost = RunStatus.FAILED, True
    elif reason is StopReason.SHUTDOWN and code != 0:
        status, interrupted = RunStatus.QUEUED, True
        error = f"interrupted by a worker shutdown ({describe_exit(code)}); queued again"
    elif reason is StopReason.CANCEL:
        status, error = RunStatus.CANCELLED, f"cancelled while running ({describe_exit(code)})"
    elif reason is StopReason.TIMEOUT:
        status, error = RunStatus.TIMED_OUT, f"timed out after {js.timeout_s:g} s ({describe_exit(code)})"
    elif limit_error:
        status, error = RunStatus.FAILED, f"{limit_error} ({describe_exit(code)})"
    elif code == 0:
        status = RunStatus.SUCCEEDED
    else:
        status = RunStatus.FAILED
        tail = " | ".join(list(runlog.error_tail)[-5:]) or " | ".join(list(runlog.last_lines)[-3:])
        error = describe_exit(code) + (f": {tail}" if tail else "")
        error = error[:2000]
    end = f"{describe_exit(code)} {took}: {'interrupted' if interrupted else status.value}"
    if limit_error:
        end += f" ({limit_error})"
    if runlog.truncated:
        end += f" ({runlog.dropped_bytes} bytes of output over the cap were not stored)"
    runlog.add(LOG_SYS, end)
    return AttemptResult(
        status,
        js,
        runlog.take_pending(),
        exit_code=code,
        error=error,
        result=outcome.result,
        package=package,
        interrupted=interrupted,
        lease_lost=lease_lost,
    )
