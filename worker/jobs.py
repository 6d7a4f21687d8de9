"""The RQ job functions named in worker.protocol (FILTER_FUNC, VET_FUNC, TRAIN_FUNC).

- :func:`filter_job` runs when a plain RQ worker (not ``safespot worker``)
  takes a filter job: it processes that one image with the same
  :class:`~worker.processor.FilterProcessor` the batching worker uses.
  ``safespot worker`` never calls it: it batches filter jobs itself.
- :func:`vet_checkpoint_job` validates and vets an uploaded checkpoint.
- :func:`train_job` runs the trainer and registers (never activates) the result.

A failure with a known reason records ``job.meta["error"] = {"code",
"message"}`` and raises, so RQ's failure path ends the job.

Process context: RQ calls these with the request only.  ``safespot worker``
hands its settings over with :func:`use_settings`; in any other worker they
come from the environment on first use.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from rq import get_current_job

from worker import store
from worker.errors import JobError
from worker.protocol import (
    CheckpointRecord,
    ErrorCode,
    FilterRequest,
    FilterResult,
    Progress,
    TrainRequest,
    VetRequest,
)
from worker.registry_stores import redis_registry
from worker.settings import WorkerSettings

log = logging.getLogger("safespot.worker.jobs")


@dataclass
class _ProcessContext:
    settings: WorkerSettings | None = None
    conn: Any = None  # the Redis connection `models` reads
    models: Any = None  # worker.checkpoints.ActiveModel, for filter_job
    processor: Any = None  # worker.processor.FilterProcessor, reused across jobs when the process lives on


_context = _ProcessContext()


def use_settings(settings: WorkerSettings) -> None:
    """Give the job functions this process's settings (called by the worker at start)."""
    _context.settings = settings


def current_settings() -> WorkerSettings:
    if _context.settings is None:
        _context.settings = WorkerSettings()
    return _context.settings


# ---------------------------------------------------------------- filtering
def filter_job(request: FilterRequest) -> FilterResult:
    """Filter one uploaded image (FilterRequest) -> FilterResult; the PNG goes to Redis."""
    from worker.webhooks import WebhookSender, payload

    job = _job()
    settings = current_settings()
    last_saved = 0.0

    def on_progress(_job_id: str, progress: Progress) -> None:
        nonlocal last_saved
        if time.time() - last_saved >= settings.progress_interval_s:
            job.meta["progress"] = dict(progress)
            job.save_meta()
            last_saved = time.time()

    sender = WebhookSender(settings.webhook_allowed_hosts, settings.webhook_timeout_s, settings.webhook_retries)
    try:
        processor = _processor(job.connection, settings)
        processor.progress = on_progress
        processor.add(job.id, request, store.load_upload(job.connection, job.id))
        finished = processor.drain()[0]
        if finished.error is not None:
            raise finished.error
        assert finished.result is not None and finished.png is not None
    except JobError as e:
        _record_error(job, e)
        if not job.retries_left:  # the job really ends here (RQ retries it otherwise)
            sender.send_now(request.get("webhook_url"), payload(job.id, "failed", error=e.to_dict()))
        raise
    ttl = job.get_result_ttl(500)
    if ttl != 0:
        store.store_result_image(job.connection, job.id, finished.png, ttl)
    job.meta["progress"] = {"phase": "done", "fraction": 1.0, "grad_evals": finished.result["grad_evals"],
                            "batch_size": 1}
    job.save_meta()
    sender.send_now(request.get("webhook_url"), payload(job.id, "finished", result=finished.result))
    return finished.result


def _processor(conn: Any, settings: WorkerSettings) -> Any:
    """This process's FilterProcessor, (re)loaded when an activation happened."""
    from worker.checkpoints import ActiveModel
    from worker.processor import FilterProcessor, select_device

    ctx = _context
    if ctx.models is None or ctx.conn is not conn:
        models = ActiveModel(redis_registry(conn, settings.checkpoint_path), settings, select_device(settings.device))
        ctx.conn, ctx.models, ctx.processor = conn, models, None
    if ctx.processor is None or ctx.models.changed():
        try:
            loaded, checkpoint_id = ctx.models.load()
        except Exception as e:
            if ctx.processor is None:
                raise JobError(f"no model could be loaded: {e}", code=ErrorCode.MODEL_UNAVAILABLE, retryable=True) from e
            log.exception("could not load the activated checkpoint; keeping the loaded one")
        else:
            ctx.processor = FilterProcessor(loaded, checkpoint_id, max_batch=settings.max_batch,
                                            max_batch_pixels=settings.max_batch_pixels)
    return ctx.processor


# -------------------------------------------------------------- checkpoints
def vet_checkpoint_job(request: VetRequest) -> CheckpointRecord:
    """Validate + vet the checkpoint a record names; the verdict is written to CHECKPOINTS_KEY."""
    from worker.processor import select_device
    from worker.vetting import vet_and_record

    job = _job()
    settings = current_settings()
    job.meta["progress"] = {"phase": "vetting", "fraction": 0.0}
    job.save_meta()
    checkpoint_id = str(request.get("checkpoint_id") or "")
    verdict = vet_and_record(redis_registry(job.connection, settings.checkpoint_path), checkpoint_id, settings,
                             select_device(settings.device))
    if verdict is None:
        error = JobError(f"no checkpoint {checkpoint_id!r}", code=ErrorCode.CHECKPOINT_NOT_FOUND)
        _record_error(job, error)
        raise error
    job.meta["progress"] = {"phase": "done", "fraction": 1.0}
    if verdict.get("error"):
        job.meta["error"] = verdict["error"]
    job.save_meta()
    return verdict


def train_job(request: TrainRequest) -> CheckpointRecord:
    """Run the trainer; epoch progress in job.meta; the checkpoint registered and vetted."""
    from worker.training_runs import run_training

    job = _job()
    settings = current_settings()

    def progress(values: dict[str, Any]) -> None:
        job.meta["progress"] = values
        job.save_meta()

    try:
        return run_training(request, settings, job_id=job.id, progress=progress,
                            registry=redis_registry(job.connection, settings.checkpoint_path))
    except JobError as e:
        _record_error(job, e)
        raise


# ------------------------------------------------------------------ helpers
def _job() -> Any:
    job = get_current_job()
    if job is None:
        raise RuntimeError("worker.jobs functions run inside an RQ job")
    return job


def _record_error(job: Any, error: JobError) -> None:
    job.meta["error"] = error.to_dict()
    job.save_meta()
    if not error.retryable:
        job.retries_left = 0  # RQ retries the job it is performing only if retries are left
