"""Filter jobs: submit an image, follow the job, fetch the filtered PNG.

The form fields arrive as strings; `parse_filter_options` turns them into the
typed values of `protocol.FilterRequest` or raises `Validation` (422) with a
message that says which field is wrong and what is allowed.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import math
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, cast

from anyio import to_thread
from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from service.auth import ClientRole
from service.deps import BackendDep, DecodeLimiterDep, MetricsDep, SettingsDep, call_backend
from service.errors import Conflict, NotFound, NotReady, PayloadTooLarge, QueueFull, Validation
from service.images import decode_upload
from service.log import REQUEST_JOB_ID
from service.schemas import JobLinks, JobResponse, error_responses
from service.settings import Settings
from worker.protocol import (
    NORMS,
    PRESETS,
    ErrorCode,
    FilterRequest,
    JobBackend,
    JobView,
    Norm,
    Preset,
    Reencode,
    parse_budget,
    webhook_refusal,
)

router = APIRouter(prefix="/v1", tags=["filter"])
logger = logging.getLogger("safespot.service")

JOB_ID = re.compile(r"^[0-9a-f]{32}$")  # uuid4().hex, chosen by the API
TERMINAL = frozenset({"finished", "failed", "canceled", "expired"})
POLL_S = (0.05, 0.1, 0.2, 0.25)  # poll quickly first (small images finish fast), then steadily
_REENCODE = re.compile(r"^(jpeg|jpg):(\d{1,3})$")
MAX_WEBHOOK_URL_CHARS = 2048


@dataclass(frozen=True)
class FilterOptions:
    preset: Preset
    norm: Norm
    eps: float | None  # pixel units, images in [0, 1]; None: the checkpoint's own (the worker's)
    delta: float | None  # None: eps
    reencode: Reencode | None
    webhook_url: str | None
    wait_s: float


def budget(name: str, raw: str | None) -> float | None:
    """A budget as a float ("0.0314") or a fraction of 255 ("8/255"); None when blank."""
    if raw is None or not raw.strip():
        return None
    try:
        return parse_budget(raw)
    except ValueError as e:
        raise Validation(f"{name}: {e}") from None


def parse_reencode(raw: str | None) -> Reencode | None:
    """`jpeg:85` -> {"format": "jpeg", "quality": 85}; empty or "none" -> None."""
    if raw is None or raw.strip().lower() in ("", "none", "png"):
        return None
    match = _REENCODE.match(raw.strip().lower())
    if not match or not 1 <= int(match.group(2)) <= 100:
        raise Validation(f"reencode: expected 'jpeg:<quality 1-100>' (e.g. jpeg:85), got {raw!r}")
    return Reencode(format="jpeg", quality=int(match.group(2)))


def check_webhook(url: str | None, settings: Settings) -> str | None:
    """The URL when `protocol.webhook_refusal` allows it (the worker checks the same rule)."""
    if url is None or not url.strip():
        return None
    url = url.strip()
    if len(url) > MAX_WEBHOOK_URL_CHARS:
        raise Validation("webhook_url: too long")
    if not settings.webhook_allowed_hosts:
        raise Validation("webhook_url: webhooks are disabled on this server",
                         code=ErrorCode.WEBHOOKS_DISABLED)
    refusal = webhook_refusal(url, settings.webhook_allowed_hosts)
    if refusal is not None:
        raise Validation(f"webhook_url: {refusal}")
    return url


def parse_filter_options(settings: Settings, *, preset: str | None, norm: str | None,
                         eps: str | None, delta: str | None, reencode: str | None,
                         webhook_url: str | None, wait: float | None) -> FilterOptions:
    """Combine the request's fields with the configured defaults and bounds."""
    preset = (preset or settings.default_preset).strip().lower()
    if preset not in settings.allowed_presets:
        raise Validation(f"preset: {preset!r} is not allowed; allowed: {sorted(settings.allowed_presets)}")
    norm = (norm or settings.default_norm).strip().lower()
    if norm not in NORMS:
        raise Validation(f"norm: expected one of {list(NORMS)}, got {norm!r}")
    eps_value = budget("eps", eps) or settings.default_eps(norm)
    delta_value = budget("delta", delta) or eps_value
    for name, value in (("eps", eps_value), ("delta", delta_value)):
        if refusal := settings.budget_refusal(name, value, norm):
            raise Validation(refusal)
    wait_s = 0.0 if wait is None else float(wait)
    if not math.isfinite(wait_s) or wait_s < 0 or wait_s > settings.max_wait_s:
        raise Validation(f"wait: must be between 0 and {settings.max_wait_s:g} seconds")
    return FilterOptions(preset=cast(Preset, preset), norm=cast(Norm, norm), eps=eps_value,
                         delta=delta_value, reencode=parse_reencode(reencode),
                         webhook_url=check_webhook(webhook_url, settings), wait_s=wait_s)


def job_links(job_id: str) -> JobLinks:
    return JobLinks(self=f"/v1/jobs/{job_id}", image=f"/v1/jobs/{job_id}/image")


async def find_job(get: Callable[[str], JobView | None], job_id: str, what: str = "job") -> JobView:
    """The job's view from `get` (a backend's getter); 404 when it is unknown or
    expired, and for ids that are not ours (no 422 that reveals the format)."""
    if not JOB_ID.match(job_id):
        raise NotFound(f"no {what} {job_id[:64]!r}")
    REQUEST_JOB_ID.set(job_id)
    view = await call_backend(get, job_id)
    if view is None:
        raise NotFound(f"no {what} {job_id} (unknown, or its result expired)")
    return view


def created(job: JobResponse, status_code: int) -> JSONResponse:
    """The answer of a route that creates a job: the job, and `Location` pointing at it."""
    return JSONResponse(job.model_dump(mode="json"), status_code=status_code,
                        headers={"Location": job.links.self})


async def ensure_queue_has_room(backend: JobBackend, max_queue: int, seconds_per_job: float) -> None:
    """Refuse before decoding, so a full queue costs no CPU; the Redis backend
    checks again when it enqueues."""
    depth = await call_backend(backend.queue_depth)
    if depth >= max_queue:
        estimate = getattr(backend, "retry_after_s", None)
        retry_after = (await call_backend(estimate, depth) if callable(estimate)
                       else math.ceil(depth * seconds_per_job))
        raise QueueFull(f"the filter queue is full ({depth} jobs waiting)", retry_after_s=retry_after)


async def wait_for_job(backend: JobBackend, job_id: str, wait_s: float,
                       request: Request) -> JobView | None:
    """Poll until the job ends, `wait_s` passes or the client goes away.

    The job is already accepted: if the queue becomes unreachable meanwhile,
    stop waiting and answer 202 with its id rather than an error."""
    deadline = time.monotonic() + wait_s
    view: JobView | None = None
    for attempt in itertools.count():
        try:
            view = await call_backend(backend.get_job, job_id)
        except NotReady:
            return view
        if view is not None and view.get("status") in TERMINAL:
            return view
        remaining = deadline - time.monotonic()
        if remaining <= 0 or await request.is_disconnected():
            return view
        await asyncio.sleep(min(remaining, POLL_S[min(attempt, len(POLL_S) - 1)]))
    return view  # unreachable: the loop returns


@router.post(
    "/filter", status_code=202, response_model=JobResponse,
    summary="Filter an image (asynchronous, or synchronous with `wait`)",
    responses={200: {"model": JobResponse, "description": "the job ended within `wait`"},
               **error_responses(400, 401, 403, 413, 415, 422, 429, 503)},
)
async def submit_filter(
    request: Request, _role: ClientRole, settings: SettingsDep, backend: BackendDep,
    metrics: MetricsDep, decode_limiter: DecodeLimiterDep,
    image: Annotated[UploadFile, File(description="JPEG, PNG, WebP, GIF (first frame), BMP or TIFF")],
    preset: Annotated[str | None, Form(description=" | ".join(PRESETS), examples=["standard"])] = None,
    norm: Annotated[str | None, Form(description=" | ".join(NORMS), examples=["linf"])] = None,
    eps: Annotated[str | None, Form(
        description="adversary budget, e.g. 0.0314 or 8/255; default: the one the active model was "
                    "trained for (GET /v1/model `threat`), else 8/255 (linf) or 0.5 (l2)")] = None,
    delta: Annotated[str | None, Form(description="defender budget (default: eps)")] = None,
    reencode: Annotated[str | None, Form(description="re-encode to survive, e.g. jpeg:85")] = None,
    webhook_url: Annotated[str | None, Form(description="called when the job ends (allow-listed hosts)")] = None,
    wait_form: Annotated[float | None, Form(alias="wait", description="seconds to wait for the result")] = None,
    wait_query: Annotated[float | None, Query(alias="wait", description="seconds to wait for the result")] = None,
) -> JSONResponse:
    """Queue an image for filtering.  Answers **202** with the job (follow
    `links.self`), or **200** with the finished job when it ends within `wait`
    seconds (at most `SAFESPOT_MAX_WAIT_S`).  The output is always a lossless
    PNG: a lossy re-encode would erase the perturbation (use `reencode` to make
    the safe spot account for the platform's own JPEG re-encode instead)."""
    options: FilterOptions = parse_filter_options(
        settings, preset=preset, norm=norm, eps=eps, delta=delta, reencode=reencode,
        webhook_url=webhook_url, wait=wait_query if wait_query is not None else wait_form)
    data = await image.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise PayloadTooLarge(f"the image is larger than {settings.max_upload_bytes} bytes",
                              code=ErrorCode.FILE_TOO_LARGE)
    await ensure_queue_has_room(backend, settings.max_queue, settings.seconds_per_job)
    decoded = await to_thread.run_sync(
        functools.partial(decode_upload, data, max_pixels=settings.max_pixels), limiter=decode_limiter)

    job_id = uuid.uuid4().hex
    REQUEST_JOB_ID.set(job_id)
    filter_request = FilterRequest(
        job_id=job_id, preset=options.preset, norm=options.norm, eps=options.eps,
        delta=options.delta, reencode=options.reencode, webhook_url=options.webhook_url,
        submitted_at=time.time(), image=decoded.info)
    await call_backend(backend.submit_filter, filter_request, decoded.png)
    metrics.job_submitted(options.preset)
    logger.info("filter job queued", extra={
        "job_id": job_id, "preset": options.preset, "norm": options.norm, "eps": options.eps,
        "width": decoded.info["width"], "height": decoded.info["height"]})

    view: JobView | None = None
    if options.wait_s > 0:
        view = await wait_for_job(backend, job_id, options.wait_s, request)
    if view is None:
        view = JobView(id=job_id, status="queued", progress={"phase": "queued"},
                       created_at=filter_request["submitted_at"])
    return created(JobResponse.from_view(view, job_id, job_links(job_id)),
                   200 if view.get("status") in TERMINAL else 202)


@router.get("/jobs/{job_id}", response_model=JobResponse, summary="Status and result of a job",
            responses=error_responses(401, 404, 503))
async def get_job(job_id: str, _role: ClientRole, backend: BackendDep) -> JobResponse:
    """The job's status, progress and, once finished, its result (scores,
    prediction, model, timings).  Results expire after `SAFESPOT_RESULT_TTL_S`."""
    view = await find_job(backend.get_job, job_id)
    return JobResponse.from_view(view, job_id, job_links(job_id))


@router.get("/jobs/{job_id}/image", summary="The filtered image (PNG)",
            response_class=Response,
            responses={200: {"content": {"image/png": {}}, "description": "lossless PNG"},
                       **error_responses(401, 404, 409, 503)})
async def get_job_image(job_id: str, _role: ClientRole, backend: BackendDep) -> Response:
    """The filtered image, same size as the upload.  409 while the job is not
    finished; 404 when the job is unknown or its result expired."""
    status = (await find_job(backend.get_job, job_id)).get("status")
    if status == "expired":
        raise NotFound(f"the result of job {job_id} expired", code=ErrorCode.EXPIRED)
    if status in ("queued", "started"):
        raise Conflict(f"job {job_id} is {status}; the image is ready when it is finished",
                       code=ErrorCode.NOT_READY)
    if status != "finished":
        raise Conflict(f"job {job_id} is {status}: there is no image", code=ErrorCode(f"job_{status}"))
    png = await call_backend(backend.get_result_image, job_id)
    if png is None:
        raise NotFound(f"the image of job {job_id} expired", code=ErrorCode.EXPIRED)
    return Response(png, media_type="image/png", headers={
        "Content-Disposition": f'inline; filename="{job_id}.png"',
        "Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"})
