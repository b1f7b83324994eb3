"""Process logging: readable text by default, one JSON object per line with JOBYARD_LOG_FORMAT=json.

Lines about a run carry ``run_id`` and ``job_name`` (pass ``extra={"run_id": ..., "job_name": ...}``
or use ``run_logger``).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from jobyard.settings import Settings

_RUN_FIELDS = ("run_id", "job_name", "attempt")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, run fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _RUN_FIELDS:
            if hasattr(record, name):
                out[name] = getattr(record, name)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


class TextFormatter(logging.Formatter):
    """``time level logger: message [run=... job=...]``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        tags = [f"{n}={getattr(record, n)}" for n in _RUN_FIELDS if hasattr(record, n)]
        return f"{text} [{' '.join(tags)}]" if tags else text


def setup_logging(settings: Settings) -> None:
    """Configure the root logger once for this process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())


def run_logger(logger: logging.Logger, run_id: str, job_name: str) -> logging.LoggerAdapter[logging.Logger]:
    """A logger whose every line names the run and the job."""
    return logging.LoggerAdapter(logger, {"run_id": run_id, "job_name": job_name})
