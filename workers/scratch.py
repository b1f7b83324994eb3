"""A slot's attempt directory and working copy, handed to its next attempt when left untouched.

On a journaling file system the directories and files of an attempt cost a short run more
system time than anything else the worker does for it (ext4 on a virtual disk: ``mkdir`` ~55 us,
``rmdir`` ~140 us, creating a file ~140 us; a one-file job made five entries per attempt and
removed them again). A slot runs one attempt at a time, so it keeps what its last attempt used
and gives it to the next one when it is provably as new:

- the attempt directory, when nothing is left in it but ``tmp/`` and ``home/``, both empty, and
  the result and shutdown files (removed), each with the mode and owner it was made with;
- the working copy of a package, when its tree has exactly the package's names, every directory
  and file the mode and owner the copy gave it, every file one link and the package's very
  bytes (compared, not judged by timestamps, whose granularity is a clock tick). Packages of
  more than ``MAX_FILES`` files or ``MAX_BYTES`` bytes are copied fresh for every attempt.

Anything else goes to the janitor, and the next attempt gets new ones under new names. An
attempt that runs as another account (``run_as``) never hands anything on: its files were given
to that account. What a script could still do to a kept copy is what it can do to the job's own
data directory anyway: leave state for a later run of the same job; a process that escaped its
process group could change a copy after it was checked, which is why a copy is only ever given
to the same package, on the same slot.

Names are ``s<host>-<worker pid>.<slot>.<n>`` under ``attempts/`` and ``work/`` (``<host>``: a
hash of the host name, so that hosts or containers sharing a data directory never judge each
other's pids); a worker starting removes those of its host whose worker process is gone
(``sweep``).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import socket
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from jobyard.packages import remove_tree

MAX_FILES = 64
MAX_BYTES = 256 * 1024
ATTEMPT_FILES = ("result.json", "shutdown")  # the files jobyard itself names in an attempt dir
ATTEMPT_DIRS = ("tmp", "home")
_MANIFESTS_KEPT = 64
HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Manifest:
    """What a working copy of one package looks like: directories (with their sorted names) and
    files (with their mode and bytes), parents before children; paths relative to the root."""

    dirs: tuple[tuple[str, tuple[str, ...]], ...]
    files: tuple[tuple[str, int, bytes], ...]

    @classmethod
    def of(cls, root: Path | str) -> Manifest | None:
        """The manifest of an extracted package, or None when it is too big to be checked cheaply
        (links are followed, as ``working_copy`` follows them)."""
        dirs: list[tuple[str, tuple[str, ...]]] = []
        files: list[tuple[str, int, bytes]] = []
        budget = [MAX_FILES, MAX_BYTES]

        def walk(path: str, rel: str) -> bool:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
            dirs.append((rel, tuple(e.name for e in entries)))
            for entry in entries:
                sub = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_dir():
                    if not walk(entry.path, sub):
                        return False
                    continue
                st = entry.stat()
                budget[0] -= 1
                budget[1] -= st.st_size
                if budget[0] < 0 or budget[1] < 0 or not stat.S_ISREG(st.st_mode):
                    return False
                with open(entry.path, "rb") as f:
                    files.append((sub, stat.S_IMODE(st.st_mode), f.read(st.st_size + 1)))
            return True

        return cls(tuple(dirs), tuple(files)) if walk(os.fspath(root), "") else None

    def matches(self, root: str, uid: int) -> bool:
        """Whether the tree at ``root`` is still exactly a fresh working copy of this package."""
        try:
            for rel, names in self.dirs:
                path = os.path.join(root, rel) if rel else root
                st = os.lstat(path)
                if not stat.S_ISDIR(st.st_mode) or stat.S_IMODE(st.st_mode) != 0o755 or st.st_uid != uid:
                    return False
                if tuple(sorted(os.listdir(path))) != names:
                    return False
            for rel, mode, data in self.files:
                path = os.path.join(root, rel)
                st = os.lstat(path)
                if (
                    not stat.S_ISREG(st.st_mode)
                    or stat.S_IMODE(st.st_mode) != mode
                    or st.st_nlink != 1
                    or st.st_uid != uid
                    or st.st_size != len(data)
                ):
                    return False
                with open(path, "rb") as f:
                    if f.read(len(data) + 1) != data:
                        return False
        except OSError:
            return False
        return True


@dataclass
class _Slot:
    """What one slot keeps between attempts."""

    index: int
    names: itertools.count[int] = field(default_factory=itertools.count)
    attempt_dir: Path | None = None  # ready: empty tmp/ and home/ inside
    dirs: tuple[str, ...] = ()  # attempt dir, tmp, home (as strings: checked on every run)
    dir_modes: tuple[int, ...] = ()  # their modes as made
    copy: Path | None = None  # a pristine working copy of copy_of
    copy_of: str = ""


class Scratch:
    """The per-slot attempt directories and working copies of one worker process (thread-safe:
    each thread that asks is a slot of its own)."""

    def __init__(self, data_dir: Path, discard: Callable[[Path], None]) -> None:
        self.attempts = data_dir / "attempts"
        self.work = data_dir / "work"
        self.discard = discard  # removes a tree later (the worker's janitor)
        self.pid = os.getpid()
        self.uid = os.geteuid()
        self._local = threading.local()
        self._slots: list[_Slot] = []
        self._lock = threading.Lock()
        self._manifests: OrderedDict[str, Manifest | None] = OrderedDict()

    def _slot(self) -> _Slot:
        slot: _Slot | None = getattr(self._local, "slot", None)
        if slot is None:
            with self._lock:
                slot = _Slot(len(self._slots))
                self._slots.append(slot)
            self._local.slot = slot
        return slot

    def _name(self, slot: _Slot) -> str:
        return f"s{HOST_TAG}-{self.pid}.{slot.index}.{next(slot.names)}"

    # -- the attempt directory -----------------------------------------------------------------
    def attempt_dir(self) -> Path:
        """This slot's attempt directory with empty ``tmp/`` and ``home/``: kept or new."""
        slot = self._slot()
        if slot.attempt_dir is not None:
            return slot.attempt_dir
        path = self.attempts / self._name(slot)
        try:
            os.mkdir(path)
        except FileNotFoundError:  # the first attempt on this data directory
            self.attempts.mkdir(parents=True, exist_ok=True)
            os.mkdir(path)
        base = os.fspath(path)
        dirs = (base, *(os.path.join(base, n) for n in ATTEMPT_DIRS))
        for sub in dirs[1:]:
            os.mkdir(sub)
        slot.attempt_dir, slot.dirs = path, dirs
        slot.dir_modes = tuple(os.lstat(p).st_mode for p in dirs)
        return path

    def release_attempt_dir(self, path: Path, reusable: bool) -> None:
        """After the attempt: keep the directory for the next one if it is as it was made."""
        slot = self._slot()
        if slot.attempt_dir != path:
            self.discard(path)
            return
        if not (reusable and self._attempt_dir_clean(slot.dirs, slot.dir_modes)):
            slot.attempt_dir = None
            self.discard(path)

    def _attempt_dir_clean(self, dirs: tuple[str, ...], modes: tuple[int, ...]) -> bool:
        base = dirs[0]
        try:
            for name in os.listdir(base):
                if name in ATTEMPT_FILES:
                    file = os.path.join(base, name)
                    if stat.S_ISDIR(os.lstat(file).st_mode):
                        return False
                    os.unlink(file)
                elif name not in ATTEMPT_DIRS:
                    return False
            for path, mode in zip(dirs, modes, strict=True):
                st = os.lstat(path)
                if st.st_mode != mode or st.st_uid != self.uid:
                    return False
            return not any(os.listdir(path) for path in dirs[1:])
        except OSError:
            return False

    # -- the working copy ----------------------------------------------------------------------
    def working_copy(self, package: str, src: Path, copy: Callable[[Path, Path], None]) -> Path:
        """A pristine working copy of ``package`` (extracted at ``src``): this slot's kept one if it
        is of this package, else a new one made by ``copy(src, dest)``."""
        slot = self._slot()
        if slot.copy is not None and slot.copy_of == package:
            return slot.copy
        if slot.copy is not None:
            self.discard(slot.copy)
            slot.copy = None
        dest = self.work / self._name(slot)
        try:
            copy(src, dest)
        except BaseException:
            self.discard(dest)
            raise
        if self._manifest(package, src) is not None:
            slot.copy, slot.copy_of = dest, package
        return dest

    def release_working_copy(self, path: Path, package: str, reusable: bool) -> None:
        """After the attempt: keep the copy for the next attempt of the same package if untouched."""
        slot = self._slot()
        if slot.copy != path:
            self.discard(path)
            return
        manifest = self._manifests.get(package)
        if not (reusable and manifest is not None and manifest.matches(os.fspath(path), self.uid)):
            slot.copy = None
            self.discard(path)

    def _manifest(self, package: str, src: Path) -> Manifest | None:
        with self._lock:
            if package in self._manifests:
                self._manifests.move_to_end(package)
                return self._manifests[package]
        manifest = Manifest.of(src)
        with self._lock:
            self._manifests[package] = manifest
            while len(self._manifests) > _MANIFESTS_KEPT:
                self._manifests.popitem(last=False)
        return manifest

    # -- the worker's start and end ------------------------------------------------------------
    def close(self) -> None:
        """Discard what every slot kept (the worker is stopping; its slots are done)."""
        with self._lock:
            slots = list(self._slots)
        for slot in slots:
            for path in (slot.attempt_dir, slot.copy):
                if path is not None:
                    self.discard(path)
            slot.attempt_dir = slot.copy = None

    def sweep(self) -> int:
        """Remove what workers that are gone left under ``attempts/`` and ``work/`` (at start)."""
        removed = 0
        for base in (self.attempts, self.work):
            with contextlib.suppress(FileNotFoundError), os.scandir(base) as entries:
                for entry in entries:
                    pid = _owner(entry.name)
                    if pid is not None and pid != self.pid and not _alive(pid):
                        remove_tree(entry.path)
                        removed += 1
        return removed


def _owner(name: str) -> int | None:
    """The worker pid of a slot directory of this host (``s<host>-<pid>.<slot>.<n>``), else None."""
    head, _, rest = name.partition(".")
    host, _, pid = head.partition("-")
    if host != f"s{HOST_TAG}" or not pid.isdigit() or not rest:
        return None
    return int(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
