"""Job packages: upload spooling, zip validation, wrapping a lone script, and extraction.

A package is a zip. Everything in it is untrusted: member names are checked before anything is
written (no absolute paths, ``..``, backslashes, drive letters, links or device files), sizes
are checked from the central directory and counted again while extracting (headers can lie),
and extraction writes only below a fresh temporary directory that is renamed into place.

``PackageStore`` keeps package zips content-addressed in Redis, where every worker host can
reach them; ``PackageCache`` extracts each one once per host and reuses it for every later run.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import re
import secrets
import shutil
import stat
import struct
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import redis

from jobyard.errors import InvalidInput, NotFound, PayloadTooLarge, Unavailable
from jobyard.keys import Keys
from jobyard.settings import Settings, get_settings

CHUNK_BYTES = 1024 * 1024
# Below this many bytes a high compression ratio is harmless (a small repetitive text file).
RATIO_FLOOR_BYTES = 1024 * 1024
# The date the zip format cannot go below; a fixed stamp makes wrapped scripts reproducible.
FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
MAX_NAME_BYTES = 1024
MAX_COMPONENT_BYTES = 255
# A central directory entry is at least 46 bytes; names are capped at MAX_NAME_BYTES.
CD_ENTRY_ALLOWANCE = 46 + MAX_NAME_BYTES

_SHA_RE = re.compile(r"[0-9a-f]{64}")
_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
# What a damaged or hostile zip makes the decompressors and zipfile raise.
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    EOFError,
    OSError,
    ValueError,
    NotImplementedError,
    struct.error,
    zlib.error,
    lzma.LZMAError,
    KeyError,
    IndexError,
    OverflowError,
)
_SUPPORTED_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}


async def spool_upload(chunks: AsyncIterator[bytes], dest: Path, max_bytes: int) -> int:
    """Write a streamed request body to ``dest``; ``PayloadTooLarge`` as soon as it passes ``max_bytes``."""
    total = 0
    try:
        with open(dest, "wb") as out:
            async for chunk in chunks:
                total += len(chunk)
                if total > max_bytes:
                    raise PayloadTooLarge(
                        f"the upload is larger than {max_bytes} bytes",
                        "uploads are capped by JOBYARD_MAX_PACKAGE_BYTES; keep large data out of the package",
                    )
                out.write(chunk)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return total


def member_name_problem(name: str) -> str | None:
    """Why a zip member name is unsafe to extract, or None when it is fine."""
    if not name or name == "/":
        return "has an empty name"
    if "\\" in name:
        return "contains a backslash (zip paths use '/')"
    if name.startswith("/"):
        return "is an absolute path"
    if _DRIVE_RE.match(name):
        return "starts with a drive letter"
    if _CONTROL_RE.search(name):
        return "contains a control character"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    parts = name[:-1].split("/") if name.endswith("/") else name.split("/")
    for part in parts:
        if part == "..":
            return "contains '..'"
        if part in ("", "."):
            return "has an empty or '.' path component"
        if len(part.encode("utf-8", "surrogatepass")) > MAX_COMPONENT_BYTES:
            return f"has a path component longer than {MAX_COMPONENT_BYTES} bytes"
    return None


def _bad(name: str, why: str) -> InvalidInput:
    return InvalidInput(
        f"package member {name!r} {why}",
        "rebuild the zip with plain relative paths and regular files only (no links, no '..')",
    )


def _too_large(message: str) -> PayloadTooLarge:
    return PayloadTooLarge(
        message,
        "packages are capped by JOBYARD_MAX_UNPACKED_BYTES, JOBYARD_MAX_UNPACK_RATIO and "
        "JOBYARD_MAX_PACKAGE_FILES; keep large data out of the package",
    )


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _not_a_zip(why: str) -> InvalidInput:
    return InvalidInput(
        f"the package is not a valid zip file ({why})",
        "upload a zip (application/zip), or a single script with ?filename=NAME",
    )


def _precheck_directory(path: Path, settings: Settings) -> None:
    """Refuse a central directory too big to parse before zipfile builds an object per entry."""
    try:
        with open(path, "rb") as fp:
            endrec = zipfile._EndRecData(fp)  # type: ignore[attr-defined]
    except _ZIP_ERRORS as exc:
        raise _not_a_zip(_why(exc)) from exc
    if not endrec:
        raise _not_a_zip("no end of central directory record")
    entries = int(endrec[zipfile._ECD_ENTRIES_TOTAL])  # type: ignore[attr-defined]
    size_cd = int(endrec[zipfile._ECD_SIZE])  # type: ignore[attr-defined]
    if entries > settings.max_package_files or size_cd > settings.max_package_files * CD_ENTRY_ALLOWANCE:
        raise _too_large(f"the package has more than {settings.max_package_files} members")


def _open_zip(path: Path, settings: Settings) -> zipfile.ZipFile:
    _precheck_directory(path, settings)
    try:
        return zipfile.ZipFile(path)
    except _ZIP_ERRORS as exc:
        raise _not_a_zip(_why(exc)) from exc


def _check_members(zf: zipfile.ZipFile, archive_bytes: int, settings: Settings) -> list[zipfile.ZipInfo]:
    """Check every member from the central directory; the members that are files, in zip order."""
    infos = zf.infolist()
    if len(infos) > settings.max_package_files:
        raise _too_large(f"the package has {len(infos)} members, more than {settings.max_package_files}")
    seen: set[str] = set()
    dirs: set[str] = set()
    files: list[zipfile.ZipInfo] = []
    total = 0
    for info in infos:
        name = info.filename
        why = member_name_problem(name)
        if why:
            raise _bad(name, why)
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFLNK:
            raise _bad(name, "is a symbolic link")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise _bad(name, "is a special file (device, fifo or socket)")
        if kind == stat.S_IFDIR and not info.is_dir():
            raise _bad(name, "is a directory whose name does not end with '/'")
        if info.flag_bits & 0x1:
            raise _bad(name, "is encrypted")
        if info.compress_type not in _SUPPORTED_METHODS:
            raise _bad(name, f"uses unsupported compression method {info.compress_type}")
        key = name.rstrip("/")
        if key in seen:
            raise _bad(name, "appears twice")
        seen.add(key)
        parents = key.split("/")[:-1]
        dirs.update("/".join(parents[: i + 1]) for i in range(len(parents)))
        if info.is_dir():
            dirs.add(key)
            continue
        total += info.file_size
        if total > settings.max_unpacked_bytes:
            raise _too_large(f"the package unpacks to more than {settings.max_unpacked_bytes} bytes")
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_FLOOR_BYTES and ratio > settings.max_unpack_ratio:
            raise _too_large(
                f"package member {name!r} expands {ratio:.0f} times, more than {settings.max_unpack_ratio:g}"
            )
        files.append(info)
    clash = sorted(dirs & {i.filename for i in files})
    if clash:
        raise _bad(clash[0], "is both a file and a folder")
    if total > RATIO_FLOOR_BYTES and total / max(archive_bytes, 1) > settings.max_unpack_ratio:
        raise _too_large(
            f"the package expands {total / max(archive_bytes, 1):.0f} times its size, "
            f"more than {settings.max_unpack_ratio:g}"
        )
    return files


def validate_zip(path: Path, settings: Settings) -> list[str]:
    """Check a package zip without extracting it; the names of its regular files."""
    with _open_zip(path, settings) as zf:
        return [i.filename for i in _check_members(zf, path.stat().st_size, settings)]


def extract_zip(path: Path, dest: Path, settings: Settings) -> list[str]:
    """Validate and extract a package into the new directory ``dest``; the names of its files.

    Sizes are counted again while writing, so a member whose header understates its size is
    stopped at the cap; an exec bit in a member's mode becomes 0o755, everything else 0o644.
    """
    archive_bytes = path.stat().st_size
    with _open_zip(path, settings) as zf:
        files = _check_members(zf, archive_bytes, settings)
        dest.mkdir(mode=0o755)
        try:
            _extract_all(zf, files, os.path.realpath(dest), archive_bytes, settings)
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)  # never leave half a package behind
            raise
    return [i.filename for i in files]


def _extract_all(
    zf: zipfile.ZipFile, files: list[zipfile.ZipInfo], base: str, archive_bytes: int, settings: Settings
) -> None:
    for info in zf.infolist():
        if info.is_dir():
            _safe_target(base, info.filename).mkdir(mode=0o755, parents=True, exist_ok=True)
    written = 0
    for info in files:
        target = _safe_target(base, info.filename)
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        exec_bit = (info.external_attr >> 16) & 0o111
        written = _extract_member(zf, info, target, 0o755 if exec_bit else 0o644, written, settings)
        if written > RATIO_FLOOR_BYTES and written / max(archive_bytes, 1) > settings.max_unpack_ratio:
            raise _too_large(f"the package expands more than {settings.max_unpack_ratio:g} times its size")


def _safe_target(base: str, name: str) -> Path:
    """The path a checked member name extracts to, proven to stay inside ``base``."""
    target = os.path.realpath(os.path.join(base, name))
    if os.path.commonpath([base, target]) != base or target == base:
        raise _bad(name, "points outside the package")
    return Path(target)


def _extract_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, mode: int, written: int, settings: Settings
) -> int:
    # O_EXCL|O_NOFOLLOW: never write through a link or over a file some other member made.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(target, flags, mode)
    member_bytes = 0
    with os.fdopen(fd, "wb") as out:
        try:
            src = zf.open(info)
        except _ZIP_ERRORS as exc:
            raise _bad(info.filename, f"cannot be read ({_why(exc)})") from exc
        with src:
            while True:
                try:
                    chunk = src.read(CHUNK_BYTES)
                except _ZIP_ERRORS as exc:
                    raise _bad(info.filename, f"is damaged ({_why(exc)})") from exc
                if not chunk:
                    break
                member_bytes += len(chunk)
                written += len(chunk)
                if member_bytes > info.file_size:
                    raise _bad(info.filename, "holds more data than its header says")
                if written > settings.max_unpacked_bytes:
                    raise _too_large(f"the package unpacks to more than {settings.max_unpacked_bytes} bytes")
                out.write(chunk)
    os.chmod(target, mode)  # the umask may have narrowed os.open's mode
    return written


def plain_file_name(filename: str) -> str:
    """``filename`` if it is a plain file name (no folder part); else ``InvalidInput``."""
    why = member_name_problem(filename)
    if why is None and ("/" in filename or filename.endswith("/")):
        why = "has a folder part"
    if why is None and filename.lower() == "settings.job":
        why = "is the settings file, not a script"
    if why:
        raise InvalidInput(
            f"the script file name {filename!r} {why}",
            "pass a plain file name such as ?filename=hello.sh",
        )
    return filename


def wrap_script(src: Path, filename: str, dest: Path) -> None:
    """Make a one-file zip of a single uploaded script (reproducible bytes, mode 0o755)."""
    plain_file_name(filename)
    info = zipfile.ZipInfo(filename, date_time=FIXED_ZIP_TIME)
    info.create_system = 3  # unix, so the mode below is honoured
    info.external_attr = (stat.S_IFREG | 0o755) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    info.file_size = src.stat().st_size
    with zipfile.ZipFile(dest, "w") as zf, open(src, "rb") as inp, zf.open(info, "w") as out:
        while chunk := inp.read(CHUNK_BYTES):
            out.write(chunk)


def list_files(root: Path) -> list[str]:
    """The regular files under an extracted package, as sorted relative '/' paths."""
    out: list[str] = []
    for dirpath, _dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for f in filenames:
            if os.path.isfile(os.path.join(dirpath, f)) and not os.path.islink(os.path.join(dirpath, f)):
                out.append(f if rel == "." else f"{rel.replace(os.sep, '/')}/{f}")
    return sorted(out)


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def check_sha256(sha256: str) -> str:
    """``sha256`` if it is 64 lowercase hex digits (it names keys and directories); else ``InvalidInput``."""
    if not _SHA_RE.fullmatch(sha256):
        raise InvalidInput(f"{sha256!r} is not a package sha256", "expected 64 lowercase hex digits")
    return sha256


class PackageStore:
    """Package zips in Redis under ``keys.package(sha256)``, with the set of jobs using each.

    Contract: a package key only ever holds the complete zip whose sha256 names it (uploads go
    to a temporary key with a TTL and are renamed when complete); a package is deleted in the
    same transaction that removes its last reference, so a job's package exists while its
    record points at it.
    """

    upload_ttl_s = 3600.0

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.r = client
        self.keys = keys

    def put(self, path: Path) -> str:
        """Store the zip at ``path`` (in ~1 MiB appends, then one RENAME); its sha256."""
        sha = file_sha256(path)
        if self.exists(sha):
            return sha
        tmp = self.keys.package_upload(sha, secrets.token_hex(8))
        ttl_ms = int(self.upload_ttl_s * 1000)
        try:
            self.r.set(tmp, b"", px=ttl_ms)
            size = 0
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK_BYTES):
                    pipe = self.r.pipeline(transaction=False)
                    pipe.append(tmp, chunk)
                    pipe.pexpire(tmp, ttl_ms)
                    pipe.execute()
                    size += len(chunk)
            if self.r.strlen(tmp) != size:
                raise Unavailable(f"package {sha} was not stored completely", "retry the deploy")
            pipe = self.r.pipeline(transaction=True)
            pipe.persist(tmp)  # RENAME would carry the upload TTL over to the package
            pipe.rename(tmp, self.keys.package(sha))
            pipe.execute()
        finally:
            self.r.delete(tmp)
        return sha

    def exists(self, sha256: str) -> bool:
        """Whether the package is stored."""
        return bool(self.r.exists(self.keys.package(check_sha256(sha256))))

    def fetch_to(self, sha256: str, dest: Path) -> None:
        """Write the package to ``dest`` (chunked GETRANGE), checking its sha256."""
        key = self.keys.package(check_sha256(sha256))
        size = int(self.r.strlen(key))
        if size == 0 and not self.r.exists(key):
            raise NotFound(f"package {sha256} is not stored", "redeploy the job")
        digest = hashlib.sha256()
        with open(dest, "wb") as out:
            offset = 0
            while offset < size:
                chunk: bytes = self.r.getrange(key, offset, min(offset + CHUNK_BYTES, size) - 1)  # type: ignore[assignment]
                if not chunk:
                    raise NotFound(f"package {sha256} was deleted while being fetched", "redeploy the job")
                digest.update(chunk)
                out.write(chunk)
                offset += len(chunk)
        if digest.hexdigest() != sha256:
            dest.unlink(missing_ok=True)
            raise InvalidInput(f"package {sha256} in Redis does not match its sha256", "redeploy the job")

    def watch_keys(self, *shas: str | None) -> list[str]:
        """Keys a transaction that swaps references of these packages must WATCH."""
        out: list[str] = []
        for sha in filter(None, shas):
            out += [self.keys.package(sha), self.keys.package_refs(sha)]
        return out

    def queue_swap(
        self, pipe: Any, name: str, old: str | None, new: str | None, old_refs: set[bytes] | None = None
    ) -> bool:
        """Queue on a MULTI ``pipe``: ``name`` stops using ``old`` and uses ``new``; True if ``old`` goes.

        ``old_refs`` is ``old``'s reference set as read under WATCH; when ``name`` was its last
        user the package is deleted with the same EXEC.
        """
        if new:
            pipe.sadd(self.keys.package_refs(new), name)
        if not old or old == new:
            return False
        pipe.srem(self.keys.package_refs(old), name)
        if (old_refs or set()) - {name.encode()}:
            return False
        pipe.delete(self.keys.package(old), self.keys.package_refs(old))
        return True

    def add_ref(self, sha256: str, name: str) -> bool:
        """Record that job ``name`` uses the package; False when the package is not stored."""

        def tx(pipe: Any) -> bool:
            if not pipe.exists(self.keys.package(sha256)):
                return False
            pipe.multi()
            self.queue_swap(pipe, name, None, sha256)
            return True

        return bool(self.r.transaction(tx, *self.watch_keys(sha256), value_from_callable=True))  # type: ignore[arg-type]

    def remove_ref(self, sha256: str, name: str) -> bool:
        """Job ``name`` no longer uses the package; True when that deleted it (its last user)."""

        def tx(pipe: Any) -> bool:
            refs = set(pipe.smembers(self.keys.package_refs(sha256)))
            pipe.multi()
            return self.queue_swap(pipe, name, sha256, None, refs)

        return bool(self.r.transaction(tx, *self.watch_keys(sha256), value_from_callable=True))  # type: ignore[arg-type]

    def refs(self, sha256: str) -> set[str]:
        """The jobs using the package."""
        members: set[bytes] = self.r.smembers(self.keys.package_refs(sha256))  # type: ignore[assignment]
        return {m.decode() for m in members}


class PackageCache:
    """Extracted packages on this host's disk, one directory per sha256, made once and reused.

    Safe for concurrent callers: threads of a process wait on one lock per package; processes
    each extract into their own temporary directory and the first atomic rename wins.
    """

    stale_tmp_s = 3600.0

    def __init__(self, root: Path, store: PackageStore, settings: Settings | None = None) -> None:
        self.root = root
        self.store = store
        self.settings = settings or get_settings()
        self.root.mkdir(parents=True, exist_ok=True)
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._sweep()

    def extracted(self, sha256: str) -> Path:
        """The directory holding the package's files, extracting it first if this host lacks it."""
        final = self.root / check_sha256(sha256)
        if final.is_dir():
            return final
        with self._guard:
            lock = self._locks.setdefault(sha256, threading.Lock())
        with lock:
            if final.is_dir():
                return final
            work = Path(tempfile.mkdtemp(prefix=f".tmp-{sha256[:16]}-", dir=self.root))
            try:
                zip_path = work / "package.zip"
                self.store.fetch_to(sha256, zip_path)
                extract_zip(zip_path, work / "tree", self.settings)
                try:
                    os.rename(work / "tree", final)
                except OSError:
                    if not final.is_dir():  # not a lost race with another process: a real error
                        raise
            finally:
                shutil.rmtree(work, ignore_errors=True)
        return final

    def _sweep(self) -> None:
        """Remove temporary directories left by a process that died while extracting."""
        cutoff = time.time() - self.stale_tmp_s
        for entry in self.root.glob(".tmp-*"):
            try:
                if entry.stat().st_mtime < cutoff:
                    shutil.rmtree(entry, ignore_errors=True)
            except OSError:
                continue


_COPY_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def working_copy(src: Path | str, dest: Path | str) -> None:
    """Copy an extracted package to ``dest`` for one run (links are copied as files).

    Done for every run, so it goes straight to the system calls (``scandir``, ``sendfile``):
    ``shutil.copytree`` spent 60 % more CPU on a one-file package, copying stat bits and
    extended attributes an extracted package does not have. Modes are kept (0o755 / 0o644).
    """
    try:
        os.mkdir(dest, 0o755)
    except FileNotFoundError:  # the first working copy on this host
        os.makedirs(dest, 0o755)
    with os.scandir(src) as entries:
        for entry in entries:
            target = os.path.join(dest, entry.name)
            if entry.is_dir():  # follows a link, as copytree(symlinks=False) did
                working_copy(entry.path, target)
            else:
                _copy_file(entry.path, target, stat.S_IMODE(entry.stat().st_mode))


def _copy_file(src: str, dest: str, mode: int) -> None:
    fin = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fout = os.open(dest, _COPY_FLAGS, mode)
        try:
            size, offset = os.fstat(fin).st_size, 0
            while offset < size:
                sent = os.sendfile(fout, fin, offset, size - offset)
                if sent == 0:
                    break
                offset += sent
            os.fchmod(fout, mode)  # exactly the package's mode, whatever the umask
        finally:
            os.close(fout)
    finally:
        os.close(fin)


def remove_tree(path: Path | str) -> None:
    """Delete a directory tree, ignoring what is already gone (a run's working copy, its attempt
    directory). Leaner than ``shutil.rmtree`` for the small trees a run leaves; entries it cannot
    remove (a script made a directory read-only, say) go to ``shutil.rmtree`` to deal with."""
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    remove_tree(entry.path)
                else:
                    os.unlink(entry.path)
        os.rmdir(path)
    except FileNotFoundError:
        return
    except OSError:
        shutil.rmtree(path, ignore_errors=True)
