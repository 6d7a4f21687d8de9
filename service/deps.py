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


def _app_state(name: str) -> Any:
    """A dependency that gives `app.state.<name>`."""
    def get(request: Request) -> Any:
        return getattr(request.app.state, name)
    return Depends(get)


SettingsDep = Annotated[Settings, _app_state("settings")]
DecodeLimiterDep = Annotated[CapacityLimiter, _app_state("decode_limiter")]
BackendDep = Annotated[JobBackend, _app_state("backend")]
MetricsDep = Annotated[ServiceMetrics, _app_state("metrics")]


async def call_backend(func: Callable[..., T], *args: Any) -> T:
    """Run a blocking backend call off the event loop and translate its errors
    (`errors.from_backend`: unknown ids 404, conflicts 409, queue down 503)."""
    try:
        return await run_in_threadpool(func, *args)
    except Exception as e:
        raise from_backend(e) from e
