"""Which file of a package runs, and with what command.

Order (as Azure WebJobs): ``settings.job``'s ``entry`` if given; else a ``run.*`` at the package
root, by extension in ``KIND_ORDER``, skipping kinds whose interpreter this host lacks (so
``run.cmd`` beside ``run.sh`` runs ``run.sh`` on Linux); else the first file, by path, of the best
extension in that order (files in folders count too). A file with a ``#!`` line and the exec bit
is runnable too, after the known extensions. Interpreters are found once per process
(``Interpreters.detect``): resolving ``python3`` through a version-manager shim on every run
costs ~120 ms.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath

from jobyard.errors import InvalidInput
from jobyard.settings import Settings

KIND_ORDER = (".cmd", ".bat", ".exe", ".ps1", ".sh", ".py", ".php", ".js", ".jar")
SHEBANG = "shebang"  # kind of an executable file with a #! line and no known extension

# kind -> (program looked up on PATH, arguments that go before the script)
_PROGRAMS: dict[str, tuple[str, tuple[str, ...]]] = {
    ".sh": ("bash", ()),
    ".py": ("python", ()),
    ".js": ("node", ()),
    ".php": ("php", ()),
    ".ps1": ("pwsh", ("-NoProfile", "-NonInteractive", "-File")),
    ".jar": ("java", ("-jar",)),
    ".cmd": ("cmd", ("/c",)),
    ".bat": ("cmd", ("/c",)),
}
_DIRECT = frozenset({".exe", SHEBANG})


class InterpreterMissing(InvalidInput):
    """The entry script needs a program this worker host does not have."""

    code = "interpreter_missing"


class Interpreters:
    """The interpreters of this host, resolved once: kind -> command prefix, or None when absent."""

    def __init__(
        self, commands: Mapping[str, list[str] | None], host: str | None = None, python: str = ""
    ) -> None:
        self.commands = dict(commands)
        self.host = host or socket.gethostname()
        self.python = python  # the configured interpreter for .py, for messages

    @classmethod
    def detect(cls, settings: Settings | None = None) -> Interpreters:
        """Look every interpreter up on PATH now; ``.py`` uses ``settings.python``/``JOBYARD_PYTHON``
        when set, else this process's own Python."""
        python = settings.python if settings is not None else os.environ.get("JOBYARD_PYTHON", "")
        windows = sys.platform == "win32"
        commands: dict[str, list[str] | None] = {}
        for kind, (program, args) in _PROGRAMS.items():
            path: str | None
            if kind in (".cmd", ".bat") and not windows:
                path = None
            elif kind == ".py":
                path = _resolve(python) if python else (sys.executable or shutil.which("python3"))
            else:
                path = shutil.which(program)
            commands[kind] = [path, *args] if path else None
        host = settings.instance_id if settings is not None else None
        return cls(commands, host, python=python)

    def available(self, kind: str) -> bool:
        """Whether scripts of this kind can run here."""
        return kind in _DIRECT or self.commands.get(kind) is not None

    def prefix(self, kind: str) -> list[str] | None:
        """The command that goes before the script path, or None when it cannot run here."""
        if kind in _DIRECT:
            return []
        return self.commands.get(kind)


def _resolve(program: str) -> str | None:
    if os.sep in program or (os.altsep and os.altsep in program):
        return program if os.access(program, os.X_OK) else None
    return shutil.which(program)


def program_name(kind: str) -> str:
    """The program a kind of script needs, as a person would name it."""
    return _PROGRAMS[kind][0]


def _has_shebang_and_exec(path: Path) -> bool:
    try:
        if not path.is_file() or not os.stat(path).st_mode & 0o111:
            return False
        with open(path, "rb") as f:
            return f.read(2) == b"#!"
    except OSError:
        return False


def kind_of(root: Path, name: str) -> str | None:
    """The kind of a package file (its known extension, ``shebang``), or None if it cannot run."""
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in KIND_ORDER:
        return suffix
    return SHEBANG if _has_shebang_and_exec(root / name) else None


def check_entry_path(entry: str) -> str:
    """``entry`` if it is a relative '/' path inside a package; else ``InvalidInput``."""
    parts = entry.split("/")
    if (
        not entry
        or entry.startswith("/")
        or "\\" in entry
        or "\x00" in entry
        or (len(entry) > 1 and entry[1] == ":")
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise InvalidInput(
            f"entry {entry!r} is not a relative path inside the package",
            "give a path like 'run.sh' or 'bin/start.py', with '/' and no '..'",
        )
    return entry


def _supported() -> str:
    kinds = ", ".join(f"run{k}" for k in KIND_ORDER)
    return f"{kinds}, any file of those kinds, or an executable file with a #! line"


def choose_entry(root: Path, files: list[str], entry: str | None, interpreters: Interpreters | None) -> str:
    """The package file to run. ``interpreters`` None ignores what this host has (deploy-time check)."""
    if entry:
        check_entry_path(entry)
        target = root / entry
        if entry not in set(files) or not target.is_file() or target.is_symlink():
            raise InvalidInput(
                f"settings.job entry {entry!r} is not a file in the package",
                "fix 'entry' or add that file to the package",
            )
        if kind_of(root, entry) is None:
            raise InvalidInput(
                f"settings.job entry {entry!r} is not a runnable script",
                f"use one of: {_supported()}",
            )
        return entry

    def runnable_here(kind: str, name: str) -> bool:
        if interpreters is None or interpreters.available(kind):
            return True
        # No interpreter for the extension, but the file says how to run itself.
        return kind not in (".cmd", ".bat") and _has_shebang_and_exec(root / name)

    first: tuple[str, str] | None = None
    for kind, name in _candidates(root, sorted(files)):
        if runnable_here(kind, name):
            return name
        first = first or (kind, name)
    if first is not None and interpreters is not None:
        raise _missing(first[1], first[0], interpreters)
    raise InvalidInput(
        "no runnable script in the package",
        f"add one of: {_supported()}; or name it in settings.job 'entry'",
    )


def _candidates(root: Path, ordered: list[str]) -> Iterator[tuple[str, str]]:
    """(kind, file) in order of preference; lazy, so files are only opened when it gets that far."""
    root_runs = [f for f in ordered if "/" not in f and PurePosixPath(f).stem.lower() == "run"]
    for kind in KIND_ORDER:
        yield from ((kind, f) for f in root_runs if PurePosixPath(f).suffix.lower() == kind)
    yield from ((SHEBANG, f) for f in root_runs if kind_of(root, f) == SHEBANG)
    for kind in KIND_ORDER:
        yield from ((kind, f) for f in ordered if PurePosixPath(f).suffix.lower() == kind)
    yield from ((SHEBANG, f) for f in ordered if kind_of(root, f) == SHEBANG)


def _missing(entry: str, kind: str, interpreters: Interpreters) -> InterpreterMissing:
    program = program_name(kind)
    if kind in (".cmd", ".bat"):
        return InterpreterMissing(
            f"{entry} needs cmd, which only Windows hosts have (worker host {interpreters.host})",
            "add a run.sh beside it, or run this job on Windows workers",
        )
    if kind == ".py" and interpreters.python:
        program = f"python ({interpreters.python}, from JOBYARD_PYTHON)"
    hint = "install it or set JOBYARD_PYTHON" if kind == ".py" else "install it on the worker host"
    return InterpreterMissing(
        f"{entry} needs {program}, which is not installed on worker host {interpreters.host}", hint
    )


def command_for(root: Path, entry: str, interpreters: Interpreters) -> list[str]:
    """The argv (without the run's arguments) that runs ``entry`` of the package at ``root``."""
    check_entry_path(entry)
    path = root / entry
    kind = kind_of(root, entry)
    if kind is None:
        raise InvalidInput(f"{entry} is not a runnable script", f"use one of: {_supported()}")
    if kind == ".exe" and not os.access(path, os.X_OK):
        raise InvalidInput(f"{entry} is not executable", "chmod +x it before zipping")
    prefix = interpreters.prefix(kind)
    if prefix is None:
        if _has_shebang_and_exec(path) and kind not in (".cmd", ".bat"):
            return [str(path)]  # no interpreter for the extension, but the file says how to run it
        raise _missing(entry, kind, interpreters)
    return [*prefix, str(path)]
