"""SECURITY.md names a test for every defence: each one it names must exist."""

from __future__ import annotations

import ast
import re

from tests.helpers import REPO

REFERENCE = re.compile(r"`(tests/[\w/]+\.py)?::(test_\w+)`")


def _tests_in(path: str) -> set[str]:
    tree = ast.parse((REPO / path).read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}


def test_every_test_named_in_security_md_exists() -> None:
    text = (REPO / "SECURITY.md").read_text()
    current: str | None = None
    named: list[tuple[str, str]] = []
    for match in REFERENCE.finditer(text):
        current = match.group(1) or current  # "`::test_x`" continues the file named before it
        assert current is not None, match.group(0)
        named.append((current, match.group(2)))
    assert len(named) > 40, named
    missing = [f"{path}::{name}" for path, name in named if name not in _tests_in(path)]
    assert not missing, missing
