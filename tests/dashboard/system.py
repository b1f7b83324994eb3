"""A real jobyard for the dashboard tests: ``jobyard api`` and ``jobyard worker`` processes on one Redis."""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import Role, free_port, role_env, wait_until

ADMIN_TOKEN = "dashboard-test-admin-token-0123456789abcdef"


class System:
    """An API and a worker (started by pid, stopped by pid), and an admin client of the API."""

    def __init__(
        self, redis_url: str, workdir: Path, worker_slots: int = 3, with_worker: bool = True, **api_env: str
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        data = workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        env = role_env(redis_url, data, JOBYARD_ADMIN_TOKEN=ADMIN_TOKEN, **api_env)
        self.roles: list[Role] = []
        self.api = self._start(
            ["api", "--host", "127.0.0.1", "--port", str(self.port)], env, f"api-{self.port}"
        )
        if with_worker:
            env = role_env(redis_url, data, JOBYARD_METRICS_PORT="0", JOBYARD_INSTANCE_ID="dash-worker-1")
            self._start(["worker", "--concurrency", str(worker_slots)], env, "worker")
        self.http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10
        )
        try:
            wait_until(self._up, timeout=30, what="the API to answer /healthz")
            if with_worker:
                wait_until(self._worker_seen, timeout=30, what="the worker's first heartbeat")
        except BaseException:
            self.stop()
            raise

    def _start(self, args: list[str], env: dict[str, str], name: str) -> Role:
        role = Role(args, env, self.workdir / f"{name}.log")
        self.roles.append(role)
        return role

    def _up(self) -> bool:
        for role in self.roles:
            if not role.alive():
                raise AssertionError(f"{role.args[0]} exited:\n{role.output()}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def _worker_seen(self) -> bool:
        self._up()
        return bool(self.http.get("/api/cluster").json()["workers"])

    def stop(self) -> None:
        """Stop every process by its pid."""
        for role in reversed(self.roles):
            role.stop(timeout=15)
        if hasattr(self, "http"):
            self.http.close()

    # -- API shortcuts for setting up a test ------------------------------------------------------
    def deploy(
        self, name: str, script: str, settings: dict[str, Any] | None = None, entry: str = "run.sh"
    ) -> None:
        """Deploy ``script`` (and a settings.job) as a zip."""
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            info = zipfile.ZipInfo(entry)
            info.external_attr = 0o755 << 16
            zf.writestr(info, script)
            if settings is not None:
                zf.writestr("settings.job", json.dumps(settings))
        resp = self.http.put(
            f"/api/jobs/{name}", content=buf.getvalue(), headers={"Content-Type": "application/zip"}
        )
        assert resp.status_code in (200, 201), resp.text

    def enqueue(self, name: str, **body: Any) -> dict[str, Any]:
        """Enqueue a run through the API."""
        resp = self.http.post(f"/api/jobs/{name}/runs", json=body)
        assert resp.status_code in (200, 202), resp.text
        run: dict[str, Any] = resp.json()
        return run

    def run(self, run_id: str) -> dict[str, Any]:
        """One run as the API shows it."""
        resp = self.http.get(f"/api/runs/{run_id}")
        assert resp.status_code == 200, resp.text
        run: dict[str, Any] = resp.json()
        return run

    def wait_status(self, run_id: str, statuses: set[str], timeout: float = 20.0) -> dict[str, Any]:
        """Wait until the run is in one of ``statuses``."""
        return wait_until(
            lambda: (run := self.run(run_id))["status"] in statuses and run,
            timeout=timeout,
            what=f"run {run_id} to be {statuses}",
        )

    def token(self, role: str) -> tuple[str, str]:
        """A new API token of ``role``: (secret, id)."""
        resp = self.http.post("/api/tokens", json={"role": role, "name": f"dashboard {role}"})
        assert resp.status_code in (200, 201), resp.text
        body = resp.json()
        return body["token"], body["id"]

    def session(self, token: str) -> httpx.Client:
        """A cookie client logged in to the dashboard with ``token`` (no browser)."""
        client = httpx.Client(base_url=self.url, timeout=10, follow_redirects=False)
        form = client.get("/login")
        login_token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert login_token, form.text
        resp = client.post("/login", data={"token": token, "csrf_token": login_token.group(1), "next": "/"})
        assert resp.status_code == 303 and resp.headers["location"] == "/", resp.text
        return client


def csrf_of(html: str) -> str:
    """The CSRF token in a dashboard page."""
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)
