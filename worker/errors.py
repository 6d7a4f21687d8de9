"""Errors of the worker layer, each with a stable :class:`~worker.protocol.ErrorCode`.

Standard library only, so the service can import it and map codes to HTTP
statuses in one place (service.errors.from_backend reads ``code``, then the
builtin base: LookupError is "not found", ValueError a conflict).  A failed
job records ``{"code", "message"}`` of the :class:`JobError` that ended it in
``job.meta["error"]``.  Every constructor takes the message first and the
code as a keyword.
"""

from __future__ import annotations

from worker.protocol import ErrorCode


class WorkerError(Exception):
    code = ErrorCode.WORKER_ERROR

    def __init__(self, message: str, *, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)

    def to_dict(self) -> dict[str, str]:
        return {"code": str(self.code), "message": self.message}


class JobError(WorkerError):
    """A known reason a job cannot complete.

    ``retryable`` says whether running the same job again may succeed (a
    worker shutting down) or cannot (a broken image): RQ retries are spent
    only on the former.
    """

    code = ErrorCode.JOB_FAILED

    def __init__(self, message: str, *, code: ErrorCode | None = None, retryable: bool = False) -> None:
        super().__init__(message, code=code)
        self.retryable = retryable

    @classmethod
    def of(cls, error: BaseException, code: ErrorCode = ErrorCode.INTERNAL_ERROR) -> JobError:
        """``error`` itself when it is a JobError (its reason is known), else one naming the
        unexpected exception ("TypeName: message") under ``code``."""
        if isinstance(error, JobError):
            return error
        return cls(f"{type(error).__name__}: {error}", code=code)


class QueueFullError(WorkerError):
    """The bounded queue is full (embedded mode); the API answers 429."""

    code = ErrorCode.QUEUE_FULL

    def __init__(self, message: str, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class CheckpointNotFoundError(WorkerError, LookupError):
    code = ErrorCode.NOT_FOUND


class ConflictError(WorkerError, ValueError):
    """The request conflicts with the current state (a duplicate id, for instance)."""

    code = ErrorCode.CONFLICT


class CheckpointStateError(ConflictError):
    """The checkpoint exists but cannot take this action (not ready, or active)."""


class CheckpointUnvettedError(CheckpointStateError):
    """An unvetted checkpoint activates only with the admin's explicit override."""

    code = ErrorCode.CHECKPOINT_UNVETTED
