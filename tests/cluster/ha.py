"""A Sentinel-managed Redis on loopback: one master, one replica and three sentinels, each its own process.

Every process listens on a free 127.0.0.1 port with its own directory, is started here and is
stopped by its pid (``stop``). The data nodes keep an append-only file, as a deployment would,
and require a password (``PASSWORD``): the roles must get it to the master through Sentinel.
Sentinels judge a master down after ``down_after_ms`` without an answer and may retry a stuck
failover after ``failover_timeout_ms``; both are far below the defaults so a failover takes a
few seconds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import IN_CI
from tests.helpers import free_port, wait_until

MASTER_NAME = "jobyard-ha"
FILLER_KEY = "jobyard-test:replication-filler"  # outside jobyard's prefix: never read by a role
PASSWORD = "ha-test-password-0123456789abcdef"
QUORUM = 2


def require_binaries() -> tuple[str, str]:
    """``(redis-server, redis-sentinel)`` paths; skips (fails in CI) when one is missing."""
    server, sentinel = shutil.which("redis-server"), shutil.which("redis-sentinel")
    if server and sentinel:
        return server, sentinel
    missing = "redis-server" if not server else "redis-sentinel"
    reason = f"{missing} is not on PATH (Debian package {missing}; .ci/run installs it)"
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)


@dataclass
class Node:
    """One redis-server or sentinel process."""

    name: str
    port: int
    dir: Path
    argv: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        if self.proc is not None:
            self.signal(signal.SIGCONT)  # a paused process would not be reaped otherwise
            self.signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()

    def client(self, **kw: Any) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2.0, socket_connect_timeout=1.0, **kw)

    def log(self, tail: int = 3000) -> str:
        path = self.dir / "redis.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""


class SentinelCluster:
    """The topology (see the module docstring); ``master`` and ``replica`` swap roles on failover."""

    def __init__(self, base: Path, *, down_after_ms: int = 1000, failover_timeout_ms: int = 3000) -> None:
        self.server_bin, self.sentinel_bin = require_binaries()
        self.base = base
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.master = self._data_node("redis-a")
        self.replica = self._data_node("redis-b")
        self.sentinels = [self._sentinel_node(f"sentinel-{i}") for i in range(3)]

    # -- processes -----------------------------------------------------------------------------
    def _data_node(self, name: str) -> Node:
        port, d = free_port(), self.base / name
        argv = [
            self.server_bin,
            "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d),
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
            "--requirepass", PASSWORD, "--masterauth", PASSWORD,
            # the default waits 5 s before a full sync to batch replicas; one replica need not wait
            "--repl-diskless-sync-delay", "0",
            "--logfile", str(d / "redis.log"),
        ]  # fmt: skip
        return Node(name, port, d, argv)

    def _sentinel_node(self, name: str) -> Node:
        port, d = free_port(), self.base / name
        return Node(name, port, d, [self.sentinel_bin, str(d / "sentinel.conf")])

    def _write_sentinel_conf(self, node: Node) -> None:
        node.dir.mkdir(parents=True, exist_ok=True)
        m = MASTER_NAME
        # Sentinel rewrites this file as it learns the topology, so each has its own copy.
        (node.dir / "sentinel.conf").write_text(
            f"port {node.port}\nbind 127.0.0.1\ndaemonize no\ndir {node.dir}\n"
            f"logfile {node.dir / 'redis.log'}\n"
            f"sentinel monitor {m} 127.0.0.1 {self.master.port} {QUORUM}\n"
            f"sentinel auth-pass {m} {PASSWORD}\n"
            f"sentinel down-after-milliseconds {m} {self.down_after_ms}\n"
            f"sentinel failover-timeout {m} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {m} 1\n"
        )

    def start(self) -> None:
        """Start master, replica (synced), then the sentinels; wait until they all know each other."""
        self.master.start()
        self._wait_answering(self.master)
        self.replica.argv += ["--replicaof", "127.0.0.1", str(self.master.port)]
        self.replica.start()
        self.wait_synced(self.master, self.replica)
        for node in self.sentinels:
            self._write_sentinel_conf(node)
            node.start()
        wait_until(self._sentinels_agree, timeout=20, interval=0.1, what="the sentinels to know each other")

    def stop(self) -> None:
        """Stop every process this cluster started, by pid."""
        for node in [*self.sentinels, self.master, self.replica]:
            with contextlib.suppress(Exception):
                node.stop()

    def _wait_answering(self, node: Node) -> None:
        client = node.client(password=PASSWORD)

        def up() -> bool:
            if not node.alive():
                raise AssertionError(f"{node.name} exited:\n{node.log()}")
            with contextlib.suppress(redis.RedisError):
                return bool(client.ping())
            return False

        wait_until(up, timeout=10, what=f"{node.name} to answer")

    def wait_synced(self, master: Node, replica: Node, timeout: float = 15.0) -> None:
        """Wait until ``replica`` is an online replica of ``master``."""
        mc = master.client(password=PASSWORD)

        def synced() -> bool:
            with contextlib.suppress(redis.RedisError):
                info = mc.info("replication")
                for key, value in info.items():
                    if not (key.startswith("slave") and isinstance(value, dict)):
                        continue
                    if int(value.get("port", 0)) == replica.port and value.get("state") == "online":
                        return True
            return False

        wait_until(synced, timeout=timeout, interval=0.05, what=f"{replica.name} to sync from {master.name}")

    def _sentinels_agree(self) -> bool:
        for node in self.sentinels:
            try:
                state = node.client().sentinel_master(MASTER_NAME)
            except redis.RedisError:
                return False
            if (
                state.get("num-slaves", 0) < 1
                or state.get("num-other-sentinels", 0) < len(self.sentinels) - 1
            ):
                return False
        return True

    # -- what the roles are given ----------------------------------------------------------------
    @property
    def sentinel_addresses(self) -> str:
        """``JOBYARD_REDIS_SENTINELS``."""
        return ",".join(f"127.0.0.1:{n.port}" for n in self.sentinels)

    def role_env(self) -> dict[str, str]:
        """The Redis part of a role's environment: Sentinel, never a URL."""
        return {
            "JOBYARD_REDIS_SENTINELS": self.sentinel_addresses,
            "JOBYARD_REDIS_MASTER_NAME": MASTER_NAME,
            "JOBYARD_REDIS_PASSWORD": PASSWORD,
        }

    # -- faults ----------------------------------------------------------------------------------
    def announced_master_port(self) -> int | None:
        """The master port a quorum of sentinels announce right now (None without a quorum)."""
        votes: dict[int, int] = {}
        for node in self.sentinels:
            with contextlib.suppress(redis.RedisError, TypeError):
                _host, port = node.client().sentinel_get_master_addr_by_name(MASTER_NAME)
                votes[int(port)] = votes.get(int(port), 0) + 1
        best = max(votes.items(), key=lambda kv: kv[1], default=None)
        return best[0] if best and best[1] >= QUORUM else None

    def fall_behind(self) -> float:
        """Make the replica fall behind the master, as on a congested or broken link; when it began.

        The replica is paused (SIGSTOP), and the master gets filler writes until it holds at least
        one of them in its own replication buffer: the kernel's socket buffers are full, so every
        write after this one exists on the master only, and dies with it. Keep what follows short:
        a replica paused longer than ``down_after_ms`` is judged down and cannot be promoted.
        """
        self.replica.signal(signal.SIGSTOP)
        at = time.time()
        client = self.master.client(password=PASSWORD)
        blob = b"x" * (1 << 20)
        for _ in range(64):
            client.set(FILLER_KEY, blob)
            pending = client.client_list(_type="replica")
            if pending and int(pending[0].get("omem", 0)) >= len(blob):
                return at
        raise AssertionError("the master never had to buffer replication output for the paused replica")

    def kill_master(self) -> float:
        """SIGKILL the master (then let a paused replica go on); the epoch time of the kill."""
        at = time.time()
        self.master.kill()
        self.replica.signal(signal.SIGCONT)
        return at

    def wait_failover(self, timeout: float = 30.0) -> float:
        """Wait until the sentinels announce the replica as master and it acts as one; swap roles.

        Returns the epoch time the promoted replica was seen answering as master.
        """
        old, new = self.master, self.replica
        client = new.client(password=PASSWORD)

        def promoted() -> bool:
            if self.announced_master_port() != new.port:
                return False
            with contextlib.suppress(redis.RedisError):
                return client.info("replication").get("role") == "master"
            return False

        try:
            wait_until(promoted, timeout=timeout, interval=0.05, what="the sentinels to promote the replica")
        except AssertionError:
            logs = "\n".join(f"--- {n.name}\n{n.log()}" for n in [*self.sentinels, new])
            raise AssertionError(f"no failover within {timeout}s:\n{logs}") from None
        self.master, self.replica = new, old  # the old master: dead, or paused then killed
        return time.time()

    def rejoin_old_master(self) -> None:
        """Restart the killed master from its own files as a replica of the new master.

        What a rebuilt or restarted host's configuration does; Sentinel alone would also turn
        it into a replica, but only after waiting several of its publish periods.
        """
        node = self.replica
        if node.alive():
            return
        if "--replicaof" in node.argv:
            i = node.argv.index("--replicaof")
            del node.argv[i : i + 3]
        node.argv += ["--replicaof", "127.0.0.1", str(self.master.port)]
        node.start()
        self.wait_synced(self.master, node)
