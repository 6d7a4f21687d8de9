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

logger = logging.getLogger("safespot.service")


class SafeSpotError(Exception):
    """Base of every error the API answers on purpose."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers = headers or {}


class BadImage(SafeSpotError):
    status, code = 400, "bad_image"


class BadRequest(SafeSpotError):
    status, code = 400, "bad_request"


class Unauthorized(SafeSpotError):
    status, code = 401, "unauthorized"

    def __init__(self, message: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.headers.setdefault("WWW-Authenticate", "Bearer")


class Forbidden(SafeSpotError):
    status, code = 403, "forbidden"


class NotFound(SafeSpotError):
    status, code = 404, "not_found"


class Conflict(SafeSpotError):
    status, code = 409, "conflict"


class PayloadTooLarge(SafeSpotError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(SafeSpotError):
    status, code = 415, "unsupported_media_type"


class Validation(SafeSpotError):
    status, code = 422, "validation_error"


class QueueFull(SafeSpotError):
    status, code = 429, "queue_full"

    def __init__(self, message: str, *, retry_after_s: int, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after_s = max(1, int(retry_after_s))
        self.headers["Retry-After"] = str(self.retry_after_s)


class NotReady(SafeSpotError):
    """The queue or the workers are unavailable; retrying later should work."""

    status, code = 503, "not_ready"

    def __init__(self, message: str, *, retry_after_s: int = 5, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.headers.setdefault("Retry-After", str(retry_after_s))


# Codes the embedded backend (worker package, which cannot import this module)
# may put on its exceptions' `code` attribute, and the class each one means.
_FOREIGN_CODES: dict[str, type[SafeSpotError]] = {
    "not_found": NotFound, "unknown_checkpoint": NotFound, "conflict": Conflict,
    "queue_full": QueueFull, "not_ready": NotReady, "queue_unavailable": NotReady,
}

_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
               415: "unsupported_media_type", 422: "validation_error", 429: "too_many_requests",
               503: "not_ready"}


def from_backend(exc: Exception) -> SafeSpotError:
    """Translate an exception raised by a JobBackend into our hierarchy.

    The Redis backend raises SafeSpotErrors itself.  Other backends are matched
    first by a `code` attribute, then by the builtin type: LookupError means
    not found, ValueError a conflict with the current state, ConnectionError /
    TimeoutError an unavailable queue.  Anything else is a bug (500)."""
    if isinstance(exc, SafeSpotError):
        return exc
    message = str(exc) or exc.__class__.__name__
    cls = _FOREIGN_CODES.get(str(getattr(exc, "code", "")))
    if cls is QueueFull:
        return QueueFull(message, retry_after_s=int(getattr(exc, "retry_after_s", 5) or 5))
    if cls is not None:
        return cls(message)
    if isinstance(exc, LookupError):
        return NotFound(message)
    if isinstance(exc, ValueError):
        return Conflict(message)
    if isinstance(exc, ConnectionError | TimeoutError):
        return NotReady(f"the job queue is unavailable: {message}", code="queue_unavailable")
    raise exc


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def error_response(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


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
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        _count_rejected_upload(request, 422, "validation_error")
        return error_response(422, "validation_error", _describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        message = str(exc.detail) if exc.detail else code.replace("_", " ")
        _count_rejected_upload(request, exc.status_code, code)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette lists only the first matching route's methods
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return error_response(exc.status_code, code, message, headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "an unexpected error occurred")


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
