"""The RQ job functions named in worker.protocol (FILTER_FUNC, VET_FUNC, TRAIN_FUNC).

- :func:`filter_job` runs when a plain RQ worker (not ``safespot worker``)
  takes a filter job: it runs that one image through the same
  :class:`~worker.lifecycle.BatchLoop` the batching worker uses.
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
from dataclasses import dataclass
from typing import Any

from rq import get_current_job

from worker.errors import JobError
from worker.protocol import (
    CheckpointRecord,
    ErrorCode,
    FilterRequest,
    FilterResult,
    TrainRequest,
    VetRequest,
)
from worker.registry_stores import redis_registry
from worker.rq_compat import no_retry_unless
from worker.settings import WorkerSettings

log = logging.getLogger("safespot.worker.jobs")


@dataclass
class _ProcessContext:
    settings: WorkerSettings | None = None
    conn: Any = None  # the Redis connection filter_job's loop reads activations from
    loop: Any = None  # worker.lifecycle.BatchLoop, reused across jobs when the process lives on


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
    from worker.rq_worker import PerformedJob

    job = _job()
    source = PerformedJob(job)
    _loop(job.connection, source).run()
    done = source.done
    assert done is not None
    if done.error is not None:
        raise done.error
    assert done.result is not None
    return done.result


def _loop(conn: Any, source: Any) -> Any:
    """This process's BatchLoop (its model reloaded on activation), now fed by ``source``."""
    from worker.checkpoints import ActiveModel
    from worker.lifecycle import BatchLoop
    from worker.webhooks import WebhookSender

    ctx = _context
    if ctx.loop is None or ctx.conn is not conn:
        s = current_settings()
        ctx.conn = conn
        ctx.loop = BatchLoop(s, source, ActiveModel(redis_registry(conn, s.checkpoint_path), s),
                             WebhookSender.from_settings(s).send_now)
    ctx.loop.source = source
    return ctx.loop


# -------------------------------------------------------------- checkpoints
def vet_checkpoint_job(request: VetRequest) -> CheckpointRecord:
    """Validate + vet the checkpoint a record names; the verdict is written to CHECKPOINTS_KEY."""
    from worker.checkpoints import select_device
    from worker.vetting import vet_and_record

    job = _job()
    settings = current_settings()
    save_meta(job, progress={"phase": "vetting", "fraction": 0.0})
    checkpoint_id = str(request.get("checkpoint_id") or "")
    verdict = vet_and_record(redis_registry(job.connection, settings.checkpoint_path), checkpoint_id, settings,
                             select_device(settings.device))
    if verdict is None:
        missing = JobError(f"no checkpoint {checkpoint_id!r}", code=ErrorCode.CHECKPOINT_NOT_FOUND)
        _record_error(job, missing)
        raise missing
    rejection = {"error": verdict["error"]} if verdict.get("error") else {}
    save_meta(job, progress={"phase": "done", "fraction": 1.0}, **rejection)
    return verdict


def train_job(request: TrainRequest) -> CheckpointRecord:
    """Run the trainer; progress (every step, rate-limited) in job.meta; the checkpoint registered and vetted."""
    from worker.training_runs import run_training

    job = _job()
    settings = current_settings()

    def progress(values: dict[str, Any]) -> None:
        save_meta(job, progress=values)

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


def save_meta(job: Any, **values: Any) -> None:
    """Set these keys of ``job.meta`` (what the API reads: progress, error) and write it."""
    job.meta.update(values)
    job.save_meta()


def _record_error(job: Any, error: JobError) -> None:
    save_meta(job, error=error.to_dict())
    no_retry_unless(job, error.retryable)
