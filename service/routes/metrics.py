"""Prometheus scrape endpoint (no auth: keep it on an internal network)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from service.deps import MetricsDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response, summary="Prometheus metrics",
            responses={200: {"content": {"text/plain": {}}}})
async def metrics(service_metrics: MetricsDep) -> Response:
    """Counters and histograms of this process, plus queue depth, ready workers
    and Redis reachability read at scrape time (hence the threadpool)."""
    body = await run_in_threadpool(service_metrics.render)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
