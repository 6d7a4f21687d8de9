"""ASGI middleware that observes every request: metrics and one access log line.

Pure ASGI (not BaseHTTPMiddleware) so streamed uploads and responses pass
through untouched.  The route label is read after routing, from the scope.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.log import REQUEST_JOB_ID
from service.metrics import ServiceMetrics, route_template

access_log = logging.getLogger("safespot.access")
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})  # probes: debug level only


class RequestObserver:
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
