"""A training run as a job: TrainRequest in, a registered and vetted CheckpointRecord out.

Shared by :func:`worker.jobs.train_job` (the trainer sidecar, records in
Redis) and the embedded backend (records in a JSON file): the registry and
progress reporting come in as arguments.  The result is never activated.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from worker import metrics
from worker.checkpoints import relative_path
from worker.errors import JobError
from worker.logs import fields
from worker.protocol import TRAINING_DATA, CheckpointRecord, ErrorCode, TrainRequest
from worker.registry import CheckpointRegistry, new_checkpoint_id
from worker.settings import WorkerSettings
from worker.vetting import vet_and_record

log = logging.getLogger("safespot.worker.training")

ProgressSink = Callable[[dict[str, Any]], None]
TRAINING_SHARE = 0.95  # of the job's fraction; vetting and registering take the rest
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")


def train_config(request: TrainRequest, settings: WorkerSettings, checkpoint_id: str, job_id: str) -> Any:
    """The trainer's TrainConfig for a request (checked by the API); JobError("invalid_request")
    when the recipe refuses it."""
    from safespot.training import Recipe
    from training.trainer import TrainConfig

    try:
        recipe = Recipe(name=request["recipe"], norm=request["norm"], eps=float(request["eps"]))
    except (KeyError, TypeError, ValueError) as e:
        raise JobError(f"invalid training request: {e}", code=ErrorCode.INVALID_REQUEST) from e
    run_dir = settings.checkpoint_path / "runs" / (_SAFE_NAME.sub("_", job_id)[:64] or checkpoint_id)
    return TrainConfig(
        recipe=recipe, arch=request["arch"], data=_data_source(request, settings),
        data_dir=str(settings.data_dir), limit=request.get("limit"), holdout=settings.train_holdout,
        eval_pgd=settings.train_eval_pgd, epochs=request["epochs"], batch_size=settings.train_batch_size,
        run_dir=str(run_dir), out=str(settings.checkpoint_path / f"{checkpoint_id}.safetensors"),
        name=request.get("name") or checkpoint_id, threads=settings.threads,
        precision=settings.train_precision, channels_last=settings.train_channels_last,
        command=f"training job {job_id}")


def _data_source(request: TrainRequest, settings: WorkerSettings) -> str:
    """A built-in set's name, or a path inside the data directory (an admin cannot point at
    other files)."""
    data = str(request.get("data") or "cifar10")
    if data in TRAINING_DATA:
        return data
    root = settings.data_dir.resolve()
    path = (root / data).resolve()
    if path != root and root not in path.parents:
        raise JobError(f"training data {data!r} is outside the data directory", code=ErrorCode.INVALID_REQUEST)
    return str(path)


def run_training(request: TrainRequest, settings: WorkerSettings, *, job_id: str,
                 progress: ProgressSink, registry: CheckpointRegistry) -> CheckpointRecord:
    """Train, register the checkpoint as "validating", vet it, register the verdict; return it."""
    from training.trainer import train

    checkpoint_id = new_checkpoint_id()
    cfg = train_config(request, settings, checkpoint_id, job_id)
    progress({"phase": "training", "fraction": 0.0, "epoch": 0, "epochs": cfg.epochs})
    last_step: dict[str, Any] = {}

    def report(update: dict[str, Any]) -> None:
        try:
            progress(update)
        except Exception:  # a lost progress report must not cost the training run
            log.exception("could not report training progress")

    def step_done(update: dict[str, Any]) -> None:  # training/progress.py, rate-limited there
        last_step.update(update, fraction=round(TRAINING_SHARE * update["fraction"], 4))
        report(dict(last_step))

    def epoch_done(record: dict[str, Any]) -> None:
        report(last_step | {"fraction": round(TRAINING_SHARE * record["epoch"] / max(1, cfg.epochs), 4),
                            "epoch": record["epoch"], "epochs": cfg.epochs, "last_epoch": record})

    started = time.time()
    try:
        path = Path(train(cfg, quiet=True, on_epoch=epoch_done, on_step=step_done,
                          report_every_s=settings.progress_interval_s))
    except Exception as e:
        metrics.TRAINING_JOBS.labels(outcome="failed").inc()
        if isinstance(e, JobError):
            raise
        log.exception("training failed", extra=fields(job_id=job_id))
        raise JobError(f"{type(e).__name__}: {e}", code=ErrorCode.TRAINING_FAILED) from e

    from models.checkpoint import file_sha256

    record: CheckpointRecord = {
        "id": checkpoint_id, "name": cfg.name, "status": "validating", "sha256": file_sha256(path),
        "path": relative_path(path, settings.checkpoint_path), "size_bytes": path.stat().st_size,
        "uploaded_at": round(time.time(), 3), "info": {}, "vetting": {}, "error": None,
        "source": f"training:{job_id}"}
    registry.put(record)
    progress(last_step | {"phase": "vetting", "fraction": 0.97, "epoch": cfg.epochs, "epochs": cfg.epochs,
                          "eta_s": 0.0, "checkpoint_id": checkpoint_id,
                          "train_seconds": round(time.time() - started, 1)})
    record = vet_and_record(registry, checkpoint_id, settings) or record
    # An unvetted checkpoint (no vetting set for its domain) is a result, not a rejection.
    outcome = "rejected" if record.get("status") == "rejected" else "finished"
    metrics.TRAINING_JOBS.labels(outcome=outcome).inc()
    progress(last_step | {"phase": "done", "fraction": 1.0, "epoch": cfg.epochs, "epochs": cfg.epochs,
                          "eta_s": 0.0, "checkpoint_id": checkpoint_id})
    log.info("training %s", outcome, extra=fields(job_id=job_id, checkpoint_id=checkpoint_id))
    return record
