"""Packages: spooling uploads, validating and extracting zips, the Redis store and the host cache."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import subprocess
import sys
import threading
import warnings
import zipfile
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from jobyard.errors import InvalidInput, NotFound, PayloadTooLarge
from jobyard.keys import Keys
from jobyard.packages import (
    PackageCache,
    PackageStore,
    extract_zip,
    file_sha256,
    list_files,
    remove_tree,
    spool_upload,
    validate_zip,
    working_copy,
    wrap_script,
)
from jobyard.settings import Settings
from tests.helpers import REPO

MiB = 1024 * 1024


def make_zip(
    path: Path, members: list[tuple[str, bytes] | zipfile.ZipInfo | tuple[zipfile.ZipInfo, bytes]]
) -> Path:
    """A zip with exactly these members (names are not cleaned up, unlike ZipFile.write)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are wanted by some tests
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for member in members:
                if isinstance(member, zipfile.ZipInfo):
                    zf.writestr(member, b"")
                elif isinstance(member[0], zipfile.ZipInfo):
                    zf.writestr(member[0], member[1])
                else:
                    zf.writestr(member[0], member[1])
    return path


def info(name: str, mode: int = stat.S_IFREG | 0o644) -> zipfile.ZipInfo:
    zi = zipfile.ZipInfo(name)
    zi.create_system = 3
    zi.external_attr = mode << 16
    zi.compress_type = zipfile.ZIP_DEFLATED
    return zi


def everything_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def settings() -> Settings:
    return Settings(max_unpacked_bytes=64 * MiB, max_unpack_ratio=200.0, max_package_files=100)


# -- spooling ------------------------------------------------------------------------------------


def test_spool_upload_writes_the_body(tmp_path: Path) -> None:
    async def body() -> AsyncIterator[bytes]:
        for i in range(5):
            yield bytes([i]) * 1000

    n = asyncio.run(spool_upload(body(), tmp_path / "up", 10_000))
    assert n == 5000
    assert (tmp_path / "up").read_bytes()[:1000] == b"\0" * 1000


def test_spool_upload_stops_at_the_cap_without_reading_the_rest(tmp_path: Path) -> None:
    consumed = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal consumed
        for _ in range(1000):  # 1000 MiB if it were all read
            consumed += 1
            yield b"x" * MiB

    with pytest.raises(PayloadTooLarge, match="larger than"):
        asyncio.run(spool_upload(body(), tmp_path / "up", 3 * MiB))
    assert consumed == 4
    assert not (tmp_path / "up").exists()


# -- validation ----------------------------------------------------------------------------------


def test_valid_zip_lists_its_files(tmp_path: Path, settings: Settings) -> None:
    z = make_zip(
        tmp_path / "ok.zip", [("run.sh", b"echo hi\n"), info("lib/", stat.S_IFDIR | 0o755), ("lib/a.py", b"")]
    )
    assert validate_zip(z, settings) == ["run.sh", "lib/a.py"]


@pytest.mark.parametrize("content", [b"", b"not a zip at all", b"PK\x03\x04" + b"\0" * 40, os.urandom(5000)])
def test_not_a_zip(tmp_path: Path, settings: Settings, content: bytes) -> None:
    (tmp_path / "x.zip").write_bytes(content)
    with pytest.raises(InvalidInput, match="not a valid zip") as exc:
        validate_zip(tmp_path / "x.zip", settings)
    assert "filename" in str(exc.value.detail)


def test_truncated_zip(tmp_path: Path, settings: Settings) -> None:
    z = make_zip(tmp_path / "ok.zip", [("run.sh", os.urandom(10_000))])
    data = z.read_bytes()
    (tmp_path / "cut.zip").write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidInput):
        validate_zip(tmp_path / "cut.zip", settings)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../evil.sh", "'..'"),
        ("a/../../evil.sh", "'..'"),
        ("/etc/evil.sh", "absolute"),
        ("C:/evil.sh", "drive letter"),
        ("c:evil.sh", "drive letter"),
        ("a\\..\\evil.sh", "backslash"),
        ("./run.sh", "'.'"),
        ("a//b.sh", "empty"),
        ("bad\x01name.sh", "control character"),
        ("x" * 300 + ".sh", "longer than 255"),
    ],
)
def test_unsafe_member_names_are_refused_and_nothing_is_written(
    tmp_path: Path, settings: Settings, name: str, why: str
) -> None:
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    z = make_zip(tmp_path / "evil.zip", [("run.sh", b"echo hi"), (name, b"pwned")])
    with pytest.raises(InvalidInput, match=why) as exc:
        validate_zip(z, settings)
    assert "package member" in exc.value.message
    assert "rebuild the zip" in str(exc.value.detail)
    with pytest.raises(InvalidInput):
        extract_zip(z, sandbox / "out", settings)
    assert everything_under(tmp_path) == {"sandbox", "evil.zip"}


def test_symlink_pointing_out_is_refused(tmp_path: Path, settings: Settings) -> None:
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    z = make_zip(
        tmp_path / "link.zip",
        [("run.sh", b"echo"), (info("data", stat.S_IFLNK | 0o777), b"../../../etc/passwd")],
    )
    with pytest.raises(InvalidInput, match="symbolic link"):
        validate_zip(z, settings)
    with pytest.raises(InvalidInput, match="symbolic link"):
        extract_zip(z, sandbox / "out", settings)
    assert everything_under(sandbox) == set()


def test_special_files_and_odd_directories_are_refused(tmp_path: Path, settings: Settings) -> None:
    fifo = make_zip(tmp_path / "fifo.zip", [(info("pipe", stat.S_IFIFO | 0o644), b"")])
    with pytest.raises(InvalidInput, match="special file"):
        validate_zip(fifo, settings)
    odd = make_zip(tmp_path / "dir.zip", [(info("folder", stat.S_IFDIR | 0o755), b"")])
    with pytest.raises(InvalidInput, match="does not end with '/'"):
        validate_zip(odd, settings)


def test_too_many_members(tmp_path: Path) -> None:
    z = make_zip(tmp_path / "many.zip", [(f"f{i}.txt", b"") for i in range(11)])
    with pytest.raises(PayloadTooLarge, match="more than 10"):
        validate_zip(z, Settings(max_package_files=10))
    assert validate_zip(z, Settings(max_package_files=11))


def test_zip_bomb_by_ratio(tmp_path: Path, settings: Settings) -> None:
    z = make_zip(tmp_path / "bomb.zip", [("run.sh", b"echo"), ("zeros.bin", b"\0" * (20 * MiB))])
    assert z.stat().st_size < 100_000
    with pytest.raises(PayloadTooLarge, match="expands"):
        validate_zip(z, settings)
    with pytest.raises(PayloadTooLarge):
        extract_zip(z, tmp_path / "out", settings)
    assert not (tmp_path / "out").exists()


def test_zip_bomb_by_total_size(tmp_path: Path) -> None:
    z = make_zip(tmp_path / "big.zip", [(f"part{i}.bin", os.urandom(600_000)) for i in range(4)])
    small = Settings(max_unpacked_bytes=2 * MiB)
    with pytest.raises(PayloadTooLarge, match="more than 2097152 bytes"):
        validate_zip(z, small)
    assert len(validate_zip(z, Settings(max_unpacked_bytes=3 * MiB))) == 4


def test_a_header_that_understates_the_size_is_caught_while_extracting(tmp_path: Path) -> None:
    # Given a member whose central-directory size says 1,000 bytes while it holds 3 MiB
    z = make_zip(tmp_path / "liar.zip", [("run.sh", b"echo"), ("data.bin", os.urandom(3 * MiB))])
    raw = bytearray(z.read_bytes())
    cd = raw.index(b"PK\x01\x02", raw.index(b"PK\x01\x02") + 4)  # the second central entry: data.bin
    raw[cd + 24 : cd + 28] = (1000).to_bytes(4, "little")
    z.write_bytes(bytes(raw))
    limits = Settings(max_unpacked_bytes=MiB)
    # when it is checked, then extracted: the check believes the header, the extraction does not
    assert validate_zip(z, limits) == ["run.sh", "data.bin"]
    with pytest.raises(InvalidInput):
        extract_zip(z, tmp_path / "out", limits)
    # then nothing is left behind
    assert not (tmp_path / "out").exists()


def test_encrypted_members_are_refused(tmp_path: Path, settings: Settings) -> None:
    # zipfile cannot write encrypted members: set the flag in both headers afterwards
    z = make_zip(tmp_path / "enc.zip", [("secret.sh", b"echo")])
    raw = bytearray(z.read_bytes())
    raw[6] |= 0x1  # local header flag bits
    raw[raw.index(b"PK\x01\x02") + 8] |= 0x1  # central directory flag bits
    z.write_bytes(bytes(raw))
    with pytest.raises(InvalidInput, match="encrypted"):
        validate_zip(z, settings)


def test_duplicate_names_and_file_folder_clashes(tmp_path: Path, settings: Settings) -> None:
    dup = make_zip(tmp_path / "dup.zip", [("run.sh", b"echo 1"), ("run.sh", b"echo 2")])
    with pytest.raises(InvalidInput, match="appears twice"):
        validate_zip(dup, settings)
    clash = make_zip(tmp_path / "clash.zip", [("lib", b"file"), ("lib/x.py", b"")])
    with pytest.raises(InvalidInput, match="both a file and a folder"):
        validate_zip(clash, settings)


def test_extraction_keeps_exec_bits_and_nothing_else(tmp_path: Path, settings: Settings) -> None:
    z = make_zip(
        tmp_path / "modes.zip",
        [
            (info("run.sh", stat.S_IFREG | 0o4755), b"#!/bin/sh\necho hi\n"),
            (info("data.txt", stat.S_IFREG | 0o666), b"data"),
            ("plain.txt", b"no mode"),
            ("deep/er/file.py", b"print(1)"),
        ],
    )
    files = extract_zip(z, tmp_path / "out", settings)
    assert sorted(files) == sorted(list_files(tmp_path / "out"))
    assert stat.S_IMODE(os.stat(tmp_path / "out" / "run.sh").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(tmp_path / "out" / "data.txt").st_mode) == 0o644
    assert (tmp_path / "out" / "deep/er/file.py").read_bytes() == b"print(1)"


# -- single scripts ------------------------------------------------------------------------------


def test_wrap_script_is_reproducible_and_executable(tmp_path: Path, settings: Settings) -> None:
    src = tmp_path / "hello.sh"
    src.write_bytes(b"#!/bin/sh\necho hello\n")
    wrap_script(src, "hello.sh", tmp_path / "a.zip")
    os.utime(src, (1, 1))  # a different mtime must not change the package
    wrap_script(src, "hello.sh", tmp_path / "b.zip")
    assert file_sha256(tmp_path / "a.zip") == file_sha256(tmp_path / "b.zip")
    assert validate_zip(tmp_path / "a.zip", settings) == ["hello.sh"]
    extract_zip(tmp_path / "a.zip", tmp_path / "out", settings)
    out = subprocess.run([str(tmp_path / "out" / "hello.sh")], capture_output=True, timeout=10, check=True)
    assert out.stdout == b"hello\n"


@pytest.mark.parametrize(
    "name", ["", "../x.sh", "a/b.sh", "/x.sh", "..", "a\\b.sh", "C:x.sh", "settings.job"]
)
def test_wrap_script_refuses_names_with_a_path(tmp_path: Path, name: str) -> None:
    src = tmp_path / "s"
    src.write_bytes(b"echo")
    with pytest.raises(InvalidInput, match="script file name"):
        wrap_script(src, name, tmp_path / "out.zip")
    assert not (tmp_path / "out.zip").exists()


# -- the Redis store -----------------------------------------------------------------------------


def test_store_round_trip_of_a_package_over_2_mib(r: redis.Redis, tmp_path: Path) -> None:
    keys = Keys("t")
    store = PackageStore(r, keys)
    z = make_zip(tmp_path / "big.zip", [("run.sh", b"echo"), ("blob.bin", os.urandom(2 * MiB + 12345))])
    assert z.stat().st_size > 2 * MiB
    sha = store.put(z)
    assert sha == hashlib.sha256(z.read_bytes()).hexdigest()
    assert store.exists(sha)
    assert r.ttl(keys.package(sha)) == -1  # the upload TTL did not follow the rename
    assert r.keys("t:pkg:*:upload:*") == []
    assert store.put(z) == sha  # content-addressed: a second put is a no-op
    store.fetch_to(sha, tmp_path / "back.zip")
    assert (tmp_path / "back.zip").read_bytes() == z.read_bytes()


def test_fetch_of_a_missing_or_corrupt_package(r: redis.Redis, tmp_path: Path) -> None:
    keys = Keys("t")
    store = PackageStore(r, keys)
    with pytest.raises(NotFound):
        store.fetch_to("0" * 64, tmp_path / "x")
    with pytest.raises(InvalidInput, match="sha256"):
        store.fetch_to("../../etc/passwd", tmp_path / "x")
    z = make_zip(tmp_path / "p.zip", [("run.sh", b"echo")])
    sha = store.put(z)
    r.setrange(keys.package(sha), 40, b"corrupt")
    with pytest.raises(InvalidInput, match="does not match"):
        store.fetch_to(sha, tmp_path / "back.zip")
    assert not (tmp_path / "back.zip").exists()


def test_refs_delete_the_package_with_its_last_user(r: redis.Redis, tmp_path: Path) -> None:
    keys = Keys("t")
    store = PackageStore(r, keys)
    sha = store.put(make_zip(tmp_path / "p.zip", [("run.sh", b"echo")]))
    assert store.add_ref(sha, "a") and store.add_ref(sha, "b")
    assert store.refs(sha) == {"a", "b"}
    assert store.remove_ref(sha, "a") is False
    assert store.exists(sha)
    assert store.remove_ref(sha, "b") is True
    assert not store.exists(sha)
    assert not r.exists(keys.package_refs(sha))
    assert store.add_ref(sha, "c") is False  # a package that is gone cannot gain a user


# -- the host cache ------------------------------------------------------------------------------


def stored_package(r: redis.Redis, tmp_path: Path) -> tuple[PackageStore, str]:
    store = PackageStore(r, Keys("t"))
    members = [(info("run.sh", stat.S_IFREG | 0o755), b"#!/bin/sh\necho cached\n")]
    members += [(f"lib/m{i}.txt", os.urandom(20_000)) for i in range(20)]
    return store, store.put(make_zip(tmp_path / "p.zip", members))


def test_cache_extracts_once_and_reuses_by_hash(r: redis.Redis, tmp_path: Path, settings: Settings) -> None:
    store, sha = stored_package(r, tmp_path)
    cache = PackageCache(tmp_path / "cache", store, settings)
    first = cache.extracted(sha)
    assert first == tmp_path / "cache" / sha
    assert (first / "run.sh").read_bytes() == b"#!/bin/sh\necho cached\n"
    # Once extracted, the host needs nothing from Redis for it.
    r.delete(store.keys.package(sha))
    assert PackageCache(tmp_path / "cache", store, settings).extracted(sha) == first
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [sha]


def test_cache_is_safe_for_four_threads_at_once(r: redis.Redis, tmp_path: Path, settings: Settings) -> None:
    store, sha = stored_package(r, tmp_path)
    cache = PackageCache(tmp_path / "cache", store, settings)
    start = threading.Barrier(4)

    def extract() -> Path:
        start.wait(timeout=10)
        return cache.extracted(sha)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: extract(), range(4)))
    assert set(results) == {tmp_path / "cache" / sha}
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [sha]
    assert len(list_files(results[0])) == 21


def test_cache_is_safe_for_processes_at_once(r: redis.Redis, redis_url: str, tmp_path: Path) -> None:
    _, sha = stored_package(r, tmp_path)
    code = (
        "import sys, redis\n"
        "from pathlib import Path\n"
        "from jobyard.keys import Keys\n"
        "from jobyard.packages import PackageCache, PackageStore\n"
        "from jobyard.settings import Settings\n"
        "store = PackageStore(redis.Redis.from_url(sys.argv[1]), Keys('t'))\n"
        "print(PackageCache(Path(sys.argv[2]), store, Settings()).extracted(sys.argv[3]))\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, redis_url, str(tmp_path / "cache"), sha],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(3)
    ]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
        outs.append(out.decode().strip())
    assert set(outs) == {str(tmp_path / "cache" / sha)}
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [sha]


def test_cache_of_a_bad_package_leaves_nothing(r: redis.Redis, tmp_path: Path, settings: Settings) -> None:
    store = PackageStore(r, Keys("t"))
    sha = store.put(make_zip(tmp_path / "evil.zip", [("../evil.sh", b"pwned")]))
    cache = PackageCache(tmp_path / "cache", store, settings)
    with pytest.raises(InvalidInput, match=r"'\.\.'"):
        cache.extracted(sha)
    with pytest.raises(NotFound):
        cache.extracted("1" * 64)
    assert list((tmp_path / "cache").iterdir()) == []
    assert everything_under(tmp_path) == {"evil.zip", "cache"}


def test_working_copy_is_independent_of_the_cache(r: redis.Redis, tmp_path: Path, settings: Settings) -> None:
    store, sha = stored_package(r, tmp_path)
    src = PackageCache(tmp_path / "cache", store, settings).extracted(sha)
    working_copy(src, tmp_path / "run1")
    (tmp_path / "run1" / "run.sh").write_text("changed")
    assert os.access(tmp_path / "run1" / "run.sh", os.X_OK)
    assert (src / "run.sh").read_text() == "#!/bin/sh\necho cached\n"


def test_working_copy_keeps_the_tree_and_exact_modes_whatever_the_umask(tmp_path: Path) -> None:
    src = tmp_path / "pkg"
    (src / "lib" / "deep").mkdir(parents=True)
    (src / "run.sh").write_bytes(b"#!/bin/sh\n" + os.urandom(300_000))  # more than one sendfile chunk
    (src / "lib" / "deep" / "data.txt").write_text("x")
    os.chmod(src / "run.sh", 0o755)
    os.chmod(src / "lib" / "deep" / "data.txt", 0o644)
    (src / "linked.txt").symlink_to(src / "lib" / "deep" / "data.txt")
    old = os.umask(0o077)
    try:
        working_copy(src, tmp_path / "work" / "a" / "run1")  # parents made on first use
    finally:
        os.umask(old)
    dest = tmp_path / "work" / "a" / "run1"
    assert (dest / "run.sh").read_bytes() == (src / "run.sh").read_bytes()
    assert stat.S_IMODE((dest / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "lib" / "deep" / "data.txt").stat().st_mode) == 0o644
    assert not (dest / "linked.txt").is_symlink()  # links become files, as in copytree(symlinks=False)
    assert (dest / "linked.txt").read_text() == "x"
    with pytest.raises(FileExistsError):
        working_copy(src, dest)  # never writes into an existing directory


def test_remove_tree_removes_what_a_script_left_even_read_only_and_ignores_missing(tmp_path: Path) -> None:
    top = tmp_path / "attempt"
    (top / "home" / ".cache").mkdir(parents=True)
    (top / "home" / ".cache" / "f").write_text("x")
    (top / "tmp").mkdir()
    (top / "link").symlink_to(tmp_path / "outside")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "keep").write_text("k")
    locked = top / "locked"
    locked.mkdir()
    (locked / "f").write_text("x")
    os.chmod(locked, 0o500)  # root may still delete in it; shutil.rmtree is the fallback otherwise
    remove_tree(top)
    assert not top.exists()
    assert (tmp_path / "outside" / "keep").read_text() == "k"  # a link is removed, never followed
    remove_tree(top)  # already gone: nothing to do
