"""A slot hands its attempt directory and working copy to the next attempt only when untouched."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from jobyard.packages import working_copy
from tests.helpers import wait_until
from tests.workers.conftest import enqueue, log_lines, wait_status
from workers.scratch import HOST_TAG, MAX_FILES, Manifest, Scratch

# -- the rules, on the real file system -------------------------------------------------------


def _package(root: Path) -> Path:
    (root / "lib").mkdir(parents=True)
    (root / "run.sh").write_text("echo hi\n")
    (root / "run.sh").chmod(0o755)
    (root / "lib" / "data.txt").write_text("1 2 3\n")
    (root / "lib" / "data.txt").chmod(0o644)
    return root


def _scratch(tmp_path: Path) -> tuple[Scratch, list[Path]]:
    discarded: list[Path] = []
    return Scratch(tmp_path / "data", discarded.append), discarded


def test_an_untouched_copy_is_handed_to_the_next_attempt_of_the_same_package(tmp_path: Path) -> None:
    src = _package(tmp_path / "pkg")
    scratch, discarded = _scratch(tmp_path)
    first = scratch.working_copy("p1", src, working_copy)
    scratch.release_working_copy(first, "p1", reusable=True)
    assert scratch.working_copy("p1", src, working_copy) == first
    assert discarded == []
    # another package on the slot: a new copy; the old one is discarded
    other = scratch.working_copy("p2", src, working_copy)
    assert other != first and discarded == [first]


def test_every_kind_of_change_to_a_copy_makes_the_next_attempt_get_a_new_one(tmp_path: Path) -> None:
    src = _package(tmp_path / "pkg")
    changes = {
        "same size, new bytes": lambda c: (c / "run.sh").write_text("echo ho\n"),
        "appended": lambda c: (c / "lib" / "data.txt").write_text("1 2 3 4\n"),
        "new file": lambda c: (c / "lib" / "new").write_text(""),
        "removed file": lambda c: (c / "lib" / "data.txt").unlink(),
        "mode": lambda c: (c / "run.sh").chmod(0o700),
        "dir mode": lambda c: (c / "lib").chmod(0o700),
        "hard link out": lambda c: os.link(c / "run.sh", tmp_path / f"link-{len(os.listdir(tmp_path))}"),
        "file became a link": lambda c: ((c / "run.sh").unlink(), (c / "run.sh").symlink_to(src / "run.sh")),
        "dir replaced": lambda c: (
            (c / "lib" / "data.txt").unlink(),
            (c / "lib").rmdir(),
            (c / "lib").write_text(""),
        ),
    }
    scratch, discarded = _scratch(tmp_path)
    for what, change in changes.items():
        copy = scratch.working_copy("p1", src, working_copy)
        change(copy)
        scratch.release_working_copy(copy, "p1", reusable=True)
        assert discarded[-1:] == [copy], what
        fresh = scratch.working_copy("p1", src, working_copy)
        assert fresh != copy, what
        assert Manifest.of(src).matches(os.fspath(fresh), os.geteuid()), what  # type: ignore[union-attr]
        scratch.release_working_copy(fresh, "p1", reusable=True)


def test_a_copy_handed_to_another_account_or_of_a_big_package_is_never_kept(tmp_path: Path) -> None:
    src = _package(tmp_path / "pkg")
    scratch, discarded = _scratch(tmp_path)
    copy = scratch.working_copy("p1", src, working_copy)
    scratch.release_working_copy(copy, "p1", reusable=False)
    assert discarded == [copy]
    big = tmp_path / "big"
    big.mkdir()
    for i in range(MAX_FILES + 1):
        (big / f"f{i}").write_text("x")
    assert Manifest.of(big) is None
    first = scratch.working_copy("big", big, working_copy)
    scratch.release_working_copy(first, "big", reusable=True)
    assert discarded[-1] == first
    assert scratch.working_copy("big", big, working_copy) != first


def test_an_attempt_dir_is_kept_only_when_emptied_back(tmp_path: Path) -> None:
    scratch, discarded = _scratch(tmp_path)
    first = scratch.attempt_dir()
    assert sorted(os.listdir(first)) == ["home", "tmp"]
    (first / "result.json").write_text("{}")  # jobyard's own files are removed, not judged
    (first / "shutdown").write_text("")
    scratch.release_attempt_dir(first, reusable=True)
    assert scratch.attempt_dir() == first and sorted(os.listdir(first)) == ["home", "tmp"]
    for change in (
        lambda d: (d / "tmp" / "left").write_text("x"),
        lambda d: (d / "home" / ".cache").mkdir(),
        lambda d: (d / "other").write_text(""),
        lambda d: (d / "tmp").chmod(0o777),
    ):
        d = scratch.attempt_dir()
        change(d)
        scratch.release_attempt_dir(d, reusable=True)
        assert discarded[-1] == d
        assert scratch.attempt_dir() != d
    d = scratch.attempt_dir()
    scratch.release_attempt_dir(d, reusable=False)
    assert discarded[-1] == d


def test_each_thread_is_a_slot_of_its_own(tmp_path: Path) -> None:
    scratch, _ = _scratch(tmp_path)
    got: list[Path] = []
    threads = [threading.Thread(target=lambda: got.append(scratch.attempt_dir())) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(set(got)) == 3
    scratch.close()


def test_sweep_removes_only_what_dead_workers_of_this_host_left(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(10)  # its pid is free now (and not reused within this test, in practice)
    data = tmp_path / "data"
    left = [data / "attempts" / f"s{HOST_TAG}-{dead.pid}.0.0", data / "work" / f"s{HOST_TAG}-{dead.pid}.1.3"]
    kept = [
        data / "attempts" / f"s{HOST_TAG}-{os.getppid()}.0.0",  # a live process
        data / "attempts" / f"s00000000-{dead.pid}.0.0",  # another host's
        data / "attempts" / "01ABC.1",  # a run's own, not a slot's
    ]
    for path in left + kept:
        (path / "tmp").mkdir(parents=True)
    assert Scratch(data, lambda p: None).sweep() == 2
    assert [p.exists() for p in left] == [False, False]
    assert all(p.exists() for p in kept)


# -- through a worker ---------------------------------------------------------------------------
SCRIPT = """echo "wd=$PWD"
echo "tmp=$TMPDIR"
echo "content=$(cat data.txt)"
echo "left=$( (ls -A "$TMPDIR"; ls -A "$HOME") | tr -d '\\n')"
case "$1" in
  dirty) echo changed > data.txt; touch "$TMPDIR/x" ;;
  result) echo '{"ok": true}' > "$JOBYARD_RESULT_FILE" ;;
esac
"""


def test_runs_on_one_slot_reuse_its_dirs_until_one_changes_them(deploy, store, workers, data_dir) -> None:  # type: ignore[no-untyped-def]
    deploy("scratchy", {"run.sh": SCRIPT, "data.txt": "original"})
    role = workers(1)

    def run(*args: str) -> dict[str, str]:
        run_id = enqueue(store, "scratchy", *args)
        done = wait_status(store, run_id, {"succeeded"}, timeout=30)
        out = dict(line.split("=", 1) for stream, line in log_lines(store, run_id) if stream == "INFO")
        out["result"] = repr(done.result)
        return out

    first = run("result")
    assert first["result"] == "{'ok': True}"
    second = run()
    # then: the next run had the same directories, and no result file left over
    assert (second["wd"], second["tmp"]) == (first["wd"], first["tmp"]), (first, second)
    assert second["result"] == "None" and second["left"] == ""
    dirty = run("dirty")
    assert dirty["wd"] == first["wd"]
    after = run()
    # then: the changed copy and the non-empty tmp were not handed on, and are removed
    assert after["content"] == "original" and after["left"] == "", after
    assert after["wd"] != first["wd"] and after["tmp"] != first["tmp"]
    wait_until(lambda: not Path(first["wd"]).exists() and not Path(first["tmp"]).exists(), timeout=10)
    # and a worker that stops leaves nothing behind
    role.stop(timeout=15)
    assert os.listdir(data_dir / "attempts") == [] and os.listdir(data_dir / "work") == []
