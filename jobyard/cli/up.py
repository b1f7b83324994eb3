"""``jobyard up``: the whole system on one machine (what ``make run`` calls).

Start order: Redis (embedded unless ``JOBYARD_REDIS_URL``/``JOBYARD_REDIS_SENTINELS`` is set),
then the API, one worker and one scheduler; wait for the API's /readyz; deploy the examples;
print the dashboard URL and the admin token. Stop order (Ctrl-C, SIGTERM, or a child that
died): scheduler and API first (no new runs), then the worker (running scripts are stopped
gracefully and go back on the queue), Redis last.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import click

from jobyard.errors import JobyardError
from jobyard.settings import Settings, get_settings

if TYPE_CHECKING:  # imported when `up` runs, so that every other command starts faster
    from jobyard.client import Client
    from jobyard.embedded import Child, EmbeddedRedis

READY_TIMEOUT_S = 60.0
WORKER_STOP_TIMEOUT_S = 60.0  # the worker waits each script's stopping_wait_time first
_SKIP_EXAMPLES = {"readme", "readme.md", "readme.txt"}


def say(message: str) -> None:
    """A status line on stderr (stdout carries only the banner); a closed stderr must not stop a stop."""
    with contextlib.suppress(OSError):
        click.echo(f"jobyard up: {message}", err=True)


class Stopping:
    """Signal flags: the first SIGINT/SIGTERM asks for a clean stop, a second one hurries it."""

    def __init__(self) -> None:
        self.requested = 0
        self.signal_name = ""

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Only a counter: writing to stderr from a handler can collide with a write in progress.
        self.requested += 1
        self.signal_name = signal.Signals(signum).name

    @property
    def asked(self) -> bool:
        return self.requested > 0

    def urgent(self) -> bool:
        return self.requested > 1


class Stack:
    """Redis and the three roles, started and stopped in order."""

    def __init__(self, settings: Settings, examples: Path | None, concurrency: int) -> None:
        self.settings = settings
        self.examples = examples
        self.concurrency = concurrency
        self.data_dir = Path(settings.data_dir).expanduser().resolve()
        self.redis: EmbeddedRedis | None = None
        self.children: list[Child] = []
        self.stopping = Stopping()
        host = settings.api_host if settings.api_host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        self.url = f"http://{host}:{settings.api_port}"

    def run(self) -> int:
        """Start everything, wait for a signal or a death, stop everything; the exit code."""
        self.stopping.install()
        try:
            code = self._start()
            if code is None:
                code = self._watch()
        finally:
            self._stop()
        return code

    def _start(self) -> int | None:
        """None when everything is up, else the exit code to stop with."""
        from jobyard.client import Client
        from jobyard.embedded import Child, EmbeddedRedis, admin_token, port_in_use

        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if port_in_use(self.settings.api_host, self.settings.api_port):
            say(f"port {self.settings.api_port} is in use on {self.settings.api_host}; set JOBYARD_API_PORT")
            return 1
        token = self.settings.admin_token.get_secret_value() or admin_token(self.data_dir)
        env = self._base_env(token)
        if not (self.settings.redis_url.get_secret_value() or self.settings.redis_sentinels):
            self.redis = EmbeddedRedis(self.data_dir / "redis")
            say(f"starting redis-server (data in {self.redis.dir})")
            self.redis.start()
            env["JOBYARD_REDIS_URL"] = self.redis.url
            say(f"redis-server on 127.0.0.1:{self.redis.port}")
        if self.stopping.asked:
            return 0
        metrics = os.environ.get("JOBYARD_METRICS_PORT")
        self.children = [
            Child("api", ["api"], env),
            # Two metrics listeners on one machine would clash: the scheduler's stays off.
            Child("scheduler", ["scheduler"], env | {"JOBYARD_METRICS_PORT": "0"}),
            Child(
                "worker",
                ["worker", "--concurrency", str(self.concurrency)],
                env | {"JOBYARD_METRICS_PORT": metrics or "0"},
                stop_timeout_s=WORKER_STOP_TIMEOUT_S,
            ),
        ]
        for child in self.children:
            child.start()
        client = Client(self.url, token)
        try:
            if not self._wait_ready(client):
                return 0 if self.stopping.asked else 1
            self._deploy_examples(client)
        finally:
            client.close()
        self._banner(token)
        return None

    def _base_env(self, token: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "JOBYARD_DATA_DIR": str(self.data_dir),
                "JOBYARD_ADMIN_TOKEN": token,
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env

    def _dead(self) -> Child | None:
        return next((c for c in self.children if c.exit_code() is not None), None)

    def _wait_ready(self, client: Client) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline and not self.stopping.asked:
            dead = self._dead()
            if dead is not None:
                say(f"{dead.name} exited with code {dead.exit_code()} while starting; stopping")
                return False
            if client.ready():
                return True
            time.sleep(0.1)
        if not self.stopping.asked:
            say(f"the API at {self.url} was not ready within {READY_TIMEOUT_S:.0f} s; stopping")
        return False

    def _deploy_examples(self, client: Client) -> None:
        from jobyard.client import ApiError

        if self.examples is None:
            return
        if not self.examples.is_dir():
            say(f"warning: no examples folder at {self.examples}")
            return
        for path in sorted(self.examples.iterdir()):
            if path.name.startswith((".", "_")) or path.name.lower() in _SKIP_EXAMPLES:
                continue
            try:
                job = client.deploy(path)
            except ApiError as exc:
                say(f"warning: could not deploy {path.name}: {exc}")
            else:
                say(f"deployed {job.get('name')} ({job.get('type')}, entry {job.get('entry')})")

    def _banner(self, token: str) -> None:
        shown = token if not self.settings.admin_token.get_secret_value() else "(JOBYARD_ADMIN_TOKEN)"
        click.echo(
            "\n".join(
                [
                    "jobyard is up",
                    f"  dashboard:   {self.url}/",
                    f"  admin token: {shown}",
                    f"  cli:         export JOBYARD_URL={self.url} JOBYARD_TOKEN=<the admin token>",
                    "  Ctrl-C stops it.",
                ]
            )
        )
        sys.stdout.flush()

    def _watch(self) -> int:
        while not self.stopping.asked:
            dead = self._dead()
            if dead is not None:
                say(f"{dead.name} exited with code {dead.exit_code()}; stopping the rest")
                return 1
            if self.redis is not None and self.redis.exit_code() is not None:
                say(f"redis-server exited with code {self.redis.exit_code()}; stopping the rest")
                return 1
            time.sleep(0.2)
        return 0

    def _stop(self) -> None:
        if self.stopping.asked:
            say(f"{self.stopping.signal_name}: stopping (once more to hurry)")
        by_name = {c.name: c for c in self.children}
        for name in ("scheduler", "api", "worker"):
            child = by_name.get(name)
            if child is None or child.proc is None:
                continue
            if child.exit_code() is None:
                say(f"stopping {name} (pid {child.pid})")
            try:
                child.stop(urgent=self.stopping.urgent)
            except (OSError, subprocess.SubprocessError) as exc:  # go on with the others
                say(f"could not stop {name} (pid {child.pid}): {exc}")
        if self.redis is not None:
            say("stopping redis-server")
            self.redis.stop(urgent=self.stopping.urgent)
        say("stopped")


@click.command()
@click.option(
    "--examples",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="deploy every job folder or file in this folder once the API is up",
)
@click.option(
    "--concurrency", "-c", type=click.IntRange(1), default=2, show_default=True, help="worker slots"
)
def up(examples: Path | None, concurrency: int) -> None:
    """Start Redis (embedded unless JOBYARD_REDIS_URL), the API, a worker and a scheduler here."""
    from jobyard.logs import setup_logging

    settings = get_settings()
    setup_logging(settings)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request of our own
    try:
        code = Stack(settings, examples, concurrency).run()
    except JobyardError as exc:  # a clear line, not a traceback, for what a user can fix
        say(f"error: {exc.message}" + (f" ({exc.detail})" if exc.detail else ""))
        sys.exit(1)
    except OSError as exc:
        say(f"error: {exc}")
        sys.exit(1)
    sys.exit(code)
