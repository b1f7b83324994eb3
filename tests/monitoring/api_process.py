"""A real ``jobyard api`` process for the monitoring tests, and the calls they make to it."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.helpers import Role, free_port, role_env, wait_until

ADMIN_TOKEN = "monitoring-test-admin-token-0123456789"
SCRIPT = b"#!/bin/bash\necho hello from a monitored job\n"


class Api:
    """``jobyard api`` on a free loopback port, with an admin token."""

    def __init__(self, redis_url: str, data_dir: Path, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = role_env(redis_url, data_dir, JOBYARD_ADMIN_TOKEN=ADMIN_TOKEN)
        self.role = Role(["api", "--host", "127.0.0.1", "--port", str(self.port)], env, log_path)
        self.http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10
        )
        try:
            wait_until(self._up, timeout=30, what="the API to answer /healthz")
        except AssertionError:
            self.stop()
            raise AssertionError(f"the API did not start:\n{self.role.output()}") from None

    def _up(self) -> bool:
        if not self.role.alive():
            raise AssertionError(f"the API exited:\n{self.role.output()}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def metrics(self) -> httpx.Response:
        """GET /metrics without a token, as Prometheus does."""
        return httpx.get(f"{self.url}/metrics", timeout=10)

    def deploy(self, name: str) -> None:
        """Deploy a one-line bash script as triggered job ``name``."""
        resp = self.http.put(
            f"/api/jobs/{name}",
            params={"filename": "run.sh"},
            content=SCRIPT,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert resp.status_code in (200, 201), resp.text

    def enqueue(self, name: str, **body: object) -> dict[str, object]:
        """POST a run of ``name``; returns the run."""
        resp = self.http.post(f"/api/jobs/{name}/runs", json=body)
        assert resp.status_code in (200, 202), resp.text
        run: dict[str, object] = resp.json()
        return run

    def stop(self) -> None:
        """Stop the process (by its pid) and close the client."""
        self.http.close()
        self.role.stop()
