"""The service's error hierarchy and its one mapping to HTTP.

Every error response, ours or the framework's (validation, 404, 405,
the body limit's 413), has the same JSON shape::

    {"error": {"code": "bad_image", "message": "the file is truncated"}}

Code raises a `SafeSpotError` subclass; `install_error_handlers` is the only
place that turns exceptions into responses.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from worker.protocol import ErrorCode

logger = logging.getLogger("safespot.service")


# The one table of HTTP statuses.  A class's code gives its status; a narrower
# code raised with it (BadImage(..., code=EMPTY_FILE)) keeps the class's.  The
# framework's answers are named by the reverse (the first code of a status).
HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.BAD_REQUEST: 400, ErrorCode.BAD_IMAGE: 400, ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403, ErrorCode.NOT_FOUND: 404, ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.CONFLICT: 409, ErrorCode.DATA_MISSING: 409, ErrorCode.CHECKPOINT_UNVETTED: 409,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.VALIDATION_ERROR: 422, ErrorCode.TOO_MANY_REQUESTS: 429, ErrorCode.QUEUE_FULL: 429,
    ErrorCode.INTERNAL_ERROR: 500, ErrorCode.NOT_READY: 503, ErrorCode.QUEUE_UNAVAILABLE: 503,
}
_CODE_OF_STATUS = {status: code for code, status in reversed(HTTP_STATUS.items())}


class SafeSpotError(Exception):
    """Base of every error the API answers on purpose."""

    code: ErrorCode = ErrorCode.INTERNAL_ERROR

    def __init__(self, message: str, *, code: ErrorCode | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = HTTP_STATUS[self.code]
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return error_response(self.status, self.code, self.message, self.headers)


class BadImage(SafeSpotError):
    code = ErrorCode.BAD_IMAGE


class Unauthorized(SafeSpotError):
    code = ErrorCode.UNAUTHORIZED

    def __init__(self, message: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.headers.setdefault("WWW-Authenticate", "Bearer")


class Forbidden(SafeSpotError):
    code = ErrorCode.FORBIDDEN


class NotFound(SafeSpotError):
    code = ErrorCode.NOT_FOUND


class Conflict(SafeSpotError):
    code = ErrorCode.CONFLICT


class DataMissing(SafeSpotError):
    """A training run's data set is not in SAFESPOT_DATA_DIR (the message says how to add it)."""

    code = ErrorCode.DATA_MISSING


class PayloadTooLarge(SafeSpotError):
    code = ErrorCode.PAYLOAD_TOO_LARGE


class UnsupportedMediaType(SafeSpotError):
    code = ErrorCode.UNSUPPORTED_MEDIA_TYPE


class Validation(SafeSpotError):
    code = ErrorCode.VALIDATION_ERROR


class QueueFull(SafeSpotError):
    code = ErrorCode.QUEUE_FULL

    def __init__(self, message: str, *, retry_after_s: int, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after_s = max(1, int(retry_after_s))
        self.headers["Retry-After"] = str(self.retry_after_s)


class NotReady(SafeSpotError):
    """The queue or the workers are unavailable; retrying later should work."""

    code = ErrorCode.NOT_READY

    def __init__(self, message: str, *, retry_after_s: int = 5, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.headers.setdefault("Retry-After", str(retry_after_s))


def from_backend(exc: Exception) -> SafeSpotError:
    """Translate an exception raised by a JobBackend into our hierarchy.

    The Redis backend raises SafeSpotErrors itself.  Other backends (the
    embedded worker's errors) are matched first by a `code` attribute, then by
    the builtin type: LookupError means not found, ValueError a conflict with
    the current state, ConnectionError / TimeoutError an unavailable queue.
    Anything else is a bug (500)."""
    if isinstance(exc, SafeSpotError):
        return exc
    message = str(exc) or exc.__class__.__name__
    code = getattr(exc, "code", None)
    if code == ErrorCode.QUEUE_FULL:
        return QueueFull(message, retry_after_s=int(getattr(exc, "retry_after_s", 5) or 5))
    if code in (ErrorCode.NOT_READY, ErrorCode.QUEUE_UNAVAILABLE):
        return NotReady(message, code=ErrorCode(code))
    if code == ErrorCode.NOT_FOUND or isinstance(exc, LookupError):
        return NotFound(message)
    if code == ErrorCode.CHECKPOINT_UNVETTED:
        return Conflict(message, code=ErrorCode.CHECKPOINT_UNVETTED)
    if code == ErrorCode.CONFLICT or isinstance(exc, ValueError):
        return Conflict(message)
    if isinstance(exc, ConnectionError | TimeoutError):
        return NotReady(f"the job queue is unavailable: {message}", code=ErrorCode.QUEUE_UNAVAILABLE)
    raise exc


def error_response(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status,
                        headers=headers)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception to the JSON error shape; the only such place."""

    @app.exception_handler(SafeSpotError)
    async def _ours(request: Request, exc: SafeSpotError) -> JSONResponse:
        if exc.status >= 500 and not isinstance(exc, NotReady):  # 503s are expected states
            logger.warning("request failed: %s", exc.message, extra={"code": exc.code})
        _count_rejected_upload(request, exc.status, exc.code)
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        _count_rejected_upload(request, 422, ErrorCode.VALIDATION_ERROR)
        return error_response(422, ErrorCode.VALIDATION_ERROR, _describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODE_OF_STATUS.get(exc.status_code, f"http_{exc.status_code}")
        message = str(exc.detail) if exc.detail else code.replace("_", " ")
        _count_rejected_upload(request, exc.status_code, code)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette lists only the first matching route's methods
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return error_response(exc.status_code, code, message, headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, ErrorCode.INTERNAL_ERROR, "an unexpected error occurred")


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route offers on this path (for the Allow header of a 405)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        regex, route_methods = getattr(route, "path_regex", None), getattr(route, "methods", None)
        if regex is not None and route_methods and regex.match(request.url.path):
            methods |= set(route_methods)
    return sorted(methods)


def _count_rejected_upload(request: Request, status: int, code: str) -> None:
    """Rejected uploads are a metric of their own (reason = our bounded error code)."""
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None and request.method == "POST" and 400 <= status < 500 and status not in (401, 403):
        metrics.upload_rejected(request.scope, code)
