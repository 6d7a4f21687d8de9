"""Structured logs: one JSON object per line, with the job id when there is one.

Routes call `bind_job_id(job_id)`; every record logged afterwards while the
request runs (including the access line written by `RequestObserver`)
carries `job_id`.  Extra fields passed with `extra={...}` are included.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar, Token
from typing import Any

_job_id: ContextVar[str | None] = ContextVar("safespot_job_id", default=None)

# Attributes every LogRecord has; anything else came from `extra=` and is logged.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def bind_job_id(job_id: str) -> None:
    """Attach a job id to the log records of the current request."""
    _job_id.set(job_id)


def current_job_id() -> str | None:
    return _job_id.get()


def new_request_context() -> Token[str | None]:
    """Start a request with no job id; pass the token to `end_request_context`."""
    return _job_id.set(None)


def end_request_context(token: Token[str | None]) -> None:
    _job_id.reset(token)


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "message", "job_id"?, ...extra}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        job_id = getattr(record, "job_id", None) or _job_id.get()
        if job_id:
            entry["job_id"] = job_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "info") -> None:
    """JSON lines on stderr for our loggers and uvicorn's (called once by the CLI)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # RequestObserver logs each request
