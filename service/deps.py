"""`Annotated` dependencies: what a route needs, taken from `app.state`.

`create_app` puts one Settings, one JobBackend and one ServiceMetrics on
`app.state`; routes declare `settings: SettingsDep` etc. and never reach
for module globals.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from anyio import CapacityLimiter
from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from service.errors import from_backend
from service.metrics import ServiceMetrics
from service.settings import Settings
from worker.protocol import JobBackend

T = TypeVar("T")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_backend(request: Request) -> JobBackend:
    return request.app.state.backend


def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


def get_decode_limiter(request: Request) -> CapacityLimiter:
    return request.app.state.decode_limiter


SettingsDep = Annotated[Settings, Depends(get_settings)]
DecodeLimiterDep = Annotated[CapacityLimiter, Depends(get_decode_limiter)]
BackendDep = Annotated[JobBackend, Depends(get_backend)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]


async def call_backend(func: Callable[..., T], *args: Any) -> T:
    """Run a blocking backend call off the event loop and translate its errors
    (`errors.from_backend`: unknown ids 404, conflicts 409, queue down 503)."""
    try:
        return await run_in_threadpool(func, *args)
    except Exception as e:
        raise from_backend(e) from e
