"""Packages on a worker host: the extracted-package cache, working copies, entry and interpreter.

Interpreters are looked up once at worker start (a version-manager shim on PATH can cost
~120 ms per call), and the entry script chosen for a package is remembered per package hash:
both are per host, since hosts may have different interpreters installed.
"""

from __future__ import annotations

import threading
from pathlib import Path

import redis

from jobyard.entry import Interpreters, choose_entry, command_for
from jobyard.keys import Keys
from jobyard.packages import PackageCache, PackageStore, list_files, working_copy
from jobyard.settings import Settings


class HostPackages:
    """The package side of running scripts on this host."""

    def __init__(self, settings: Settings, client: redis.Redis, keys: Keys) -> None:
        self.store = PackageStore(client, keys)
        self.cache = PackageCache(settings.data_dir / "packages", self.store, settings)
        self.interpreters = Interpreters.detect(settings)
        self._entries: dict[tuple[str, str | None], str] = {}
        self._lock = threading.Lock()

    def extracted(self, sha256: str) -> Path:
        """The package extracted on this host (fetched from Redis the first time)."""
        return self.cache.extracted(sha256)

    def working_copy(self, src: Path, dest: Path) -> None:
        """A private copy of the package for one attempt."""
        working_copy(src, dest)

    def entry_for(self, sha256: str, root: Path, entry: str | None) -> str:
        """The entry script of a package on this host (``settings.job`` entry wins)."""
        key = (sha256, entry)
        with self._lock:
            cached = self._entries.get(key)
        if cached is not None:
            return cached
        chosen = choose_entry(root, list_files(root), entry, self.interpreters)
        with self._lock:
            self._entries[key] = chosen
        return chosen

    def command_for(self, workdir: Path, entry: str) -> list[str]:
        """argv that runs ``entry`` (raises a clear error when its interpreter is missing)."""
        return command_for(workdir, entry, self.interpreters)
