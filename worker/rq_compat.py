"""Every use of RQ's internals, in one place: the batching worker runs filter jobs
itself, so it marks them started as ``perform_job`` does, ends them through the
tail of ``perform_job``, and heart-beats RQ's executions; the API reads a job's
place in RQ's queue list and runs the StartedJobRegistry cleanup (torch-free).  ``rq`` is pinned to
one minor version and tests/worker/test_rq_compat.py exercises each helper
against a real Redis, so an upgrade that changes them fails there first."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import redis
from rq import Queue, SimpleWorker
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.utils import now
from rq.worker import WorkerStatus

log = logging.getLogger("safespot.worker")

IDLE_POLL_S = 5  # an idle worker wakes this often (heartbeat, maintenance, the idle hook)
REDIS_WAIT_CAP_S = 5.0  # after a job, retry an unreachable Redis at least this often


def place_in_queue(queue: Queue, job_id: str) -> int | None:
    """A queued job's position (0: taken next), or None when it is not waiting."""
    return cast(int | None, queue.connection.lpos(queue.key, job_id, rank=-1))


def withdraw(queue: Queue, job: Job) -> bool:
    """Take a waiting job out of its queue and delete it; False when a worker took it first."""
    if not queue.connection.lrem(queue.key, 1, job.id):
        return False
    job.delete(remove_from_queue=False)
    return True


def no_retry_unless(job: Job, retryable: bool) -> None:
    """Before failing ``job``: RQ queues a failed job again while it has retries left, and a
    failure that is not ``retryable`` (the same input fails the same way) must spend none."""
    if not retryable:
        job.retries_left = 0


def reap_abandoned(queue: Queue) -> None:
    """Retry or fail the started jobs whose worker stopped heart-beating (RQ's cleanup)."""
    queue.started_job_registry.cleanup()


class CompatWorker(SimpleWorker):
    """SimpleWorker plus the few operations the batching worker needs, named for what they do."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.finalize_lock = threading.Lock()  # never heartbeat an execution while it is being ended
        self.on_idle: Callable[[], None] = lambda: None  # called between short dequeue waits

    @property
    def stop_requested(self) -> bool:
        return bool(self._stop_requested)

    @property
    def busy(self) -> bool:
        """Some execution (a batched filter job or a job RQ performs) is in flight."""
        return bool(self.executions)

    def dequeue_job_and_maintain_ttl(self, timeout: int | None,
                                     max_idle_time: int | None = None) -> tuple[Job, Queue] | None:
        """RQ's blocking dequeue, in short waits so an idle worker runs ``on_idle`` (activations)."""
        idle_since = time.monotonic()
        while True:
            self.on_idle()
            wait = None if timeout is None else max(1, min(timeout, IDLE_POLL_S))
            result = super().dequeue_job_and_maintain_ttl(wait, max_idle_time=wait)
            idle_s = time.monotonic() - idle_since
            if result is not None or wait is None or (max_idle_time is not None and idle_s >= max_idle_time):
                return result

    def dequeue_now(self, queue: Queue) -> tuple[Job, Queue] | None:
        """One job from ``queue`` without waiting, or None."""
        return self.queue_class.dequeue_any([queue], None, connection=self.connection, job_class=self.job_class,
                                            serializer=self.serializer, death_penalty_class=self.death_penalty_class)

    def requeue_at_front(self, job: Job, queue: Queue) -> None:
        """Return a dequeued, not yet started job to the front of its queue (atomically)."""
        with self.connection.pipeline() as pipe:
            pipe.lrem(queue.intermediate_queue_key, 1, job.id)
            queue.push_job_id(job.id, pipeline=pipe, at_front=True)
            pipe.execute()

    def run_as_rq_would(self, job: Job, queue: Queue) -> None:
        """Perform a job the stock SimpleWorker way (vetting, training, a stray job)."""
        SimpleWorker.execute_job(self, job, queue)

    def set_idle(self, idle: bool = True) -> None:
        self.set_state(WorkerStatus.IDLE if idle else WorkerStatus.BUSY)

    def mark_started(self, job: Job) -> Execution:
        """What RQ does before running a job: an Execution in the StartedJobRegistry, status
        ``started``, out of the intermediate queue (where RQ's cleanup would fail it)."""
        execution = self.prepare_execution(job)
        self.prepare_job_execution(job, remove_from_intermediate_queue=True)
        job.started_at = now()
        return execution

    def record_success(self, job: Job, queue: Queue, execution: Execution, result: Any) -> None:
        """The tail of RQ's ``perform_job`` for a job that returned ``result``."""
        with self.finalize_lock:
            self._finalize_success(job, queue, execution, result)

    def record_failure(self, job: Job, queue: Queue, execution: Execution, reason: str,
                       retryable: bool) -> bool:
        """RQ's failure path (a retry is spent when one is left and ``retryable``);
        True when the job was queued again rather than failed."""
        no_retry_unless(job, retryable)
        with self.finalize_lock:
            self.handle_execution_ended(job, queue, job.failure_callback_timeout)
            self.handle_job_failure(job, queue, started_job_registry=queue.started_job_registry,
                                    exc_string=reason, execution=execution)
        return job.get_status(refresh=False) != JobStatus.FAILED

    def forget(self, execution: Execution) -> None:
        """Stop heart-beating an execution whose end could not be recorded: RQ's
        abandoned-job cleanup then retries or fails it."""
        self.executions.pop(execution.id, None)

    def heartbeat_executions(self) -> None:
        """Push every in-flight execution's expiry in the StartedJobRegistry ahead."""
        with self.finalize_lock:
            for execution in list(self.executions.values()):
                self.maintain_heartbeats(execution.job, execution)

    def unsubscribe(self) -> None:
        """Leave the command channel at once.  RQ unsubscribes, then stops redis-py's
        reader, which waits out the reader's ``get_message(timeout=60)`` when the reply
        came first (a minute-long shutdown); stopping first lets the reply end it."""
        thread, pubsub = self.pubsub_thread, self.pubsub
        if thread is None or pubsub is None:
            return
        thread.stop(timeout=0)
        with contextlib.suppress(redis.exceptions.RedisError):  # nothing left to leave
            pubsub.unsubscribe()
        thread.join(timeout=2)
        self.pubsub_thread = None

    def wait_for_redis(self) -> None:
        """Block until Redis answers again, or a stop: RQ's work loop quits the process on a
        Redis error outside the dequeue, so a batch ended by Redis going away would too."""
        backoff = 0.5
        while not self.stop_requested:
            try:
                self.connection.ping()
                return
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
                log.error("Redis unreachable after a job (%s); retrying in %.1f s", e, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, REDIS_WAIT_CAP_S)
