"""``jobyard secrets keygen|rotate``: the cluster key of job secrets (talks to Redis, not the API).

Rotation, with no moment at which a worker cannot open a value:

1. ``jobyard secrets keygen`` prints a new key.
2. Set ``JOBYARD_SECRET_KEY=<new>,<old>`` on the API and every worker and restart them: new
   values are written under the new key, old ones still open under the old one.
3. ``JOBYARD_SECRET_KEY=<new> jobyard secrets rotate --old-key <old>`` (or the old key in
   ``JOBYARD_OLD_SECRET_KEY``, which keeps it out of the shell history) re-encrypts every
   stored value under the new key.
4. Set ``JOBYARD_SECRET_KEY=<new>`` everywhere; the old key opens nothing any more.
"""

from __future__ import annotations

import sys

import click

from jobyard import audit, secrets
from jobyard.errors import JobyardError
from jobyard.keys import Keys
from jobyard.redis_conn import connect, describe, wait_for_redis
from jobyard.settings import get_settings


@click.group("secrets")
def secrets_group() -> None:
    """The key that encrypts job secrets: make one, re-encrypt under a new one."""


@secrets_group.command("keygen")
def keygen() -> None:
    """Print a new random key for JOBYARD_SECRET_KEY."""
    click.echo(secrets.new_key())


@secrets_group.command("rotate")
@click.option(
    "--old-key",
    envvar="JOBYARD_OLD_SECRET_KEY",
    help="the key (or keys, comma-separated) the values are stored under now",
)
def rotate(old_key: str | None) -> None:
    """Re-encrypt every job secret under the first key of JOBYARD_SECRET_KEY."""
    settings = get_settings()
    new = settings.secret_key.get_secret_value().strip()
    if not new:
        click.echo("error: set JOBYARD_SECRET_KEY to the new key (jobyard secrets keygen)", err=True)
        sys.exit(2)
    try:
        box = secrets.SecretBox([*new.split(","), *(old_key or "").split(",")])
        client = connect(settings)
        wait_for_redis(client, settings)
        keys = Keys(settings.redis_prefix)
        count = secrets.rotate_all(client, keys, box)
        actor_id, actor_name = audit.cli_actor()
        audit.record(
            client,
            keys,
            audit.AuditEvent(
                action="secrets.rotate",
                target=f"count={count}",
                actor_id=actor_id,
                actor_name=actor_name,
                actor_role="admin",
            ),
            settings.audit_max_events,
        )
    except JobyardError as exc:
        click.echo(f"error: {exc.message}" + (f" ({exc.detail})" if exc.detail else ""), err=True)
        sys.exit(1)
    click.echo(f"re-encrypted {count} secret values under the new key in {describe(settings)}", err=True)


def register(group: click.Group) -> None:
    """Add ``jobyard secrets`` to the command group."""
    group.add_command(secrets_group)
