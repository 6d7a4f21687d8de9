"""Request body limits, enforced while the body streams in.

A declared `Content-Length` over the limit is refused before a byte is read;
a chunked body is counted as it arrives and refused as soon as it crosses the
limit (the rest is never read), so a 10 GB upload costs us the limit, not
10 GB.  Pure ASGI so it sees the raw stream.

Why not Starlette's own `max_body_size`: it answers with a plain-text body
that bypasses our exception handlers, and every error here must be JSON.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_response
from service.metrics import ServiceMetrics

TOO_LARGE_MESSAGE = "the request body is larger than this route accepts"


class BodyTooLarge(HTTPException):
    """Raised from `receive` inside the app.  An HTTPException so that FastAPI's
    body parsing lets it through (it turns other exceptions into 400s) and our
    handler answers it as JSON 413."""

    def __init__(self) -> None:
        super().__init__(status_code=413, detail=TOO_LARGE_MESSAGE)


class BodyLimit:
    """`limit_for(method, path)` gives the byte limit of each request."""

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
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            self.metrics.upload_rejected(scope, "payload_too_large")
            await error_response(413, "payload_too_large", TOO_LARGE_MESSAGE,
                                 {"Connection": "close"})(scope, receive, send)
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
            self.metrics.upload_rejected(scope, "payload_too_large")
            await error_response(413, "payload_too_large", TOO_LARGE_MESSAGE,
                                 {"Connection": "close"})(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
