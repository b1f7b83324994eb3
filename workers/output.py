"""A run's output: bytes from the script's pipes become timestamped, capped log lines in Redis.

Lines are decoded as UTF-8 with replacement (binary garbage stays valid text), split at
``max_line_bytes`` (a 50 MB line becomes many bounded entries), and written in batches so a
chatty script costs one round trip per batch, not per line. Past ``max_output_bytes`` one
visible marker is written and the rest is counted but not stored: the cap never fails a run.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable

from jobyard.redis_conn import CONNECTION_ERRORS
from jobyard.runs import LOG_ERR, LOG_SYS

FLUSH_LINES = 200
WRITE_RETRY_S = 1.0
FLUSH_INTERVAL_S = 0.05
ERROR_TAIL_LINES = 10
MIN_MASK_CHARS = 4  # shorter values would mask ordinary text; the docs say to use longer secrets


class LineSplitter:
    """Turns a stream of byte chunks into complete lines (without the newline)."""

    def __init__(self, max_line_bytes: int) -> None:
        self.max_line_bytes = max_line_bytes
        self.pending = bytearray()

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add a chunk; return the lines it completed (over-long lines are cut into pieces)."""
        self.pending += chunk
        lines: list[bytes] = []
        while True:
            nl = self.pending.find(b"\n")
            if nl < 0:
                break
            lines.extend(self._cut(bytes(self.pending[:nl])))
            del self.pending[: nl + 1]
        while len(self.pending) >= self.max_line_bytes:
            lines.append(bytes(self.pending[: self.max_line_bytes]))
            del self.pending[: self.max_line_bytes]
        return lines

    def close(self) -> list[bytes]:
        """The last, unterminated line, if any."""
        rest = bytes(self.pending)
        self.pending.clear()
        return self._cut(rest) if rest else []

    def _cut(self, line: bytes) -> list[bytes]:
        if line.endswith(b"\r"):
            line = line[:-1]
        n = self.max_line_bytes
        return [line[i : i + n] for i in range(0, len(line), n)] or [b""]


class RunLog:
    """Buffers a run's log lines and writes them to Redis in batches, under a size cap."""

    def __init__(
        self,
        write: Callable[[list[tuple[float, str, str]]], None],
        max_output_bytes: int,
    ) -> None:
        self._write = write
        self.max_output_bytes = max_output_bytes
        self.stored_bytes = 0
        self.dropped_bytes = 0
        self.truncated = False
        self.pending: list[tuple[float, str, str]] = []
        self._retry_at = 0.0
        self.first_pending_at = 0.0
        self.error_tail: deque[str] = deque(maxlen=ERROR_TAIL_LINES)
        self.last_lines: deque[str] = deque(maxlen=ERROR_TAIL_LINES)
        self.masks: tuple[str, ...] = ()

    def mask(self, values: Iterable[str]) -> None:
        """Print ``***`` instead of any of ``values`` (the run's secrets; each line of one, 4+ chars)."""
        parts = {p for v in values for p in v.splitlines() if len(p) >= MIN_MASK_CHARS}
        self.masks = tuple(sorted(parts, key=len, reverse=True))  # longest first: no partial leftovers

    def add(self, stream: str, raw: bytes | str, now: float | None = None) -> None:
        """Record one line from ``stream`` (INFO, ERR or SYS)."""
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        text = text.replace("\x00", "\ufffd")
        for secret in self.masks:
            if secret in text:
                text = text.replace(secret, "***")
        if stream == LOG_ERR:
            self.error_tail.append(text)
        if stream != LOG_SYS:
            self.last_lines.append(text)
        size = len(text) + 16
        if self.truncated and stream != LOG_SYS:
            self.dropped_bytes += size
            return
        if stream != LOG_SYS and self.stored_bytes + size > self.max_output_bytes:
            self.truncated = True
            self.dropped_bytes += size
            mb = self.max_output_bytes / (1024 * 1024)
            text = f"[log truncated: the output passed the {mb:g} MB cap; further output is not stored]"
            stream = LOG_SYS
        self.stored_bytes += size
        t = time.time() if now is None else now
        if not self.pending:
            self.first_pending_at = time.monotonic()
        self.pending.append((t, stream, text))
        if len(self.pending) >= FLUSH_LINES:
            self.flush()

    def due(self) -> bool:
        """Whether buffered lines have waited long enough to be written."""
        return bool(self.pending) and time.monotonic() - self.first_pending_at >= FLUSH_INTERVAL_S

    def flush(self) -> None:
        """Write what is buffered; when Redis is away keep it and try again later, never block."""
        if not self.pending or time.monotonic() < self._retry_at:
            return
        batch, self.pending = self.pending, []
        try:
            self._write(batch)
        except CONNECTION_ERRORS:
            # keep the lines (still under the size cap) and let the script's loop go on
            self.pending = batch + self.pending
            self._retry_at = time.monotonic() + WRITE_RETRY_S

    def take_pending(self) -> list[tuple[float, str, str]]:
        """Hand the buffered lines to the caller (to write with the final record in one round trip)."""
        batch, self.pending = self.pending, []
        return batch
