"""Training runs for the trainer sidecar (admin key only)."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from models.formats import PAPER_EPS
from service.auth import AdminRole
from service.deps import BackendDep, SettingsDep, call_backend
from service.errors import DataMissing, Validation
from service.log import REQUEST_JOB_ID
from service.routes.jobs import created, find_job
from service.schemas import JobLinks, JobResponse, TrainingRequestBody, error_responses
from service.settings import Settings
from worker.protocol import TRAINING_DATA, JobView, TrainRequest, data_download_command

router = APIRouter(prefix="/v1/training-jobs", tags=["training (admin)"])
logger = logging.getLogger("safespot.service")



def training_links(job_id: str) -> JobLinks:
    return JobLinks(self=f"/v1/training-jobs/{job_id}", image=None)


def checked_data(data: str, settings: Settings) -> str:
    """A built-in data set name, or a path that stays inside SAFESPOT_DATA_DIR
    (an admin key must not let a run read arbitrary files of the trainer); either
    present in the data directory, which the API shares with the trainer: a run
    that would fail for want of its data is refused now, not queued."""
    if data in TRAINING_DATA:
        if not any((settings.data_dir / name).exists() for name in TRAINING_DATA[data]):
            raise DataMissing(
                f"data: {data} is not in SAFESPOT_DATA_DIR ({settings.data_dir}); run "
                f"`{data_download_command(data)}` there (or `safespot data import PATH` "
                "with an offline copy of the archive)")
        return data
    candidate = Path(data)
    if candidate.is_absolute() or ".." in candidate.parts or not data.strip():
        raise Validation(f"data: one of {', '.join(TRAINING_DATA)} or a relative path inside SAFESPOT_DATA_DIR")
    root = settings.data_dir.resolve()
    resolved = (root / candidate).resolve()
    if root not in resolved.parents:
        raise Validation("data: the path leaves SAFESPOT_DATA_DIR")
    if not resolved.exists():
        raise DataMissing(f"data: no {candidate} in SAFESPOT_DATA_DIR ({settings.data_dir}); copy the "
                          ".npz file or image folder there first")
    return str(candidate)


@router.post("", status_code=202, response_model=JobResponse, summary="Start a training run",
             responses=error_responses(400, 401, 403, 409, 413, 422, 503))
async def start_training(body: TrainingRequestBody, _role: AdminRole, settings: SettingsDep,
                         backend: BackendDep) -> JSONResponse:
    """Queue a run of the trainer on the `train` queue.  When it ends, its
    checkpoint is registered and vetted (not activated): its record is the
    job's `result`.  A run whose data is not in SAFESPOT_DATA_DIR is refused
    (409 `data_missing`, with the command that provides it)."""
    eps = body.eps if body.eps is not None else (settings.default_eps(body.norm) or PAPER_EPS[body.norm])
    if refusal := settings.budget_refusal("eps", eps, body.norm):
        raise Validation(refusal)
    job_id = uuid.uuid4().hex
    REQUEST_JOB_ID.set(job_id)
    request = TrainRequest(job_id=job_id, recipe=body.recipe, norm=body.norm, eps=eps,
                           epochs=body.epochs, data=checked_data(body.data, settings),
                           limit=body.limit, name=body.name or f"{body.recipe} {body.data}",
                           arch=body.arch)
    await call_backend(backend.submit_training, request)
    logger.info("training job queued", extra={"recipe": body.recipe, "epochs": body.epochs})
    view = JobView(id=job_id, status="queued", progress={"phase": "queued"})
    return created(JobResponse.from_view(view, job_id, training_links(job_id)), 202)


@router.get("/{job_id}", response_model=JobResponse, summary="Progress and outcome of a training run",
            responses=error_responses(401, 403, 404, 503))
async def get_training(job_id: str, _role: AdminRole, backend: BackendDep) -> JobResponse:
    view = await find_job(backend.get_training, job_id, "training job")
    return JobResponse.from_view(view, job_id, training_links(job_id))
