"""Running scripts under another account: ``JOBYARD_RUN_AS`` or a job's ``run_as``.

The worker (root) switches the child to the account just before exec: supplementary groups,
then the group, then the user, then checks that none of root's ids is left; ``no_new_privs``
keeps set-uid programs (``sudo``, ``su``) from giving any of it back. Root is never a target.

What the account may touch, prepared by the worker before the script starts:

- the working copy and the attempt's ``home`` and ``tmp``: owned by the account, 0700;
- the job's data path: owned by the account, 0700, so a job under another account cannot read it
  (jobs that share one account share access: give tenants accounts of their own);
- the attempt directory itself stays root's (0711), with an empty result file the account owns
  in it, so the script can write its result but cannot plant a link or a FIFO where the worker
  later reads or writes (the shutdown file);
- the directories above them (the data dir, ``work``, ``attempts``, ``jobs``, ``jobs/<name>``):
  0711, passable but not listable; everything else in the data dir (the package cache, pid
  files, uploads) 0700.

The worker's own environment (Redis URL and password, tokens, ``JOBYARD_SECRET_KEY``) is in
``/proc/<worker>/environ``, which only the worker's own account can read.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from jobyard.errors import InvalidInput

log = logging.getLogger(__name__)

PR_SET_NO_NEW_PRIVS = 38
PASSABLE_DIRS = ("work", "attempts", "jobs")
PASSABLE = 0o711  # others may pass through to what they own below, not list or read

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


@dataclass(frozen=True)
class Account:
    """An unprivileged account to run scripts as."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    @property
    def label(self) -> str:
        return f"{self.name} (uid {self.uid}, gid {self.gid})"


def wanted(job_settings: dict[str, object], default: str) -> str:
    """The account a job's runs should use: its ``run_as``, else ``JOBYARD_RUN_AS``, else ''."""
    value = job_settings.get("run_as")
    return str(value) if value else default.strip()


def resolve(name: str) -> Account:
    """Look the account up on this host; refuse root and accounts this worker cannot switch to."""
    try:
        entry = pwd.getpwnam(name) if not name.isdigit() else pwd.getpwuid(int(name))
    except KeyError as exc:
        raise InvalidInput(
            f"run_as account {name!r} does not exist on this host",
            "create it on every worker host (useradd --system --no-create-home NAME)",
        ) from exc
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        raise InvalidInput(
            f"run_as account {name!r} is root (uid {entry.pw_uid}, gid {entry.pw_gid})",
            "scripts never run as root by request: name an unprivileged account",
        )
    me = os.geteuid()
    if me != 0 and entry.pw_uid != me:
        raise InvalidInput(
            f"run_as {name!r} needs a worker running as root (this one is uid {me})",
            "run the worker as root with JOBYARD_RUN_AS, or drop run_as",
        )
    groups = tuple(g for g in os.getgrouplist(entry.pw_name, entry.pw_gid) if g != 0)
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, groups)


def switch_in_child(account: Account) -> None:
    """Become ``account`` for good (for a ``preexec_fn``: plain syscalls only)."""
    if os.geteuid() != 0:
        return  # resolve() allowed this only when we already are that account
    _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    os.setgroups(list(account.groups))
    os.setgid(account.gid)
    os.setuid(account.uid)
    # setuid as root sets real, effective and saved ids; check, since running as root by
    # mistake is the one failure that must never pass silently.
    if os.getuid() != account.uid or os.geteuid() != account.uid or os.getegid() != account.gid:
        raise PermissionError("could not drop root before running the script")
    if 0 in os.getgroups():
        raise PermissionError("root's group is still a supplementary group")


def _chown_tree(root: Path, account: Account) -> None:
    """Hand a tree to the account without following links (the tree may hold the job's links)."""
    os.lchown(root, account.uid, account.gid)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            with contextlib.suppress(FileNotFoundError):
                os.lchown(os.path.join(dirpath, name), account.uid, account.gid)


def _owned_dir(path: Path, account: Account, *, recursive: bool) -> None:
    path.mkdir(parents=True, exist_ok=True)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise InvalidInput(f"{path} is a symbolic link", "remove it; jobyard makes this directory itself")
    if recursive or st.st_uid != account.uid:
        _chown_tree(path, account)
    os.chmod(path, 0o700)


def hand_over(
    account: Account,
    data_dir: Path,
    *,
    workdir: Path | None,
    attempt_dir: Path,
    home: Path,
    tmp: Path,
    data: Path,
    result_file: Path,
) -> None:
    """Set owners and modes as the module docstring lists, before the script starts."""
    _lock_down_data_dir(data_dir)
    for d in (attempt_dir, data.parent):
        d.mkdir(parents=True, exist_ok=True)
        os.chown(d, os.geteuid(), os.getegid())
        os.chmod(d, PASSABLE)
    if workdir is not None:
        _owned_dir(workdir, account, recursive=True)
    for d in (home, tmp):
        _owned_dir(d, account, recursive=True)
    # The job's data survives runs; re-own it only when the account changed (run_as edited).
    _owned_dir(data, account, recursive=False)
    if os.lstat(data).st_uid == account.uid:
        for entry in os.scandir(data):
            if entry.stat(follow_symlinks=False).st_uid != account.uid:
                _chown_tree(data, account)
                break
    fd = os.open(result_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    os.close(fd)
    os.chown(result_file, account.uid, account.gid)


def _lock_down_data_dir(data_dir: Path) -> None:
    """data dir and the run directories: passable (0711); the rest of it: root's alone (0700)."""
    os.chmod(data_dir, PASSABLE)
    for entry in os.scandir(data_dir):
        if entry.is_symlink():
            continue
        path = Path(entry.path)
        if entry.name in PASSABLE_DIRS and entry.is_dir():
            os.chmod(path, PASSABLE)
        else:
            with contextlib.suppress(OSError):
                os.chmod(path, stat.S_IMODE(entry.stat().st_mode) & 0o700)


def reachable(path: Path, account: Account) -> str | None:
    """None if ``account`` can pass every directory above ``path``, else the first one it cannot."""
    for parent in reversed(path.resolve().parents):
        st = parent.stat()
        if st.st_uid == account.uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid in account.groups or st.st_gid == account.gid:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            return str(parent)
    return None
