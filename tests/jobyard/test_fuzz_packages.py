"""Property tests on hostile input: zip member names, damaged zips, random settings.job.

Whatever comes in, the answer is a result or ``InvalidInput`` (never another exception), and no
file ever appears outside the extraction directory.
"""

from __future__ import annotations

import json
import os
import stat
import struct
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from jobyard.errors import InvalidInput
from jobyard.jobsettings import FIELDS, parse_settings
from jobyard.packages import extract_zip, list_files, validate_zip
from jobyard.settings import Settings

LIMITS = Settings(max_package_files=50, max_unpacked_bytes=1024 * 1024, max_unpack_ratio=50.0)
FUZZ = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

_PARTS = st.sampled_from(
    (
        "..",
        ".",
        "",
        "/",
        "\\",
        "C:",
        "c:\\",
        "run.sh",
        "a",
        "ü",
        "日本語",
        "\u202e",
        "\x00",
        "\x01",
        "~",
        " ",
        "...",
    )
)
_PREFIXES = st.sampled_from(["", "/", "//", "../", "..\\", "./", "C:/", "C:\\", "\\\\server\\", "a/../../"])
member_names = st.one_of(
    st.from_regex(r"[a-z]{1,6}(/[a-z]{1,6}){0,2}/?(\.(sh|py|txt))?", fullmatch=True),
    st.text(max_size=30),
    st.lists(st.one_of(_PARTS, st.text(max_size=6)), min_size=1, max_size=6).map("/".join),
    st.builds(lambda prefix, rest: prefix + rest, _PREFIXES, st.text(max_size=12)),
)
# Modes: regular files, exec bits, directories, symlinks, fifos, devices and random high bits.
member_modes = st.one_of(
    st.sampled_from(
        [0, stat.S_IFREG | 0o644, stat.S_IFREG | 0o755, stat.S_IFDIR | 0o755, stat.S_IFLNK | 0o777]
    ),
    st.sampled_from(
        [stat.S_IFIFO | 0o644, stat.S_IFCHR | 0o644, stat.S_IFBLK | 0o600, stat.S_IFSOCK | 0o600]
    ),
    st.integers(0, 0xFFFF),
)
members = st.lists(st.tuples(member_names, st.binary(max_size=64), member_modes), min_size=1, max_size=8)


def build_zip(path: Path, entries: list[tuple[str, bytes, int]]) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # duplicate names are part of the test
            with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
                for name, data, mode in entries:
                    zi = zipfile.ZipInfo(name)
                    zi.create_system = 3
                    zi.external_attr = mode << 16
                    zi.compress_type = zipfile.ZIP_DEFLATED
                    zf.writestr(zi, data)
    except (ValueError, OSError, struct.error, UnicodeError):
        reject()  # zipfile itself cannot write this; nothing to test


def outside_files(base: Path, allowed_root: Path, keep: set[Path]) -> list[str]:
    """Everything under ``base`` that is neither in ``keep`` nor inside ``allowed_root``, and any link."""
    bad: list[str] = []
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                bad.append(f"link {p}")
            elif p not in keep and p != allowed_root and allowed_root not in p.parents:
                bad.append(str(p))
    return bad


def check_extraction(zip_path: Path, work: Path) -> None:
    sandbox = work / "sandbox"
    sandbox.mkdir()
    out = sandbox / "out"
    try:
        files = extract_zip(zip_path, out, LIMITS)
    except InvalidInput:
        assert not out.exists()  # a refused package leaves nothing behind
        files = None
    assert outside_files(work, out, {zip_path, sandbox}) == []
    if files is not None:
        assert sorted(files) == list_files(out)
        real = os.path.realpath(out)
        for f in files:
            assert os.path.commonpath([real, os.path.realpath(out / f)]) == real
        assert validate_zip(zip_path, LIMITS) == files


@FUZZ
@given(members)
def test_random_member_names_never_escape(entries: list[tuple[str, bytes, int]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        zip_path = work / "pkg.zip"
        build_zip(zip_path, entries)
        check_extraction(zip_path, work)


def _base_zip() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "base.zip"
        with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("run.sh", b"#!/bin/sh\necho hello\n" * 20)
            zf.writestr("lib/data.bin", bytes(range(256)) * 8)
            zf.writestr("lib/empty.txt", b"")
            zf.writestr(zipfile.ZipInfo("stored.txt"), b"stored bytes")
        return p.read_bytes()


BASE_ZIP = _base_zip()


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, len(BASE_ZIP) - 1), st.integers(0, 255)), min_size=1, max_size=12),
    st.one_of(st.none(), st.integers(0, len(BASE_ZIP))),
)
def test_damaged_zips_are_refused_cleanly(edits: list[tuple[int, int]], cut: int | None) -> None:
    data = bytearray(BASE_ZIP)
    for offset, value in edits:
        data[offset] = value
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        zip_path = work / "pkg.zip"
        zip_path.write_bytes(bytes(data[:cut] if cut is not None else data))
        check_extraction(zip_path, work)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_are_not_a_zip(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        zip_path = work / "pkg.zip"
        zip_path.write_bytes(data)
        check_extraction(zip_path, work)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(
        ["0 */5 * * * *", "*/5 * * * *", "UTC", "Europe/Berlin", "run.sh", "skip", "high", "../x"]
    ),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
settings_objects = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=12), json_values, max_size=6)


def _check_parse(raw: Any) -> None:
    try:
        parsed = parse_settings(raw)
    except InvalidInput as exc:
        assert exc.message.startswith("settings.job")
        return
    assert isinstance(parsed, dict)
    assert set(parsed) <= set(FIELDS)
    assert parse_settings(json.dumps(parsed)) == parsed  # what we accept, we accept again


@settings(max_examples=300, deadline=None, database=None)
@given(settings_objects)
def test_random_settings_objects(data: dict[str, Any]) -> None:
    _check_parse(json.dumps(data))
    _check_parse(data)


@settings(max_examples=200, deadline=None, database=None)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200), json_values.map(json.dumps)))
def test_random_settings_text(raw: str | bytes) -> None:
    _check_parse(raw)
