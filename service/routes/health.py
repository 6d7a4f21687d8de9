"""Liveness and readiness probes (no auth: orchestrators call them)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from service.deps import BackendDep
from service.errors import NotReady
from service.schemas import Health, Readiness, error_responses

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> Health:
    """Always 200 while the process serves HTTP; says nothing about Redis or workers."""
    return Health()


@router.get("/readyz", response_model=Readiness, summary="Jobs can be processed now",
            responses=error_responses(503))
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
