"""Finding the worker's own cgroup from /proc, on v1, v2 and hybrid layouts (pure parsing)."""

from __future__ import annotations

from pathlib import Path

from workers.cgroups import _below, _mounts, _own_paths

HYBRID = """\
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:44 / /proc rw - proc proc rw
"""
PROC_CGROUP = """\
4:memory:/svc/worker
2:cpu,cpuacct:/svc/worker
8:pids:/
0::/svc/worker
"""
# A container whose cgroup namespace root is its own cgroup: mountinfo shows the mount's root.
CONTAINER = "60 55 0:27 /kubepods/pod1/abc /sys/fs/cgroup ro,nosuid - cgroup2 cgroup rw\n"


def test_hybrid_hosts_give_each_controller_its_own_directory() -> None:
    mounts = {m.point.name: m for m in _mounts(HYBRID)}
    assert set(mounts) == {"cpu,cpuacct", "memory", "pids", "unified"}
    assert "cpuacct" in mounts["cpu,cpuacct"].options and mounts["unified"].fstype == "cgroup2"
    own = _own_paths(PROC_CGROUP)
    assert own == {
        "memory": "/svc/worker",
        "cpu": "/svc/worker",
        "cpuacct": "/svc/worker",
        "pids": "/",
        "": "/svc/worker",
    }
    assert _below(mounts["memory"], own["memory"]) == Path("/sys/fs/cgroup/memory/svc/worker")
    assert _below(mounts["pids"], own["pids"]) == Path("/sys/fs/cgroup/pids")


def test_a_namespaced_mount_root_is_not_repeated() -> None:
    (mount,) = _mounts(CONTAINER)
    assert mount.root == "/kubepods/pod1/abc"
    assert _below(mount, "/kubepods/pod1/abc") == Path("/sys/fs/cgroup")
    assert _below(mount, "/kubepods/pod1/abc/worker") == Path("/sys/fs/cgroup/worker")
