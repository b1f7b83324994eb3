"""Role commands: ``api``, ``worker``, ``scheduler`` (and ``up``, all of them on one machine)."""

from __future__ import annotations

import logging
import sys

import click

from jobyard.errors import Unavailable
from jobyard.logs import setup_logging
from jobyard.settings import get_settings


def _check_redis() -> None:
    """``--check``: exit 0 when Redis answers, 1 (with the reason on stderr) when it does not."""
    from jobyard.redis_conn import connect, wait_for_redis

    settings = get_settings()
    settings.redis_connect_timeout_seconds = min(settings.redis_connect_timeout_seconds, 5.0)
    try:
        wait_for_redis(connect(settings), settings)
    except Unavailable as exc:
        click.echo(f"jobyard: {exc.message}", err=True)
        sys.exit(1)
    click.echo("ok", err=True)
    sys.exit(0)


def _fail(exc: Unavailable) -> None:
    click.echo(f"jobyard: {exc.message}" + (f" ({exc.detail})" if exc.detail else ""), err=True)
    sys.exit(1)


@click.command()
@click.option("--host", default=None, help="address to bind (default JOBYARD_API_HOST, 127.0.0.1)")
@click.option("--port", type=int, default=None, help="port (default JOBYARD_API_PORT, 8080)")
@click.option("--check", is_flag=True, help="check that Redis is reachable and exit")
def api(host: str | None, port: int | None, check: bool) -> None:
    """Serve the HTTP API, the dashboard and /metrics."""
    setup_logging(get_settings())
    if check:
        _check_redis()
    from services.server import serve

    try:
        serve(get_settings(), host=host, port=port)
    except Unavailable as exc:
        _fail(exc)


@click.command()
@click.option("--concurrency", "-c", type=int, default=None, help="script slots (JOBYARD_CONCURRENCY)")
@click.option("--check", is_flag=True, help="check that Redis is reachable and exit")
def worker(concurrency: int | None, check: bool) -> None:
    """Run scripts from the queues (any number of workers on any number of hosts)."""
    setup_logging(get_settings())
    if check:
        _check_redis()
    from workers.main import serve

    try:
        sys.exit(serve(get_settings(), concurrency=concurrency))
    except Unavailable as exc:
        _fail(exc)


@click.command()
@click.option("--check", is_flag=True, help="check that Redis is reachable and exit")
def scheduler(check: bool) -> None:
    """Fire scheduled runs (run 2 or more; one is the leader at a time)."""
    setup_logging(get_settings())
    if check:
        _check_redis()
    from scheduler.main import serve

    try:
        sys.exit(serve(get_settings()))
    except Unavailable as exc:
        _fail(exc)


def register(group: click.Group) -> None:
    """Add the role commands to the ``jobyard`` group."""
    for command in (api, worker, scheduler):
        group.add_command(command)
    try:
        from jobyard.cli.up import up
    except ImportError:  # pragma: no cover - during development only
        logging.getLogger(__name__).debug("jobyard up is not available")
    else:
        group.add_command(up)
