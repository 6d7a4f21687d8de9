"""Pure ASGI middleware (not BaseHTTPMiddleware, so streamed uploads and
responses pass through untouched): the request observer (metrics and one
access log line) and the body limit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_response
from service.log import REQUEST_JOB_ID
from service.metrics import ServiceMetrics, route_template

access_log = logging.getLogger("safespot.access")
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})  # probes: debug level only
TOO_LARGE_MESSAGE = "the request body is larger than this route accepts"


class RequestObserver:
    """Metrics and the access log line of every request; the route label is
    read after routing, from the scope."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # if the app raises before answering, the server sends a 500
        token = REQUEST_JOB_ID.set(None)

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            seconds = time.perf_counter() - started
            route = route_template(scope)
            method = scope.get("method", "GET")
            self.metrics.observe_request(route, method, status, seconds)
            level = logging.DEBUG if route in QUIET_ROUTES and status < 500 else logging.INFO
            access_log.log(level, "%s %s %d", method, route, status, extra={
                "route": route, "method": method, "status": status,
                "duration_ms": round(seconds * 1000, 1), "job_id": REQUEST_JOB_ID.get()})
            REQUEST_JOB_ID.reset(token)


class BodyTooLarge(HTTPException):
    """Raised from `receive` inside the app.  An HTTPException so that FastAPI's
    body parsing lets it through (it turns other exceptions into 400s) and our
    handler answers it as JSON 413."""

    def __init__(self) -> None:
        super().__init__(status_code=413, detail=TOO_LARGE_MESSAGE)


class BodyLimit:
    """Request body limits, enforced while the body streams in; `limit_for(method,
    path)` gives the byte limit of each request.

    A declared `Content-Length` over the limit is refused before a byte is read;
    a chunked body is counted as it arrives and refused as soon as it crosses the
    limit (the rest is never read), so a 10 GB upload costs us the limit, not
    10 GB.  Why not Starlette's own `max_body_size`: it answers with a plain-text
    body that bypasses our exception handlers, and every error here must be JSON.
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[str, str], int],
                 metrics: ServiceMetrics) -> None:
        self.app = app
        self.limit_for = limit_for
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("method", "GET"), scope.get("path", ""))
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdecimal() and int(declared) > limit:
            await self._refuse(scope, receive, send)
            return

        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            if received > limit:
                raise BodyTooLarge()
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.metrics.upload_rejected(scope, "payload_too_large")
        await error_response(413, "payload_too_large", TOO_LARGE_MESSAGE,
                             {"Connection": "close"})(scope, receive, send)
