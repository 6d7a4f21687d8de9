"""A batching RQ worker: one process, the model loaded once, many jobs per search pass.

RQ's stock workers run one job at a time (``Worker`` forks a work horse per
job, which would reload the model and is unsafe after CUDA starts).  This one
keeps :class:`rq.SimpleWorker`'s work loop, signals, maintenance and
registries, and hands filter jobs to :class:`worker.lifecycle.BatchLoop`,
with itself as the loop's JobSource: jobs are taken from the filter queue,
marked started and ended exactly as RQ does it (:mod:`worker.rq_compat`), and
heart-beaten from a thread (:mod:`worker.liveness`) while in flight.  Other
jobs (vetting, training) run as SimpleWorker runs them.  If the process dies,
the heartbeats stop and RQ's registry cleanup retries or fails its jobs.
:class:`PerformedJob` is the loop's source for one filter job that a stock RQ
worker performs (``worker.jobs.filter_job``).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import Any, cast

import redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from worker import jobs, metrics
from worker.checkpoints import ActiveModel, shipped_record
from worker.lifecycle import BatchLoop, Taken
from worker.liveness import Liveness
from worker.logs import setup_logging
from worker.processor import FilterProcessor, FinishedJob
from worker.protocol import (
    FILTER_FUNC,
    FILTER_QUEUE,
    FilterRequest,
    Progress,
    result_image_key,
    upload_key,
)
from worker.registry_stores import redis_registry
from worker.rq_compat import IDLE_POLL_S, CompatWorker, no_retry_unless
from worker.settings import WorkerSettings
from worker.webhooks import WebhookSender

log = logging.getLogger("safespot.worker")


def write_end(job: Job, done: FinishedJob, progress: Progress, result_ttl: int | None) -> None:
    """What a client reads of an ended job besides RQ's status: the PNG (expiring with the
    result; a TTL of None or below 0 is RQ's "never"), the progress, the error."""
    if done.error is None and done.png is not None and result_ttl != 0:
        expiry = int(result_ttl) if result_ttl is not None and result_ttl > 0 else None
        job.connection.set(result_image_key(job.id), done.png, ex=expiry)
    error = {} if done.error is None else {"error": done.error.to_dict()}
    jobs.save_meta(job, progress=progress, **error)


def load_upload(job: Job) -> bytes | None:
    return cast(bytes | None, job.connection.get(upload_key(job.id)))


def taken(job: Job, queue: Queue | None) -> Taken:
    request = job.args[0] if job.args and isinstance(job.args[0], dict) else {}
    return Taken(job.id, cast(FilterRequest, request), job.timeout, handle=[job, queue, None])


class BatchingWorker(CompatWorker):
    """SimpleWorker whose filter jobs share continuous-batching search passes."""

    def __init__(self, settings: WorkerSettings, connection: redis.Redis) -> None:
        name = settings.name or f"safespot-{socket.gethostname()}-{os.getpid()}"
        super().__init__(settings.queues, name=name, connection=connection, serializer=JSONSerializer,
                         maintenance_interval=settings.maintenance_interval_s,
                         worker_ttl=max(IDLE_POLL_S + 25, settings.job_heartbeat_ttl_s))
        self.settings = settings
        self.webhooks = WebhookSender.from_settings(settings)
        self.liveness = Liveness(self, period_s=max(0.5, settings.job_heartbeat_ttl_s / 3))
        self.filter_queue = next((q for q in self.queues if q.name == FILTER_QUEUE), None)
        self.registry = redis_registry(connection, settings.checkpoint_path)
        self.models = ActiveModel(self.registry, settings)
        self.loop = BatchLoop(settings, self, self.models, self.webhooks.submit)
        self.on_idle = self._reload_when_idle

    @property
    def processor(self) -> FilterProcessor | None:
        return self.loop.processor

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        jobs.use_settings(self.settings)
        if self.filter_queue is not None:
            self.loop.load()  # fail fast, before the worker announces itself
            self.registry.register_shipped(shipped_record(self.settings.default_model))
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

    def execute_job(self, job: Job, queue: Queue) -> None:
        try:
            if job.func_name != FILTER_FUNC or self.processor is None:
                self.run_as_rq_would(job, queue)  # vetting, training: in process, one at a time
            else:
                self.loop.run(taken(job, queue))
        finally:
            self.wait_for_redis()  # the batch's jobs were already failed or abandoned
            self.set_idle()

    def _reload_when_idle(self) -> None:
        if self.processor is not None:
            self.loop.reload_if_changed()

    def take(self) -> Taken | None:
        assert self.filter_queue is not None
        while True:
            try:
                dequeued = self.dequeue_now(self.filter_queue)
            except redis.exceptions.RedisError:
                raise
            except Exception:  # an undecodable job: RQ's intermediate-queue cleanup fails it later
                log.exception("could not dequeue a job")
                return None
            if dequeued is None:
                return None
            job, queue = dequeued
            if job.func_name == FILTER_FUNC:
                return taken(job, queue)
            self.run_as_rq_would(job, queue)  # something else was put on the filter queue
            self.set_idle(False)

    def put_back(self, item: Taken) -> None:
        self.requeue_at_front(item.handle[0], item.handle[1])

    def begin(self, item: Taken) -> bytes | None:
        item.handle[2] = self.mark_started(item.handle[0])
        return load_upload(item.handle[0])

    def save_progress(self, item: Taken, progress: Progress) -> None:
        jobs.save_meta(item.handle[0], progress=progress)

    def record(self, item: Taken, done: FinishedJob, progress: Progress) -> str:
        job, queue, execution = item.handle
        try:
            write_end(job, done, progress, job.get_result_ttl(self.default_result_ttl))
            if done.error is None:
                self.record_success(job, queue, execution, done.result)
                return "finished"
            reason = f"{done.error.code}: {done.error.message}"
            return "retried" if self.record_failure(job, queue, execution, reason, done.error.retryable) else "failed"
        except BaseException:
            self.forget(execution)  # Redis away? RQ's abandoned-job cleanup retries or fails it
            raise


class PerformedJob:
    """The JobSource of one filter job that RQ itself is performing (``worker.jobs.filter_job``):
    its end is written to meta and the PNG here; RQ records the return value or the raise."""

    save_progress = BatchingWorker.save_progress

    def __init__(self, job: Job) -> None:
        self.job = job
        self.pending: Taken | None = taken(job, None)
        self.done: FinishedJob | None = None

    @property
    def stop_requested(self) -> bool:
        return self.pending is None  # its one job is taken: nothing more to wait for

    def take(self) -> Taken | None:
        item, self.pending = self.pending, None
        if item is not None:
            item.timeout_s = None  # RQ's own death penalty enforces job.timeout
        return item

    def put_back(self, item: Taken) -> None:
        self.pending = item

    def begin(self, item: Taken) -> bytes | None:
        return load_upload(self.job)

    def record(self, item: Taken, done: FinishedJob, progress: Progress) -> str:
        if done.error is not None:
            no_retry_unless(self.job, done.error.retryable)
        write_end(self.job, done, progress, self.job.get_result_ttl(500))
        self.done = done
        return "finished" if done.error is None else "retried" if self.job.retries_left else "failed"


def run_worker(settings: WorkerSettings, burst: bool = False) -> int:
    """Run a worker until stopped (or, with ``burst``, until the queues are empty)."""
    if not settings.redis_url:
        raise ValueError("a worker needs SAFESPOT_REDIS_URL")
    setup_logging(settings.log_level, settings.log_json)
    worker = BatchingWorker(settings, settings.redis_client())
    worker.work(burst=burst)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m worker.rq_worker [--burst]``: settings from the environment."""
    args = sys.argv[1:] if argv is None else argv
    return run_worker(WorkerSettings(), burst="--burst" in args)


if __name__ == "__main__":
    sys.exit(main())
