"""Errors of the worker layer, each with a stable ``code``.

Standard library only, so the service can import it and map codes to HTTP
statuses in one place (service.errors.from_backend reads ``code``, then the
builtin base: LookupError is "not found", ValueError a conflict).  A failed job records ``{"code", "message"}`` of the
:class:`JobError` that ended it in ``job.meta["error"]``.
"""

from __future__ import annotations


class WorkerError(Exception):
    code = "worker_error"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class JobError(WorkerError):
    """A known reason a job cannot complete.

    ``retryable`` says whether running the same job again may succeed (a
    worker shutting down) or cannot (a broken image): RQ retries are spent
    only on the former.
    """

    code = "job_failed"

    def __init__(self, code: str, message: str, retryable: bool = False) -> None:
        super().__init__(message, code)
        self.retryable = retryable


class QueueFullError(WorkerError):
    """The bounded queue is full (embedded mode); the API answers 429."""

    code = "queue_full"

    def __init__(self, message: str, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class CheckpointNotFoundError(WorkerError, LookupError):
    code = "not_found"


class ConflictError(WorkerError, ValueError):
    """The request conflicts with the current state (a duplicate id, for instance)."""

    code = "conflict"


class CheckpointStateError(ConflictError):
    """The checkpoint exists but cannot take this action (not ready, or active)."""
