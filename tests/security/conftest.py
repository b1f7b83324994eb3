"""Fixtures for the security tests: real workers and API processes on the session's Redis."""

from __future__ import annotations

from tests.services.conftest import start_api
from tests.workers.conftest import deploy, settings, store, workers

__all__ = ["deploy", "settings", "start_api", "store", "workers"]
