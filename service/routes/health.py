"""Liveness and readiness probes and the Prometheus scrape endpoint (no auth:
orchestrators and scrapers call them; keep /metrics on an internal network)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from service.deps import BackendDep, MetricsDep
from service.errors import NotReady
from service.schemas import Health, Readiness, error_responses

router = APIRouter()


@router.get("/healthz", response_model=Health, summary="The process is alive", tags=["health"])
async def healthz() -> Health:
    """Always 200 while the process serves HTTP; says nothing about Redis or workers."""
    return Health()


@router.get("/readyz", response_model=Readiness, summary="Jobs can be processed now",
            tags=["health"], responses=error_responses(503))
async def readyz(backend: BackendDep) -> Readiness:
    """200 when the queue is reachable AND at least one live worker has a
    loaded model; 503 with the reason otherwise."""
    try:
        ready, reason = await run_in_threadpool(backend.ready)
    except Exception as e:  # a probe must answer, whatever the backend does
        ready, reason = False, f"readiness check failed: {e.__class__.__name__}"
    if not ready:
        raise NotReady(reason or "not ready")
    return Readiness(detail=reason)


@router.get("/metrics", response_class=Response, summary="Prometheus metrics", tags=["metrics"],
            responses={200: {"content": {"text/plain": {}}}})
async def metrics(service_metrics: MetricsDep) -> Response:
    """Counters and histograms of this process, plus queue depth, ready workers
    and Redis reachability read at scrape time (hence the threadpool)."""
    body = await run_in_threadpool(service_metrics.render)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
