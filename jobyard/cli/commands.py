"""Client commands: the REST resources of the API as ``jobyard deploy|run|runs|logs|...``.

Data goes to stdout (``--json`` prints exactly what the API returned), messages to stderr.
Exit status: 0 ok, 1 failed (the API said no, or the run did not succeed), 2 usage.
"""

from __future__ import annotations

import json
import sys

import click

from jobyard.cli.common import (
    DEADLETTER_COLUMNS,
    JOB_COLUMNS,
    RUN_COLUMNS,
    RUN_FIELDS,
    SCHEDULE_COLUMNS,
    TOKEN_COLUMNS,
    WORKER_COLUMNS,
    before_option,
    emit_json,
    env_pairs,
    fields,
    json_option,
    limit_option,
    log_line,
    note,
    run_summary,
    table,
    when,
    with_client,
)
from jobyard.client import Client

JOB_TYPES = click.Choice(["triggered", "continuous"])
PRIORITIES = click.Choice(["high", "normal", "low"])

# -- jobs -----------------------------------------------------------------------------------------


@click.command()
@click.argument("path", type=click.Path(exists=True))
@click.option("--name", "-n", help="job name (default: the folder or file stem)")
@click.option("--type", "job_type", type=JOB_TYPES, help="override the type in settings.job")
@json_option
@with_client
def deploy(client: Client, path: str, name: str | None, job_type: str | None, as_json: bool) -> None:
    """Deploy or replace a job from a folder, a .zip or a single script."""
    job = client.deploy(path, name=name, type=job_type)
    if as_json:
        emit_json(job)
    note(f"deployed {job.get('name')}: {job.get('type')}, entry {job.get('entry')}, v{job.get('version')}")


@click.command()
@click.argument("name", required=False)
@json_option
@with_client
def jobs(client: Client, name: str | None, as_json: bool) -> None:
    """List the jobs, or show one job."""
    if name:
        job = client.job(name)
        if as_json:
            emit_json(job)
        else:
            fields(job, ["name", "type", "entry", "version", "updated_at", "stopped", "paused", "settings"])
            for key in ("schedule", "latest_run", "instances"):
                if job.get(key) is not None:
                    click.echo(f"{key + ':':<11} {json.dumps(job[key])}")
        return
    items = client.jobs()
    if as_json:
        emit_json({"jobs": items})
        return
    table(items, JOB_COLUMNS, "no jobs deployed")


@click.command()
@click.argument("name")
@with_client
def delete(client: Client, name: str) -> None:
    """Remove a job and its history."""
    client.delete(name)
    note(f"deleted {name}")


@click.command()
@click.argument("name")
@with_client
def start(client: Client, name: str) -> None:
    """Start a continuous job."""
    client.start(name)
    note(f"started {name}")


@click.command()
@click.argument("name")
@with_client
def stop(client: Client, name: str) -> None:
    """Stop a continuous job."""
    client.stop(name)
    note(f"stopped {name}")


# -- runs -----------------------------------------------------------------------------------------


@click.command()
@click.argument("name")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("--priority", "-p", type=PRIORITIES, help="queue level")
@click.option("--idempotency-key", help="the same key for the same job returns the first run")
@click.option("--delay", "delay_s", type=click.FloatRange(min=0), help="start in S seconds, not now")
@click.option("--at", "run_at", help="start no sooner than this ISO 8601 time")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), help="kill after S s")
@click.option("--max-retries", type=click.IntRange(min=0), help="retry a failure up to N times")
@click.option("--env", "-e", multiple=True, callback=env_pairs, help="KEY=VALUE for the script (repeatable)")
@click.option("--callback-url", help="POSTed the final run (signed)")
@click.option("--wait", "-w", is_flag=True, help="wait for the end; exit 1 unless it succeeded")
@click.option("--wait-timeout", type=click.FloatRange(min=0), default=None, help="give up waiting after S s")
@json_option
@with_client
def run(
    client: Client,
    name: str,
    args: tuple[str, ...],
    priority: str | None,
    idempotency_key: str | None,
    delay_s: float | None,
    run_at: str | None,
    timeout_s: float | None,
    max_retries: int | None,
    env: dict[str, str],
    callback_url: str | None,
    wait: bool,
    wait_timeout: float | None,
    as_json: bool,
) -> None:
    """Enqueue a run of NAME; script arguments go after --. Prints the run id."""
    created = client.run(
        name,
        list(args),
        priority=priority,
        idempotency_key=idempotency_key,
        delay_s=delay_s,
        run_at=run_at,
        timeout_s=timeout_s,
        max_retries=max_retries,
        env=env or None,
        callback_url=callback_url,
    )
    if not wait:
        emit_json(created) if as_json else click.echo(created["id"])
        return
    if not as_json:
        click.echo(created["id"])
    final = client.wait(created["id"], timeout_s=wait_timeout)
    if as_json:
        emit_json(final)
    note(run_summary(final))
    if final.get("status") != "succeeded":
        sys.exit(1)


@click.command()
@click.argument("name")
@limit_option
@before_option
@json_option
@with_client
def runs(client: Client, name: str, limit: int, before: str | None, as_json: bool) -> None:
    """A job's runs, newest first."""
    items, cursor = client.runs_page(name, limit=limit, before=before)
    if as_json:
        emit_json({"runs": items, "next": cursor})
        return
    table(items, RUN_COLUMNS, f"no runs of {name}")
    if cursor:
        note(f"more: jobyard runs {name} --before {cursor}")


@click.command()
@click.argument("run_id")
@json_option
@with_client
def show(client: Client, run_id: str, as_json: bool) -> None:
    """One run: status, times, exit code, error, result."""
    item = client.get_run(run_id)
    if as_json:
        emit_json(item)
    else:
        fields(item, RUN_FIELDS)


@click.command()
@click.argument("run_id")
@click.option("--follow", "-f", is_flag=True, help="follow the log live until the run ends")
@with_client
def logs(client: Client, run_id: str, follow: bool) -> None:
    """A run's log (stdout lines INFO, stderr ERR, jobyard's own SYS)."""
    if not follow:
        click.echo(client.log(run_id), nl=False)
        return
    for entry in client.follow(run_id):
        click.echo(log_line(entry))
    if client.last_status:
        note(f"run {run_id} {client.last_status}")


@click.command()
@click.argument("run_id")
@with_client
def cancel(client: Client, run_id: str) -> None:
    """Stop a queued or running run."""
    item = client.cancel(run_id)
    note(f"run {run_id} {item.get('status', 'cancel requested')}")


@click.command()
@click.argument("run_id")
@json_option
@with_client
def retry(client: Client, run_id: str, as_json: bool) -> None:
    """Run a finished run again as a new run (prints the new run id)."""
    item = client.retry(run_id)
    emit_json(item) if as_json else click.echo(item["id"])


# -- dead letters, schedules, cluster ---------------------------------------------------------------


def _list_deadletters(client: Client, as_json: bool, limit: int, before: str | None) -> None:
    items, cursor = client.deadletters_page(limit, before)
    if as_json:
        emit_json({"deadletters": items, "next": cursor})
        return
    table(items, DEADLETTER_COLUMNS, "no dead letters")
    if cursor:
        note(f"more: jobyard dlq list --before {cursor}")


@click.group(invoke_without_command=True)
@json_option
@limit_option
@before_option
@with_client
@click.pass_context
def dlq(ctx: click.Context, client: Client, as_json: bool, limit: int, before: str | None) -> None:
    """Dead letters: runs that failed for good (list, replay RUN_ID, purge RUN_ID)."""
    if ctx.invoked_subcommand is None:
        _list_deadletters(client, as_json, limit, before)


@dlq.command("list")
@json_option
@limit_option
@before_option
@with_client
def dlq_list(client: Client, as_json: bool, limit: int, before: str | None) -> None:
    """List dead letters, newest first."""
    _list_deadletters(client, as_json, limit, before)


@dlq.command("replay")
@click.argument("run_id")
@json_option
@with_client
def dlq_replay(client: Client, run_id: str, as_json: bool) -> None:
    """Enqueue a dead letter again (prints the new run id)."""
    item = client.replay(run_id)
    emit_json(item) if as_json else click.echo(item.get("id", ""))


@dlq.command("purge")
@click.argument("run_id")
@with_client
def dlq_purge(client: Client, run_id: str) -> None:
    """Drop a dead letter."""
    client.purge(run_id)
    note(f"purged {run_id}")


def _list_schedules(client: Client, as_json: bool) -> None:
    items = client.schedules()
    if as_json:
        emit_json({"schedules": items})
        return
    table(items, SCHEDULE_COLUMNS, "no scheduled jobs")


@click.group(invoke_without_command=True)
@json_option
@with_client
@click.pass_context
def schedules(ctx: click.Context, client: Client, as_json: bool) -> None:
    """Scheduled jobs and their next fire times (pause JOB, resume JOB)."""
    if ctx.invoked_subcommand is None:
        _list_schedules(client, as_json)


@schedules.command("pause")
@click.argument("job")
@with_client
def schedules_pause(client: Client, job: str) -> None:
    """Pause a job's schedule."""
    client.pause(job)
    note(f"paused the schedule of {job}")


@schedules.command("resume")
@click.argument("job")
@with_client
def schedules_resume(client: Client, job: str) -> None:
    """Resume a job's schedule."""
    client.resume(job)
    note(f"resumed the schedule of {job}")


@click.command()
@json_option
@with_client
def status(client: Client, as_json: bool) -> None:
    """The cluster: workers, queue depths per priority, dead letters, scheduler leader."""
    info = client.cluster()
    if as_json:
        emit_json(info)
        return
    queues = info.get("queues") or {}
    scheduler = info.get("scheduler") or {}
    click.echo(
        "queues:       " + "  ".join(f"{k} {queues.get(k, 0)}" for k in ("high", "normal", "low", "delayed"))
    )
    click.echo(f"dead letters: {info.get('dead_letters', 0)}")
    leader = scheduler.get("leader")
    since = f" since {when(scheduler.get('since'))}" if leader and scheduler.get("since") else ""
    click.echo(
        f"scheduler:    {leader or 'no leader'}"
        + (f" (term {scheduler.get('term')}){since}" if leader else "")
    )
    click.echo("")
    table(
        info.get("workers") or [],
        WORKER_COLUMNS,
        "no workers alive",
    )


# -- tokens -------------------------------------------------------------------------------------


@click.group()
def token() -> None:
    """API tokens: create, list, revoke."""


@token.command("create")
@click.option("--role", "-r", required=True, type=click.Choice(["viewer", "operator", "admin"]))
@click.option("--name", help="what the token is for")
@click.option("--expires-in", "expires_in_s", type=click.FloatRange(min=1), help="seconds until it expires")
@json_option
@with_client
def token_create(
    client: Client, role: str, name: str | None, expires_in_s: float | None, as_json: bool
) -> None:
    """Make a token; the secret is printed once, on stdout."""
    item = client.create_token(role, name=name, expires_in_s=expires_in_s)
    if as_json:
        emit_json(item)
    else:
        click.echo(item["token"])
    label = f"{item.get('id')} ({name})" if name else item.get("id")
    note(f"created {role} token {label}; store it now, it is shown once")


@token.command("list")
@json_option
@with_client
def token_list(client: Client, as_json: bool) -> None:
    """List tokens (never their secrets)."""
    items = client.tokens()
    if as_json:
        emit_json({"tokens": items})
        return
    table(items, TOKEN_COLUMNS, "no tokens (the admin token from JOBYARD_ADMIN_TOKEN is not listed)")


@token.command("revoke")
@click.argument("token_id")
@with_client
def token_revoke(client: Client, token_id: str) -> None:
    """Revoke a token now."""
    client.revoke_token(token_id)
    note(f"revoked {token_id}")


COMMANDS: list[click.Command] = [
    deploy, jobs, delete, start, stop, run, runs, show, logs, cancel, retry, dlq, schedules, status, token,
]  # fmt: skip


def register(group: click.Group) -> None:
    """Add the client commands to the ``jobyard`` group."""
    for command in COMMANDS:
        group.add_command(command)
