"""One lifecycle for a filter job, whichever queue it came from.

:class:`BatchLoop` is the only loop that runs filter jobs: it admits queued
jobs into the processor's free slots, runs one search pass at a time,
finishes the jobs that finished, times out jobs past their limit, and
reloads the model when the active checkpoint changed (after letting the
jobs in flight finish on the model they started with).  Where jobs come
from and where their ends are written is a :class:`JobSource`: RQ
(:mod:`worker.rq_worker`, also for one job performed by a stock RQ worker)
or the in-memory queue of ``safespot serve`` (:mod:`worker.embedded`).
:meth:`BatchLoop.finish` is the one way a job ends: its final progress, the record,
metrics, the log line and the webhook.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from worker import metrics
from worker.checkpoints import ActiveModel
from worker.errors import JobError
from worker.logs import fields
from worker.processor import FilterProcessor, FinishedJob, build_processor
from worker.protocol import ErrorCode, FilterRequest, Progress
from worker.settings import WorkerSettings
from worker.webhooks import payload

log = logging.getLogger("safespot.worker")

ACTIVATION_CHECK_S = 1.0  # between passes, ask whether a checkpoint was activated at most this often
Notify = Callable[[str | None, dict[str, Any]], Any]  # (webhook url, body): sends the webhook


@dataclass
class Taken:
    """A queued filter job a source handed over (not started yet)."""

    job_id: str
    request: FilterRequest
    timeout_s: float | None = None  # the search may take this long; None or 0: no limit
    handle: Any = None  # the source's own record of the job (RQ: the job and its queue)
    started: float = 0.0  # the loop's own bookkeeping from here on
    progress: Progress | None = None
    progress_saved: float = 0.0


class JobSource(Protocol):
    """Where filter jobs come from and where their ends are written."""

    @property
    def stop_requested(self) -> bool: ...  # take no more jobs; finish those in flight
    def take(self) -> Taken | None: ...  # the next queued job, without waiting
    def put_back(self, taken: Taken) -> None: ...  # return a taken job to the front of the queue
    def begin(self, taken: Taken) -> bytes | None: ...  # mark it started; its upload (JobError: unusable)
    def save_progress(self, taken: Taken, progress: Progress) -> None: ...
    def record(self, taken: Taken, done: FinishedJob, progress: Progress) -> str: ...  # the outcome


class BatchLoop:
    """Continuous batching over one :class:`JobSource`; one thread drives it."""

    def __init__(self, settings: WorkerSettings, source: JobSource, models: ActiveModel, notify: Notify) -> None:
        self.settings = settings
        self.source = source
        self.models = models
        self.notify = notify
        self.processor: FilterProcessor | None = None
        self._inflight: dict[str, Taken] = {}
        self._reload_pending = False
        self._activation_checked = 0.0

    @property
    def model_name(self) -> str:
        return "none" if self.processor is None else self.processor.model_ref["name"]

    def load(self) -> None:
        """Load the active checkpoint now; raises when it cannot."""
        loaded, checkpoint_id = self.models.load()
        self.processor = build_processor(self.settings, loaded, checkpoint_id, progress=self._on_progress,
                                         name=self.models.name)
        ref = self.processor.model_ref
        metrics.set_model(ref["name"], ref["sha256"], ref["checkpoint_id"])

    def reload_if_changed(self) -> None:
        """Between batches: load an activated checkpoint; on failure keep serving the loaded one."""
        self._reload_pending = False
        if self.processor is not None and not self.models.changed():
            return
        try:
            self.load()
        except Exception:
            if self.processor is None:
                raise
            log.exception("could not load the activated checkpoint; keeping %s", self.model_name)

    def run(self, first: Taken | None = None) -> bool:
        """Admit ``first`` (else the next queued job) and search until no job is in flight,
        admitting more between passes.  False when there was nothing to run."""
        try:
            self.reload_if_changed()
        except Exception as e:  # no model at all (a plain RQ worker's first job): end it unsearched
            first = first or self.source.take()
            if first is None:
                raise
            first.started = time.time()
            self.finish(first, FinishedJob(first.job_id, error=JobError(
                f"no model could be loaded: {e}", code=ErrorCode.MODEL_UNAVAILABLE, retryable=True)))
            return True
        first = first or self.source.take()
        if first is None:
            return False
        try:
            self._admit(first)
            self._take_more(wait_s=self.settings.max_wait_ms / 1000)
            while self._processor.in_flight:
                if not self._draining:
                    self._take_more(wait_s=0)
                self._step()
                self._save_progress()
                self._expire_timeouts()
                self._check_activation()
        except (SystemExit, KeyboardInterrupt):  # cold shutdown: hand the jobs back, visibly
            self._fail_all(JobError("the worker stopped during the search", code=ErrorCode.WORKER_SHUTDOWN, retryable=True))
            raise
        except Exception as e:  # a bug: fail what is in flight, keep the worker alive
            log.exception("batch loop failed")
            self._fail_all(JobError(f"{type(e).__name__}: {e}", code=ErrorCode.INTERNAL_ERROR, retryable=True))
            p = self._processor
            self.processor = build_processor(self.settings, p.checkpoint, p.checkpoint_id,
                                             progress=self._on_progress, name=p.name)
        if self._reload_pending:
            self.reload_if_changed()
        return True

    @property
    def _processor(self) -> FilterProcessor:
        if self.processor is None:
            raise RuntimeError("no model loaded")
        return self.processor

    @property
    def _draining(self) -> bool:
        return self._reload_pending or self.source.stop_requested

    def _take_more(self, wait_s: float) -> None:
        """Fill free slots, waiting up to ``wait_s`` for jobs to arrive."""
        deadline = time.monotonic() + wait_s
        while self._processor.free_slots and not self._draining:
            taken = self.source.take()
            if taken is None:
                if time.monotonic() >= deadline:
                    return
                time.sleep(0.002)
                continue
            if self.models.changed():  # per job: one that arrives after an activation gets the new model
                self.source.put_back(taken)
                self._reload_pending = True
                return
            self._admit(taken)

    def _admit(self, job: Taken) -> None:
        self._inflight[job.job_id], job.started = job, time.time()
        try:
            upload = self.source.begin(job)
            if not job.request:
                raise JobError("a filter job takes one FilterRequest argument", code=ErrorCode.INVALID_REQUEST)
            self._processor.add(job.job_id, job.request, upload)
        except Exception as e:
            if not isinstance(e, JobError):
                log.exception("could not start job %s", job.job_id)
            self.finish(job, FinishedJob(job.job_id, error=JobError.of(e)))
            return
        metrics.QUEUE_WAIT.observe(max(0.0, time.time() - float(job.request.get("submitted_at") or time.time())))
        job.progress = {"phase": "searching", "fraction": 0.0, "grad_evals": 0, "outer_steps": 0,
                        "batch_size": self._processor.in_flight}
        log.info("job started", extra=fields(job_id=job.job_id, preset=job.request.get("preset")))

    def _step(self) -> None:
        processor = self._processor
        started, passes = time.perf_counter(), processor.passes
        finished = processor.step()
        metrics.pass_ran(self.model_name, processor.last_batch, time.perf_counter() - started,
                         processor.passes - passes)
        for done in finished:
            entry = self._inflight.get(done.job_id)
            if entry is not None:
                self.finish(entry, done)

    def finish(self, entry: Taken, done: FinishedJob) -> str:
        """The one way a job ends: its final progress, recorded where clients read it, counted,
        logged, its webhook sent.  The source's record returns the outcome: "finished",
        "failed", or "retried" (the queue runs it again; the client hears about a job once,
        when it really ends)."""
        self._inflight.pop(entry.job_id, None)
        if done.error is None and (done.result is None or done.png is None):
            done = FinishedJob(done.job_id, error=JobError("the search returned no result", code=ErrorCode.INTERNAL_ERROR),
                               batch_size=done.batch_size)
        progress: Progress = {**(entry.progress or {}), "phase": "done"}
        if done.error is None and done.result is not None:
            progress = {"phase": "done", "fraction": 1.0, "grad_evals": done.result["grad_evals"],
                        "batch_size": done.batch_size}
        outcome = self.source.record(entry, done, progress)
        preset = str(entry.request.get("preset") or "unknown")
        metrics.job_ended(outcome, preset, self.model_name, time.time() - entry.started,
                          dict(done.result) if outcome == "finished" and done.result else None)
        log.info("job %s", outcome, extra=fields(job_id=done.job_id, outcome=outcome, preset=preset,
                                                 error=done.error.code if done.error else None))
        if outcome != "retried":
            body = (payload(done.job_id, "finished", result=done.result) if outcome == "finished"
                    else payload(done.job_id, "failed", error=done.error.to_dict() if done.error else None))
            self.notify(entry.request.get("webhook_url"), body)
        return outcome

    def _fail(self, entry: Taken, error: JobError) -> None:
        """End a job in flight with ``error``; the processor drops it (nobody wants its answer)."""
        if self.processor is not None:
            self.processor.abandon(entry.job_id)
        self.finish(entry, FinishedJob(entry.job_id, error=error))

    def _fail_all(self, error: JobError) -> None:
        for entry in list(self._inflight.values()):
            try:
                self._fail(entry, error)
            except Exception:  # keep going: the others must not stay "started" either
                log.exception("could not fail job %s", entry.job_id)

    def _on_progress(self, job_id: str, progress: Progress) -> None:
        entry = self._inflight.get(job_id)
        if entry is not None:
            entry.progress = progress

    def _save_progress(self) -> None:
        """Hand each job's progress to its source, at most every progress_interval_s."""
        clock = time.time()
        for entry in list(self._inflight.values()):
            if entry.progress is not None and clock - entry.progress_saved >= self.settings.progress_interval_s:
                self.source.save_progress(entry, dict(entry.progress))  # type: ignore[arg-type]
                entry.progress_saved = clock

    def _expire_timeouts(self) -> None:
        clock = time.time()
        for entry in list(self._inflight.values()):
            timeout = entry.timeout_s
            if timeout and clock - entry.started > timeout:
                self._fail(entry, JobError(f"the search took longer than {timeout:g} s", code=ErrorCode.TIMEOUT))

    def _check_activation(self) -> None:
        clock = time.monotonic()
        if self._reload_pending or clock - self._activation_checked < ACTIVATION_CHECK_S:
            return
        self._activation_checked = clock
        if self.models.changed():
            log.info("activation seen: finishing %d in-flight jobs, then reloading", len(self._inflight))
            self._reload_pending = True
