"""Output handling: lines, binary garbage, over-long lines and the log cap."""

from __future__ import annotations

from jobyard.runs import LOG_ERR, LOG_INFO, LOG_SYS
from workers.output import LineSplitter, RunLog


def test_splitter_joins_chunks_and_cuts_long_lines() -> None:
    s = LineSplitter(max_line_bytes=8)
    assert s.feed(b"ab") == []
    assert s.feed(b"c\r\nde") == [b"abc"]
    assert s.feed(b"fghijklmnopq\n") == [b"defghijk", b"lmnopq"]
    assert s.feed(b"x" * 20) == [b"x" * 8, b"x" * 8]
    assert s.close() == [b"xxxx"]
    assert s.close() == []


def test_runlog_caps_visibly_and_keeps_counting() -> None:
    written: list[list[tuple[float, str, str]]] = []
    log = RunLog(written.append, max_output_bytes=100)
    for _ in range(20):
        log.add(LOG_INFO, b"0123456789")
    log.add(LOG_ERR, b"\xff\xfe not utf-8 \x00")
    log.flush()
    lines = [entry for batch in written for entry in batch]
    assert log.truncated
    assert sum(1 for _, s, m in lines if s == LOG_SYS and "truncated" in m) == 1
    assert all(s == LOG_INFO for _, s, _ in lines[:-1])
    assert log.dropped_bytes > 0
    # the ERR line after the cap is not stored, but it is still the error tail
    assert log.error_tail[-1].startswith("\ufffd\ufffd not utf-8")
    assert log.stored_bytes <= 100 + 200  # the marker itself is allowed over the cap


def test_runlog_flushes_in_batches() -> None:
    written: list[list[tuple[float, str, str]]] = []
    log = RunLog(written.append, max_output_bytes=10**9)
    for i in range(450):
        log.add(LOG_INFO, f"line {i}")
    assert [len(b) for b in written] == [200, 200]
    assert len(log.take_pending()) == 50
