"""The request's job id on every log line (the JSON format is worker.logs's, shared).

Routes call `bind_job_id(job_id)`; every record logged afterwards while the
request runs (including the access line written by `RequestObserver`)
carries `job_id`.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar, Token

from worker.logs import setup_logging

_job_id: ContextVar[str | None] = ContextVar("safespot_job_id", default=None)


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


class JobIdFilter(logging.Filter):
    """Adds the request's job id to a record that names none."""

    def filter(self, record: logging.LogRecord) -> bool:
        job_id = _job_id.get()
        if job_id and not getattr(record, "job_id", None):
            record.job_id = job_id
        return True


def configure_logging(level: str = "info") -> None:
    """JSON lines on stderr for our loggers and uvicorn's (called once by the CLI)."""
    setup_logging(level, log_filter=JobIdFilter())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # RequestObserver logs each request
