"""The ``jobyard`` command: the role commands that start processes, and the API client commands.

This package is the one place in ``jobyard/`` that imports the roles (``services``, ``workers``,
``scheduler``), and only inside the commands that start them.
"""

from __future__ import annotations

import click

from jobyard import __version__
from jobyard.cli import roles


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="jobyard")
def cli() -> None:
    """jobyard: deploy scripts, run them on demand, continuously or on a schedule."""


roles.register(cli)

try:  # client commands (deploy, run, runs, logs, ...) live in their own module
    from jobyard.cli import commands
except ImportError:  # pragma: no cover - during development only
    commands = None  # type: ignore[assignment]
if commands is not None:
    commands.register(cli)
from jobyard.cli import secrets as _secrets  # noqa: E402 - registered after the client commands

_secrets.register(cli)


def main() -> None:
    """Entry point of the ``jobyard`` console script."""
    cli(prog_name="jobyard")
