"""The job backend of the single-process mode (``safespot serve`` without SAFESPOT_REDIS_URL).

:class:`EmbeddedBackend` implements :class:`worker.protocol.JobBackend`
entirely in-process: a bounded in-memory queue and job store (entries
expire after the job / result TTLs), a driver thread running the same
:class:`~worker.lifecycle.BatchLoop` as ``safespot worker`` (continuous
batching, timeouts, reloads, the same results) with this queue as its
:class:`~worker.lifecycle.JobSource`, the checkpoint registry of
:mod:`worker.registry`, vetting and training on background threads.  Thread-safe: every public method may be
called from any thread (the API's request handlers).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from worker import metrics
from worker.checkpoints import ActiveModel, shipped_record
from worker.errors import ConflictError, JobError, QueueFullError
from worker.lifecycle import BatchLoop, Taken
from worker.processor import FinishedJob
from worker.protocol import (
    CheckpointRecord,
    ErrorCode,
    FilterRequest,
    JobView,
    Progress,
    TrainRequest,
)
from worker.registry_stores import file_registry
from worker.settings import SharedSettings, WorkerSettings
from worker.webhooks import WebhookSender

log = logging.getLogger("safespot.worker.embedded")

EXPIRY_SWEEP_S = 1.0
MAX_TOMBSTONES = 10_000  # expired job ids remembered (answered "expired" rather than unknown)


@dataclass
class _Job:
    id: str
    kind: str  # "filter" or "train"
    request: dict[str, Any]
    created_at: float
    upload: bytes | None = None
    status: str = "queued"
    progress: dict[str, Any] = field(default_factory=lambda: {"phase": "queued", "fraction": 0.0})
    result: Any = None
    error: dict[str, str] | None = None
    started_at: float | None = None
    ended_at: float | None = None
    png: bytes | None = None

    def view(self) -> JobView:
        return {"id": self.id, "status": self.status, "progress": dict(self.progress),  # type: ignore[typeddict-item]
                "result": self.result, "error": self.error, "created_at": self.created_at,
                "started_at": self.started_at, "ended_at": self.ended_at}


class EmbeddedBackend:
    """In-process JobBackend; :meth:`start` loads the model, :meth:`stop` ends the threads."""

    def __init__(self, settings: SharedSettings) -> None:
        self.settings = WorkerSettings.from_shared(settings)
        self.max_queue, self.job_ttl_s, self.result_ttl_s = settings.max_queue, settings.job_ttl_s, settings.result_ttl_s
        self.job_timeout_s = float(settings.job_timeout_s)
        self.webhooks = WebhookSender.from_settings(self.settings)
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._jobs: dict[str, _Job] = {}
        self._queue: deque[str] = deque()
        self._tombstones: OrderedDict[str, float] = OrderedDict()
        self.registry = file_registry(self.settings.checkpoint_path)
        self.models = ActiveModel(self.registry, self.settings)
        self.loop = BatchLoop(self.settings, self, self.models, self.webhooks.submit)
        self._stopping = threading.Event()
        self._driver: threading.Thread | None = None
        self._vetting = ThreadPoolExecutor(1, thread_name_prefix="safespot-vet")
        self._training = ThreadPoolExecutor(1, thread_name_prefix="safespot-train")
        self._swept = 0.0
        self.metrics_registry = metrics.REGISTRY  # the worker's metrics, for the API's /metrics

    # ------------------------------------------------------------ lifecycle
    def start(self) -> EmbeddedBackend:
        """Load the registry and the active model (raises when it cannot), start the threads."""
        self.registry.register_shipped(shipped_record(self.settings.default_model))
        self.loop.load()
        self._driver = threading.Thread(target=self._drive, name="safespot-embedded-worker", daemon=True)
        self._driver.start()
        self.webhooks.start()
        for checkpoint_id in self.registry.ids_with_status("validating"):  # a restart interrupted them
            self._vetting.submit(self._vet, checkpoint_id)
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self._wake:
            self._wake.notify_all()
        if self._driver is not None:
            self._driver.join(timeout=30)
        self._vetting.shutdown(wait=False, cancel_futures=True)
        self._training.shutdown(wait=False, cancel_futures=True)
        self.webhooks.stop()

    # --------------------------------------------------------------- filter
    def submit_filter(self, request: FilterRequest, image_png: bytes) -> None:
        job_id = str(request["job_id"])
        with self._wake:
            if len(self._queue) >= self.max_queue:
                raise QueueFullError(f"{len(self._queue)} jobs are waiting (limit {self.max_queue})")
            if job_id in self._jobs:
                raise ConflictError(f"job {job_id} exists")
            self._jobs[job_id] = _Job(job_id, "filter", dict(request), time.time(), upload=image_png)
            self._queue.append(job_id)
            self._wake.notify_all()

    def get_job(self, job_id: str) -> JobView | None:
        return self._view(job_id, "filter")

    def get_result_image(self, job_id: str) -> bytes | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return None if job is None else job.png

    def queue_depth(self) -> int:
        with self._lock:
            return len(self._queue)

    def ready(self) -> tuple[bool, str]:
        if self._driver is None or not self._driver.is_alive():
            return False, "the embedded worker is not running"
        if self.loop.processor is None:
            return False, "no model loaded"
        return True, ""

    # ---------------------------------------------------------- checkpoints
    def list_checkpoints(self) -> list[CheckpointRecord]:
        return self.registry.records()

    def add_checkpoint(self, record: CheckpointRecord) -> None:
        self.registry.add(record)
        self._vetting.submit(self._vet, str(record["id"]))

    def activate_checkpoint(self, checkpoint_id: str, override: bool = False,
                            reason: str | None = None) -> CheckpointRecord:
        record = self.registry.activate(checkpoint_id, override, reason)
        with self._wake:
            self._wake.notify_all()  # the driver reloads between batches
        return record

    def delete_checkpoint(self, checkpoint_id: str) -> None:
        self.registry.delete(checkpoint_id)

    # ------------------------------------------------------------- training
    def submit_training(self, request: TrainRequest) -> None:
        job_id = str(request["job_id"])
        with self._lock:
            if job_id in self._jobs:
                raise ConflictError(f"job {job_id} exists")
            self._jobs[job_id] = _Job(job_id, "train", dict(request), time.time())
        self._training.submit(self._train, job_id)

    def get_training(self, job_id: str) -> JobView | None:
        return self._view(job_id, "train")

    # -------------------------------------------------------------- threads
    def _drive(self) -> None:
        """The worker thread: one batch after another, sleeping while the queue is empty."""
        while not self._stopping.is_set():
            try:
                if not self.loop.run():
                    with self._wake:
                        if not self._queue and not self._stopping.is_set():
                            self._wake.wait(timeout=EXPIRY_SWEEP_S)
            except Exception:  # never let the thread die (the loop already failed its jobs)
                log.exception("embedded worker pass failed")

    # ------------------------------------------------- the loop's JobSource
    @property
    def stop_requested(self) -> bool:
        return self._stopping.is_set()

    def take(self) -> Taken | None:
        with self._lock:
            self._sweep()
            while self._queue:
                job = self._jobs.get(self._queue.popleft())
                if job is not None and job.status == "queued":
                    return Taken(job.id, job.request, self.job_timeout_s, handle=job)  # type: ignore[arg-type]
        return None

    def put_back(self, taken: Taken) -> None:
        with self._lock:
            self._queue.appendleft(taken.job_id)

    def begin(self, taken: Taken) -> bytes | None:
        job: _Job = taken.handle
        with self._lock:
            job.status, job.started_at = "started", time.time()
            job.progress = {"phase": "searching", "fraction": 0.0}
            upload, job.upload = job.upload, None  # the processor holds the pixels now
        return upload

    def save_progress(self, taken: Taken, progress: Progress) -> None:
        with self._lock:
            if taken.handle.status == "started":
                taken.handle.progress = dict(progress)

    def record(self, taken: Taken, done: FinishedJob, progress: Progress) -> str:
        job: _Job = taken.handle
        with self._lock:
            job.ended_at, job.progress = time.time(), dict(progress)
            if done.error is None:
                job.status, job.result, job.png = "finished", done.result, done.png
            else:
                job.status, job.error = "failed", done.error.to_dict()
            return job.status

    def _sweep(self) -> None:
        """Expire queued jobs past the job TTL and ended jobs past the result TTL (lock held)."""
        clock = time.time()
        if clock - self._swept < EXPIRY_SWEEP_S:
            return
        self._swept = clock
        gone = [j.id for j in self._jobs.values()
                if (j.kind == "filter" and j.status == "queued" and clock - j.created_at > self.job_ttl_s)
                or (j.ended_at is not None and clock - j.ended_at > self.result_ttl_s)]
        for job_id in gone:
            del self._jobs[job_id]
            self._tombstones[job_id] = clock
        if gone:
            self._queue = deque(i for i in self._queue if i in self._jobs)
        while len(self._tombstones) > MAX_TOMBSTONES:
            self._tombstones.popitem(last=False)

    def _view(self, job_id: str, kind: str) -> JobView | None:
        with self._lock:
            self._sweep()
            job = self._jobs.get(job_id)
            if job is not None and job.kind == kind:
                return job.view()
            if job is None and job_id in self._tombstones:
                return {"id": job_id, "status": "expired"}
            return None

    # ------------------------------------------------------- vetting and training
    def _vet(self, checkpoint_id: str) -> None:
        from worker.vetting import vet_and_record

        vet_and_record(self.registry, checkpoint_id, self.settings, self.models.device)

    def _train(self, job_id: str) -> None:
        from worker.training_runs import run_training

        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return
            job.status, job.started_at = "started", time.time()

        def progress(values: dict[str, Any]) -> None:
            with self._lock:
                job.progress = dict(values)

        try:
            record = run_training(job.request, self.settings, job_id=job_id,  # type: ignore[arg-type]
                                  progress=progress, registry=self.registry)
        except Exception as e:
            error = JobError.of(e, ErrorCode.TRAINING_FAILED)
            with self._lock:
                job.status, job.error, job.ended_at = "failed", error.to_dict(), time.time()
            return
        with self._lock:
            job.status, job.result, job.ended_at = "finished", record, time.time()

