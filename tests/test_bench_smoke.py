"""The bench (``make bench``) still runs: every section, at a tiny size. No speed is asserted here."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

SECTIONS = "abcdefgh"


def test_bench_runs_every_section(tmp_path: Path) -> None:
    out = tmp_path / "latest.json"
    # The pure-Python load generator: the one a fresh machine without wrk uses.
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench", "--tiny", "--client", "python", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    assert "FAILED" not in done.stdout, report
    for letter in SECTIONS:
        row = re.search(rf"^{letter}\s{{2,}}\S", done.stdout, re.M)
        assert row, f"no row of section ({letter}):\n{report}"
    doc = json.loads(out.read_text())
    assert {row["section"] for row in doc["rows"]} >= set(SECTIONS)
    assert doc["sections"]["c"]["rounds"][0]["statuses"] == {"succeeded": 20}
