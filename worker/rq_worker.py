"""A batching RQ worker: one process, the model loaded once, many jobs per search pass.

RQ's stock workers run one job at a time (``Worker`` forks a work horse per
job, which would reload the model and is unsafe after CUDA starts).  This
worker keeps :class:`rq.SimpleWorker`'s semantics (jobs run in the worker
process, RQ's own work loop, signals, maintenance and registries) and
replaces what happens to a filter job:

1. the first filter job comes from RQ's blocking dequeue; the worker then
   takes more from the filter queue (up to ``max_batch``, waiting at most
   ``max_wait_ms``);
2. every job taken is marked started exactly as RQ does it
   (``prepare_execution`` + ``prepare_job_execution``: an Execution in the
   StartedJobRegistry, status ``started``) and heart-beaten from a
   background thread (:mod:`worker.liveness`) while in flight;
3. the search runs pass by pass (:class:`worker.processor.FilterProcessor`);
   between passes finished jobs leave through RQ's success or failure path,
   newly queued jobs take the free slots, the activation version is checked;
4. when an activation happened, the worker stops taking jobs, lets the
   in-flight ones finish on the model they started with, reloads, resumes.

Other jobs (checkpoint vetting, training) run as SimpleWorker runs them.
If the process dies, its jobs' heartbeats stop and RQ's StartedJobRegistry
cleanup (run by every worker's maintenance) retries or fails them.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, cast

import redis
from rq import Queue, SimpleWorker
from rq.exceptions import DequeueTimeout
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.utils import now
from rq.worker import WorkerStatus

from worker import jobs, metrics, store
from worker.checkpoints import ActiveModel, shipped_record
from worker.errors import JobError
from worker.liveness import Liveness
from worker.logs import fields, setup_logging
from worker.processor import FilterProcessor, FinishedJob, select_device
from worker.protocol import FILTER_FUNC, FILTER_QUEUE, ErrorCode, FilterRequest, Progress
from worker.registry_stores import redis_registry
from worker.settings import WorkerSettings
from worker.webhooks import WebhookSender, payload

log = logging.getLogger("safespot.worker")

IDLE_POLL_S = 5  # an idle worker wakes this often (heartbeat, maintenance, activations)
ACTIVATION_CHECK_S = 1.0  # between passes, read the activation version at most this often
REDIS_WAIT_CAP_S = 5.0  # after a job, retry an unreachable Redis at least this often


@dataclass
class _InFlight:
    job: Job
    queue: Queue
    execution: Any  # rq.executions.Execution
    request: FilterRequest
    started: float = field(default_factory=time.time)
    progress: Progress | None = None
    progress_saved: float = 0.0


class BatchingWorker(SimpleWorker):
    """SimpleWorker whose filter jobs share continuous-batching search passes."""

    def __init__(self, settings: WorkerSettings, connection: redis.Redis) -> None:
        super().__init__(settings.queues, name=settings.name or default_name(), connection=connection,
                         serializer=JSONSerializer, maintenance_interval=settings.maintenance_interval_s,
                         worker_ttl=max(IDLE_POLL_S + 25, settings.job_heartbeat_ttl_s))
        self.settings = settings
        self.device = select_device(settings.device)
        self.models = ActiveModel(redis_registry(connection, settings.checkpoint_path), settings, self.device)
        self.processor: FilterProcessor | None = None
        self.webhooks = WebhookSender(settings.webhook_allowed_hosts, settings.webhook_timeout_s,
                                      settings.webhook_retries)
        self.liveness = Liveness(self, period_s=max(0.5, settings.job_heartbeat_ttl_s / 3))
        self.finalize_lock = threading.Lock()
        self._inflight: dict[str, _InFlight] = {}
        self._filter_queue = next((q for q in self.queues if q.name == FILTER_QUEUE), None)
        self._reload_pending = False
        self._activation_checked = 0.0

    # ------------------------------------------------------------ lifecycle
    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        jobs.use_settings(self.settings)
        if self._filter_queue is not None:
            self._load_model()  # fail fast, before the worker announces itself
            self.models.registry.register_shipped(shipped_record(self.settings.default_model))
        try:
            metrics.serve(self.settings.metrics_port)
        except OSError as e:  # a port clash must not stop the work; the log says why
            log.error("metrics server not started on port %d: %s", self.settings.metrics_port, e)
        super().bootstrap(*args, **kwargs)
        self.liveness.start()
        self.webhooks.start()

    def teardown(self) -> None:
        self.liveness.stop()
        self.webhooks.stop()
        super().teardown()

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """In-flight jobs are abandoned this long after the last heartbeat (not job.timeout + 60)."""
        return self.settings.job_heartbeat_ttl_s

    def dequeue_job_and_maintain_ttl(self, timeout: int | None,
                                     max_idle_time: int | None = None) -> tuple[Job, Queue] | None:
        """RQ's blocking dequeue, in short waits so an idle worker picks up activations."""
        self.set_state(WorkerStatus.IDLE)
        self.procline("Listening on " + ",".join(self.queue_names()))
        idle_since, backoff = time.monotonic(), 1.0
        while True:
            try:
                self.heartbeat()
                if self.should_run_maintenance_tasks:
                    self.run_maintenance_tasks()
                if self.processor is not None and self.models.changed():
                    self._reload_model()
                wait = None if timeout is None else max(1, min(timeout, IDLE_POLL_S))
                result = self.queue_class.dequeue_any(
                    self._ordered_queues, wait, connection=self.connection, job_class=self.job_class,
                    serializer=self.serializer, death_penalty_class=self.death_penalty_class)
                if result is not None:
                    self.reorder_queues(reference_queue=result[1])
                return result
            except DequeueTimeout:
                if max_idle_time is not None and time.monotonic() - idle_since >= max_idle_time:
                    return None
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
                log.error("Redis unreachable (%s); retrying in %.0f s", e, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, 60.0)

    def execute_job(self, job: Job, queue: Queue) -> None:
        if job.func_name != FILTER_FUNC or self.processor is None:
            try:
                super().execute_job(job, queue)  # vetting, training: in process, one at a time
            finally:
                self._wait_for_redis()
            return
        try:
            if self.models.changed():  # activated while we waited for this job: serve it the new model
                self._reload_model()
            self._run_batch(job, queue)
        finally:
            self._wait_for_redis()
            self.set_state(WorkerStatus.IDLE)

    def _wait_for_redis(self) -> None:
        """Block until Redis answers again (backoff up to REDIS_WAIT_CAP_S).

        RQ's work loop quits the process on any Redis error raised outside the
        dequeue (``set_state``, ``heartbeat``, maintenance), so a batch that ended
        because Redis went away would otherwise take the worker down with it.
        The in-flight jobs were already failed or abandoned by ``_run_batch``."""
        backoff = 0.5
        while True:
            try:
                self.connection.ping()
                return
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
                if self._stop_requested:
                    return
                log.error("Redis unreachable after a job (%s); retrying in %.1f s", e, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, REDIS_WAIT_CAP_S)

    # ------------------------------------------------------------ the batch
    def _run_batch(self, first: Job, queue: Queue) -> None:
        """Search until no filter job is left in flight, admitting new ones between passes."""
        assert self.processor is not None
        try:
            self._admit(first, queue)
            self._take_more(wait_s=self.settings.max_wait_ms / 1000)
            while self.processor.in_flight:
                if not self._draining:
                    self._take_more(wait_s=0)
                started, passes = time.perf_counter(), self.processor.passes
                finished = self.processor.step()
                metrics.pass_ran(self._model_name(), self.processor.last_batch,
                                 time.perf_counter() - started, self.processor.passes - passes)
                for done in finished:
                    self._finish(done)
                self._save_progress()
                self._expire_timeouts()
                self._check_activation()
        except (SystemExit, KeyboardInterrupt):  # cold shutdown: hand the jobs back, visibly
            self._fail_all(JobError("the worker stopped during the search", code=ErrorCode.WORKER_SHUTDOWN, retryable=True))
            raise
        except Exception as e:  # a bug: fail what is in flight, keep the worker alive
            log.exception("batch loop failed")
            self._fail_all(JobError(f"{type(e).__name__}: {e}", code=ErrorCode.INTERNAL_ERROR, retryable=True))
            self._reset_processor()
        if self._reload_pending:
            self._reload_model()

    @property
    def _draining(self) -> bool:
        return self._reload_pending or self._stop_requested

    def _take_more(self, wait_s: float) -> None:
        """Fill free slots from the filter queue, waiting up to ``wait_s`` for jobs to arrive."""
        assert self.processor is not None
        deadline = time.monotonic() + wait_s
        while self.processor.free_slots and not self._draining:
            taken = self._dequeue_filter_job()
            if taken is None:
                if time.monotonic() >= deadline:
                    return
                time.sleep(0.002)
                continue
            job, queue = taken
            # A job that arrives after an activation must get the new model.  Checked
            # per job (one GET): an activation may land while this call waits for more.
            if self.models.changed():
                self._put_back(job, queue)
                self._reload_pending = True
                return
            if job.func_name == FILTER_FUNC:
                self._admit(job, queue)
            else:  # something else was put on the filter queue: run it as RQ would
                SimpleWorker.execute_job(self, job, queue)
                self.set_state(WorkerStatus.BUSY)

    def _put_back(self, job: Job, queue: Queue) -> None:
        """Return a dequeued, not yet started job to the front of its queue (atomically)."""
        with self.connection.pipeline() as pipe:
            pipe.lrem(queue.intermediate_queue_key, 1, job.id)
            queue.push_job_id(job.id, pipeline=pipe, at_front=True)
            pipe.execute()

    def _dequeue_filter_job(self) -> tuple[Job, Queue] | None:
        assert self._filter_queue is not None
        try:
            return self.queue_class.dequeue_any(
                [self._filter_queue], None, connection=self.connection, job_class=self.job_class,
                serializer=self.serializer, death_penalty_class=self.death_penalty_class)
        except redis.exceptions.RedisError:
            raise
        except Exception:  # an undecodable job: RQ's intermediate-queue cleanup fails it later
            log.exception("could not dequeue a job")
            return None

    def _admit(self, job: Job, queue: Queue) -> None:
        """Mark the job started (RQ's bookkeeping), then hand its image to the processor."""
        assert self.processor is not None
        execution = self.prepare_execution(job)
        # Always remove it from the intermediate queue: filter jobs come from single-queue
        # dequeues (LMOVE), and a leftover entry would later be failed by RQ's cleanup.
        self.prepare_job_execution(job, remove_from_intermediate_queue=True)
        job.started_at = now()
        request = job.args[0] if job.args and isinstance(job.args[0], dict) else {}
        entry = _InFlight(job, queue, execution, request)  # type: ignore[arg-type]
        self._inflight[job.id] = entry
        try:
            if not request:
                raise JobError("a filter job takes one FilterRequest argument", code=ErrorCode.INVALID_REQUEST)
            self.processor.add(job.id, cast(FilterRequest, request), store.load_upload(self.connection, job.id))
        except JobError as e:
            self._end(entry, error=e)
            return
        except Exception as e:
            log.exception("could not start job %s", job.id)
            self._end(entry, error=JobError(f"{type(e).__name__}: {e}", code=ErrorCode.INTERNAL_ERROR))
            return
        submitted = float(request.get("submitted_at") or time.time())
        metrics.QUEUE_WAIT.observe(max(0.0, time.time() - submitted))
        entry.progress = {"phase": "searching", "fraction": 0.0, "grad_evals": 0, "outer_steps": 0,
                          "batch_size": self.processor.in_flight}
        log.info("job started", extra=fields(job_id=job.id, preset=request.get("preset")))

    def _finish(self, done: FinishedJob) -> None:
        entry = self._inflight.get(done.job_id)
        if entry is not None:
            self._end(entry, done=done)

    def _end(self, entry: _InFlight, done: FinishedJob | None = None, error: JobError | None = None) -> None:
        """One job leaves: success path (result, PNG) or failure path (meta error); then webhook."""
        self._inflight.pop(entry.job.id, None)
        try:
            self._record_end(entry, done, error)
        except BaseException:
            # Could not record the end (Redis away?): stop heart-beating the job so that RQ's
            # abandoned-job cleanup retries or fails it, rather than it staying "started".
            self.executions.pop(entry.execution.id, None)
            raise

    def _record_end(self, entry: _InFlight, done: FinishedJob | None, error: JobError | None) -> None:
        job, queue, model = entry.job, entry.queue, self._model_name()
        error = error or (done.error if done is not None else None)
        preset = str(entry.request.get("preset") or "unknown")
        if error is None and done is not None and done.result is not None and done.png is not None:
            result = done.result
            ttl = job.get_result_ttl(self.default_result_ttl)
            if ttl != 0:
                store.store_result_image(self.connection, job.id, done.png, ttl)
            job.meta["progress"] = {"phase": "done", "fraction": 1.0, "grad_evals": result["grad_evals"],
                                    "batch_size": done.batch_size}
            job.save_meta()
            with self.finalize_lock:
                self.handle_execution_ended(job, queue, job.success_callback_timeout)
                job._result = result  # what RQ stores as the return value (JSONSerializer)
                self.handle_job_success(job=job, queue=queue, started_job_registry=queue.started_job_registry,
                                        execution=entry.execution)
            outcome, body = "finished", payload(job.id, "finished", result=result)
        else:
            error = error or JobError("the search returned no result", code=ErrorCode.INTERNAL_ERROR)
            job.meta["error"] = error.to_dict()
            job.meta["progress"] = {**(entry.progress or {}), "phase": "done"}
            job.save_meta()
            if not error.retryable:
                job.retries_left = 0  # the same input fails the same way: spend no retry on it
            with self.finalize_lock:
                self.handle_execution_ended(job, queue, job.failure_callback_timeout)
                self.handle_job_failure(job, queue, started_job_registry=queue.started_job_registry,
                                        exc_string=f"{error.code}: {error.message}", execution=entry.execution)
            requeued = job.get_status(refresh=False) != JobStatus.FAILED  # RQ spent a retry on it
            outcome = "retried" if requeued else "failed"
            body = payload(job.id, "failed", error=error.to_dict())
        metrics.job_ended(outcome, preset, model, time.time() - entry.started,
                          body.get("result") if outcome == "finished" else None)
        log.info("job %s", outcome, extra=fields(job_id=job.id, outcome=outcome, preset=preset,
                                                 error=error.code if error else None))
        if outcome != "retried":  # the client hears about a job once, when it really ends
            self.webhooks.submit(entry.request.get("webhook_url"), body)

    def _fail_all(self, error: JobError) -> None:
        for entry in list(self._inflight.values()):
            if self.processor is not None:
                self.processor.abandon(entry.job.id)
            try:
                self._end(entry, error=error)
            except Exception:  # keep going: the others must not stay "started" either
                log.exception("could not fail job %s", entry.job.id)

    def _on_progress(self, job_id: str, progress: Progress) -> None:
        entry = self._inflight.get(job_id)
        if entry is not None:
            entry.progress = progress

    def _save_progress(self) -> None:
        """Write job.meta["progress"], at most every progress_interval_s per job."""
        clock = time.time()
        for entry in list(self._inflight.values()):
            if entry.progress is not None and clock - entry.progress_saved >= self.settings.progress_interval_s:
                entry.job.meta["progress"] = dict(entry.progress)
                entry.job.save_meta()
                entry.progress_saved = clock

    def _expire_timeouts(self) -> None:
        clock = time.time()
        for entry in list(self._inflight.values()):
            timeout = entry.job.timeout
            if timeout is not None and timeout > 0 and clock - entry.started > timeout:
                assert self.processor is not None
                self.processor.abandon(entry.job.id)
                self._end(entry, error=JobError(f"the search took longer than {timeout} s", code=ErrorCode.TIMEOUT))

    # ---------------------------------------------------------------- model
    def _check_activation(self) -> None:
        clock = time.monotonic()
        if self._reload_pending or clock - self._activation_checked < ACTIVATION_CHECK_S:
            return
        self._activation_checked = clock
        if self.models.changed():
            log.info("activation seen: finishing %d in-flight jobs, then reloading",
                     len(self._inflight))
            self._reload_pending = True

    def _load_model(self) -> None:
        loaded, checkpoint_id = self.models.load()
        self.processor = FilterProcessor(
            loaded, checkpoint_id, max_batch=self.settings.max_batch,
            max_batch_pixels=self.settings.max_batch_pixels, progress=self._on_progress)
        ref = self.processor.model_ref
        metrics.set_model(ref["name"], ref["sha256"], ref["checkpoint_id"])

    def _reload_model(self) -> None:
        """Between batches only: on failure keep serving the loaded model (logged)."""
        self._reload_pending = False
        try:
            self._load_model()
        except Exception:
            log.exception("could not load the activated checkpoint; keeping %s", self._model_name())

    def _reset_processor(self) -> None:
        if self.processor is not None:
            p = self.processor
            self.processor = FilterProcessor(p.checkpoint, p.checkpoint_id, max_batch=p.max_batch,
                                             max_batch_pixels=p.max_batch_pixels, progress=self._on_progress)

    def _model_name(self) -> str:
        return "none" if self.processor is None else self.processor.model_ref["name"]


def default_name() -> str:
    return f"safespot-{socket.gethostname()}-{os.getpid()}"


def run_worker(settings: WorkerSettings, burst: bool = False) -> int:
    """Run a worker until stopped (or, with ``burst``, until the queues are empty)."""
    import torch

    if not settings.redis_url:
        raise ValueError("a worker needs SAFESPOT_REDIS_URL")
    setup_logging(settings.log_level, settings.log_json)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    worker = BatchingWorker(settings, settings.redis_client())
    worker.work(burst=burst)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m worker.rq_worker [--burst]``: settings from the environment."""
    args = sys.argv[1:] if argv is None else argv
    return run_worker(WorkerSettings(), burst="--burst" in args)


if __name__ == "__main__":
    sys.exit(main())
