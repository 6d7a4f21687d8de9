"""Structured logs: one JSON object per line, the same keys in every process.

    {"time": ..., "level": "info", "logger": "safespot.worker", "message": "job finished",
     "job_id": ..., ...}

Fields passed with ``extra={...}`` appear at the top level.  The entry
points call :func:`setup_logging` once (``safespot worker``; the API adds the
request's job id with a filter, see ``service.log``); library code only gets
loggers.  Standard library and python-json-logger only: the API uses it too.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from pythonjsonlogger.json import JsonFormatter as _JsonFormatter


def fields(**values: Any) -> dict[str, Any]:
    """``extra=`` for a log call: these keys appear at the top level of the JSON line."""
    return values


class JsonFormatter(_JsonFormatter):
    """`{"time", "level", "logger", "message", ...extra}` on one line; time in UTC."""

    converter = staticmethod(time.gmtime)

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s", json_default=str,
                         datefmt="%Y-%m-%dT%H:%M:%SZ",
                         rename_fields={"asctime": "time", "levelname": "level", "name": "logger",
                                        "exc_info": "exc"})

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord,
                   message_dict: dict[str, Any]) -> None:
        super().add_fields(log_data, record, message_dict)
        log_data["level"] = record.levelname.lower()


def setup_logging(level: str = "info", as_json: bool = True,
                  log_filter: logging.Filter | None = None) -> logging.Handler:
    """Root handler on stderr (RQ's and uvicorn's loggers then use it instead of their own)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if log_filter is not None:
        handler.addFilter(log_filter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    return handler
