"""The request's job id on every log line (the JSON format is worker.logs's, shared).

Routes set `REQUEST_JOB_ID`; every record logged afterwards while the request
runs (including the access line written by `RequestObserver`) carries `job_id`.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar

from worker.logs import setup_logging

# The job id of the request being served: set by the routes, reset per request by RequestObserver.
REQUEST_JOB_ID: ContextVar[str | None] = ContextVar("safespot_job_id", default=None)


class JobIdFilter(logging.Filter):
    """Adds the request's job id to a record that names none."""

    def filter(self, record: logging.LogRecord) -> bool:
        job_id = REQUEST_JOB_ID.get()
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
