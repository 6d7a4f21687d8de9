"""Structured logs: one JSON object per line, with the job id when there is one.

    log.info("job finished", extra=fields(job_id=job.id, outcome="finished"))

``setup_logging`` is called once by the process entry point (the worker
command); library code only gets loggers.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_FIELDS = "safespot_fields"


def fields(**values: Any) -> dict[str, Any]:
    """``extra=`` for a log call: these keys appear at the top level of the JSON line."""
    return {_FIELDS: values}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(getattr(record, _FIELDS, {}) or {})
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def setup_logging(level: str = "INFO", as_json: bool = True) -> None:
    """Root handler on stderr (RQ's loggers then use it instead of their own colour handler)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
