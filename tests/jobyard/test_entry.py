"""Entry-script selection and the command that runs it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jobyard.entry import InterpreterMissing, Interpreters, choose_entry, command_for
from jobyard.errors import InvalidInput
from jobyard.settings import Settings


def package(root: Path, files: dict[str, str], executable: tuple[str, ...] = ()) -> list[str]:
    """Write a package tree; the file list as choose_entry gets it."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.chmod(path, 0o755 if name in executable else 0o644)
    return sorted(files)


def host(missing: tuple[str, ...] = (), name: str = "worker-7") -> Interpreters:
    """This host's interpreters, minus the kinds in ``missing``."""
    found = Interpreters.detect(Settings(instance_id=name))
    return Interpreters({k: (None if k in missing else v) for k, v in found.commands.items()}, name)


@pytest.mark.skipif(sys.platform == "win32", reason="Linux/macOS behaviour")
def test_run_cmd_beside_run_sh_runs_run_sh_here(tmp_path: Path) -> None:
    files = package(tmp_path, {"run.cmd": "@echo hi", "run.sh": "echo hi"})
    assert choose_entry(tmp_path, files, None, Interpreters.detect()) == "run.sh"
    # at deploy time (no host in mind) the WebJobs order alone decides
    assert choose_entry(tmp_path, files, None, None) == "run.cmd"


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"run.py": "", "run.sh": ""}, "run.sh"),
        ({"run.js": "", "run.py": ""}, "run.py"),
        ({"run.jar": "", "run.js": ""}, "run.js"),
        ({"a.sh": "", "run.py": ""}, "run.py"),
        ({"RUN.SH": "", "z.sh": ""}, "RUN.SH"),
        ({"lib/run.sh": "", "main.py": ""}, "lib/run.sh"),  # run.* counts only at the root
        ({"b.py": "", "a.py": "", "z.sh": "", "lib/a.sh": ""}, "lib/a.sh"),  # best kind, then by path
        ({"main.js": "", "helper.js": "", "README.md": ""}, "helper.js"),
    ],
)
def test_selection_order(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    names = package(tmp_path, files)
    assert choose_entry(tmp_path, names, None, host()) == expected


def test_kinds_whose_interpreter_is_missing_are_skipped(tmp_path: Path) -> None:
    files = package(tmp_path, {"run.php": "<?php echo 1;", "run.js": "console.log(1)"})
    assert choose_entry(tmp_path, files, None, host(missing=(".php",))) == "run.js"


def test_settings_entry_overrides(tmp_path: Path) -> None:
    files = package(tmp_path, {"run.sh": "", "tools/other.py": ""})
    assert choose_entry(tmp_path, files, "tools/other.py", host()) == "tools/other.py"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("missing.sh", "is not a file in the package"),
        ("../outside.sh", "not a relative path"),
        ("/etc/passwd", "not a relative path"),
        ("tools", "is not a file in the package"),
        ("notes.txt", "is not a runnable script"),
    ],
)
def test_bad_settings_entry(tmp_path: Path, entry: str, message: str) -> None:
    files = package(tmp_path, {"run.sh": "", "tools/x.py": "", "notes.txt": ""})
    with pytest.raises(InvalidInput, match=message):
        choose_entry(tmp_path, files, entry, None)


def test_shebang_with_exec_bit_is_runnable(tmp_path: Path) -> None:
    files = package(
        tmp_path, {"start": "#!/bin/sh\necho from-shebang\n", "notes.txt": ""}, executable=("start",)
    )
    entry = choose_entry(tmp_path, files, None, host())
    assert entry == "start"
    cmd = command_for(tmp_path, entry, host())
    assert cmd == [str(tmp_path / "start")]
    assert subprocess.run(cmd, capture_output=True, timeout=10, check=True).stdout == b"from-shebang\n"


def test_shebang_without_exec_bit_is_not_runnable(tmp_path: Path) -> None:
    files = package(tmp_path, {"start": "#!/bin/sh\necho\n", "README": "read me"})
    with pytest.raises(InvalidInput, match="no runnable script") as exc:
        choose_entry(tmp_path, files, None, None)
    assert "run.sh" in str(exc.value.detail) and "#!" in str(exc.value.detail)


def test_no_runnable_script(tmp_path: Path) -> None:
    files = package(tmp_path, {"data.csv": "a,b", "lib/readme.md": ""})
    with pytest.raises(InvalidInput, match="no runnable script"):
        choose_entry(tmp_path, files, None, host())


def test_missing_interpreter_is_a_clear_error(tmp_path: Path) -> None:
    files = package(tmp_path, {"run.php": "<?php echo 1;"})
    here = host(missing=(".php",), name="worker-7")
    expected = re.escape("run.php needs php, which is not installed on worker host worker-7")
    with pytest.raises(InterpreterMissing, match=expected):
        choose_entry(tmp_path, files, None, here)
    with pytest.raises(InterpreterMissing, match=expected):
        command_for(tmp_path, "run.php", here)
    assert choose_entry(tmp_path, files, None, None) == "run.php"  # deployable: some host may have php


def test_cmd_needs_windows(tmp_path: Path) -> None:
    files = package(tmp_path, {"run.cmd": "@echo hi"})
    here = host(missing=(".cmd", ".bat"))
    with pytest.raises(InterpreterMissing, match="only Windows hosts"):
        choose_entry(tmp_path, files, None, here)


def test_a_shebang_file_runs_directly_when_its_interpreter_is_missing(tmp_path: Path) -> None:
    files = package(tmp_path, {"run.php": "#!/bin/sh\necho direct\n"}, executable=("run.php",))
    here = host(missing=(".php",))
    assert choose_entry(tmp_path, files, None, here) == "run.php"
    assert command_for(tmp_path, "run.php", here) == [str(tmp_path / "run.php")]


def test_commands_by_kind(tmp_path: Path) -> None:
    package(tmp_path, {"a.sh": "", "b.py": "", "c.jar": "", "d.ps1": "", "e.js": "", "f.exe": ""}, ("f.exe",))
    here = Interpreters(
        {
            ".sh": ["/bin/bash"],
            ".py": ["/py"],
            ".jar": ["/java", "-jar"],
            ".ps1": ["/pwsh", "-NoProfile", "-NonInteractive", "-File"],
            ".js": ["/node"],
        },
        "h",
    )
    assert command_for(tmp_path, "a.sh", here) == ["/bin/bash", str(tmp_path / "a.sh")]
    assert command_for(tmp_path, "b.py", here) == ["/py", str(tmp_path / "b.py")]
    assert command_for(tmp_path, "c.jar", here) == ["/java", "-jar", str(tmp_path / "c.jar")]
    assert command_for(tmp_path, "d.ps1", here)[0] == "/pwsh"
    assert command_for(tmp_path, "e.js", here) == ["/node", str(tmp_path / "e.js")]
    assert command_for(tmp_path, "f.exe", here) == [str(tmp_path / "f.exe")]


def test_python_defaults_to_the_workers_own(tmp_path: Path) -> None:
    package(tmp_path, {"run.py": "import sys; print(sys.executable)"})
    cmd = command_for(tmp_path, "run.py", Interpreters.detect(Settings()))
    assert cmd[0] == sys.executable
    out = subprocess.run(cmd, capture_output=True, timeout=30, check=True)
    assert out.stdout.decode().strip() == sys.executable


def test_configured_python_is_used_or_reported(tmp_path: Path) -> None:
    package(tmp_path, {"run.py": ""})
    python3 = shutil.which("python3") or sys.executable
    assert command_for(tmp_path, "run.py", Interpreters.detect(Settings(python=python3)))[0] == python3
    absent = Interpreters.detect(Settings(python="/nonexistent/python9", instance_id="w1"))
    with pytest.raises(InterpreterMissing, match=r"/nonexistent/python9, from JOBYARD_PYTHON"):
        command_for(tmp_path, "run.py", absent)


def test_interpreters_are_resolved_once(tmp_path: Path) -> None:
    found = Interpreters.detect(Settings())
    assert found.commands[".sh"] == [shutil.which("bash")]
    # the lookups are done: changing PATH afterwards does not change the commands
    saved = os.environ["PATH"]
    os.environ["PATH"] = str(tmp_path)
    try:
        assert found.prefix(".sh") == [shutil.which("bash", path=saved)]
    finally:
        os.environ["PATH"] = saved


def test_run_a_shell_and_a_node_entry_for_real(tmp_path: Path) -> None:
    package(tmp_path, {"run.sh": "echo sh-ok", "run.js": "console.log('js-ok')"})
    here = Interpreters.detect()
    out = subprocess.run(command_for(tmp_path, "run.sh", here), capture_output=True, timeout=10, check=True)
    assert out.stdout == b"sh-ok\n"
    if here.available(".js"):
        out = subprocess.run(
            command_for(tmp_path, "run.js", here), capture_output=True, timeout=30, check=True
        )
        assert out.stdout == b"js-ok\n"
