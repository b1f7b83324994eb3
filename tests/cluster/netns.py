"""Hosts made of Linux network namespaces, joined by one bridge, for tests that cut links.

Every host is a namespace with one veth interface (``eth0`` role) and an address in
``SUBNET``; the other end of each veth is attached to a bridge that lives in a namespace of its
own, so the test leaves the root namespace untouched: no address, route or interface is added
there. Cutting a host off sets its bridge-side end down: the host is not told, its packets just
stop arriving, as with a pulled cable or a partition. Everything is removed by ``destroy``
(deleting a namespace deletes the interfaces in it).

Processes run in a host with ``ip netns exec`` (which execs the command, so the pid it is given
is the pid of the command). The test process itself talks to a host's network through
``NetnsCaller``: a thread that has entered the namespace with ``setns(2)``, which switches the
calling thread only, and creates its sockets there.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
SUBNET = "10.213.0"  # a /24 used only inside the test's namespaces
CLONE_NEWNET = 0x40000000


def netns_unavailable() -> str | None:
    """Why namespaces cannot be made here (not root, no ``ip``, not permitted), or None."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces (ip netns add)"
    probe = f"jyprobe{uuid.uuid4().hex[:6]}"
    try:
        made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run ip netns: {exc}"
    if made.returncode != 0:
        return f"ip netns add is not permitted here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    return None


def _ip(*args: str, ns: str | None = None) -> None:
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")


@dataclass(frozen=True)
class Host:
    """One namespace on the bridge."""

    name: str  # short name in the test ("redis", "w1", ...)
    ns: str  # namespace name
    address: str
    bridge_port: str  # the veth end on the bridge (set down to cut the host off)
    nic: str  # the veth end inside the host


class Network:
    """A bridge and the hosts on it (see the module docstring)."""

    def __init__(self) -> None:
        self.tag = f"jy{uuid.uuid4().hex[:5]}"  # keeps names unique and within 15 characters
        self.switch = f"{self.tag}-sw"
        self.hosts: dict[str, Host] = {}
        self._made: list[str] = []

    def create(self) -> None:
        """Make the switch namespace and its bridge."""
        _ip("netns", "add", self.switch)
        self._made.append(self.switch)
        _ip("link", "add", "br0", "type", "bridge", ns=self.switch)
        _ip("link", "set", "br0", "up", ns=self.switch)

    def add_host(self, name: str) -> Host:
        """A new namespace with an address on the bridge, and its loopback up."""
        index = len(self.hosts) + 2
        ns = f"{self.tag}-{name}"
        host = Host(name, ns, f"{SUBNET}.{index}", f"{self.tag}b{index}", f"{self.tag}h{index}")
        _ip("netns", "add", ns)
        self._made.append(ns)
        # Both ends are born in the switch namespace, and one moves into the host: no interface
        # ever appears in the root namespace.
        _ip("link", "add", host.bridge_port, "type", "veth", "peer", "name", host.nic, ns=self.switch)
        _ip("link", "set", host.nic, "netns", ns, ns=self.switch)
        _ip("link", "set", host.bridge_port, "master", "br0", "up", ns=self.switch)
        _ip("addr", "add", f"{host.address}/24", "dev", host.nic, ns=ns)
        _ip("link", "set", host.nic, "up", ns=ns)
        _ip("link", "set", "lo", "up", ns=ns)
        self.hosts[name] = host
        return host

    def cut(self, name: str) -> None:
        """Take host ``name`` off the network (its bridge port down)."""
        _ip("link", "set", self.hosts[name].bridge_port, "down", ns=self.switch)

    def restore(self, name: str) -> None:
        """Put host ``name`` back on the network."""
        _ip("link", "set", self.hosts[name].bridge_port, "up", ns=self.switch)

    def restore_all(self) -> None:
        for name in self.hosts:
            self.restore(name)

    def argv(self, name: str, *command: str) -> list[str]:
        """``command`` run inside host ``name``."""
        return ["ip", "netns", "exec", self.hosts[name].ns, *command]

    def python(self, name: str, *args: str) -> list[str]:
        """This interpreter with ``args``, inside host ``name``."""
        return self.argv(name, sys.executable, *args)

    def destroy(self) -> list[str]:
        """Delete every namespace made (and so every interface); what could not be deleted."""
        left = []
        for ns in reversed(self._made):
            done = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True, timeout=10)
            if done.returncode != 0:
                left.append(f"{ns}: {done.stderr.strip()}")
        self._made.clear()
        return left

    def leftovers(self) -> list[str]:
        """Namespaces of this network that still exist."""
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
        return [line.split()[0] for line in listed.stdout.splitlines() if line.startswith(self.tag)]


class NetnsCaller:
    """Runs calls on one thread that lives in a host's namespace (sockets made there stay there)."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"netns-{ns}", initializer=self._enter)
        self._pool.submit(lambda: None).result(10)  # fail here, not at the first call

    def _enter(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{self.ns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns into {self.ns}: {os.strerror(err)}")
        finally:
            os.close(fd)

    def call(self, fn: Callable[[], T], timeout: float = 30.0) -> T:
        return self._pool.submit(fn).result(timeout)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
