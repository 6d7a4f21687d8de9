"""`RedisJobBackend`: the JobBackend of a deployment, on Redis + RQ.

The API only enqueues and reads; workers (`safespot worker`) run the jobs.
Everything that crosses Redis is named in `worker.protocol`; jobs use RQ's
JSONSerializer so no pickle crosses Redis.

Failure behaviour:
- Redis unreachable: every method raises `NotReady` (503).  The client keeps
  no dead socket: redis-py's pool drops a broken connection and opens a new
  one on the next call, so the API recovers by itself when Redis returns.
- A worker dies mid-job: RQ keeps each started job in the queue's
  StartedJobRegistry under a TTL that the worker's heartbeat extends.  Before
  we report a job as "started", we run the registry's cleanup (at most every
  `REAP_INTERVAL_S`), which retries or fails jobs whose heartbeat lapsed, so
  a client never sees "started" forever.

Reading a job: RQ knows more states than a client needs; they fold into the
six of `JobView["status"]`.  A failed job carries the worker's
`meta["error"] = {"code", "message"}`; when there is none (the worker died, or
raised something unexpected) a generic error is reported instead of the
traceback, which stays in RQ for operators.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, ParamSpec, TypeVar, cast

import redis
from rq import Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from service.errors import NotReady, QueueFull
from service.settings import Settings
from worker.protocol import (
    ADMIN_QUEUE,
    FILTER_FUNC,
    FILTER_QUEUE,
    TRAIN_FUNC,
    TRAIN_QUEUE,
    VET_FUNC,
    WORKERS_KEY,
    CheckpointRecord,
    ErrorCode,
    FilterRequest,
    JobView,
    Progress,
    TrainRequest,
    VetRequest,
    result_image_key,
    upload_key,
    worker_alive_key,
)
from worker.registry_stores import redis_registry
from worker.rq_compat import place_in_queue, reap_abandoned, withdraw

logger = logging.getLogger("safespot.service")

REAP_INTERVAL_S = 5.0  # how often abandoned started jobs are looked for, at most
ADMIN_RESULT_TTL_S = 7 * 24 * 3600  # vetting and training outcomes stay visible a week
MAX_RETRY_AFTER_S = 3600

P = ParamSpec("P")
R = TypeVar("R")


def _redis_errors_as_503(method: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except redis.RedisError as e:
            logger.warning("redis error in %s: %s", method.__name__, e)
            raise NotReady(f"the job queue (Redis) is unavailable: {e.__class__.__name__}",
                           code=ErrorCode.QUEUE_UNAVAILABLE) from e
    return wrapper


class RedisJobBackend:
    """Implements `worker.protocol.JobBackend` on Redis and RQ."""

    def __init__(self, settings: Settings, connection: redis.Redis | None = None) -> None:
        self.settings = settings
        self.redis = connection or settings.redis_client()
        self.queues = {name: Queue(name, connection=self.redis, serializer=JSONSerializer)
                       for name in (FILTER_QUEUE, ADMIN_QUEUE, TRAIN_QUEUE)}
        self.registry = redis_registry(self.redis, settings.checkpoint_path)
        self._reap_lock = threading.Lock()
        self._last_reap: dict[str, float] = {}

    # ------------------------------------------------------------ filter jobs
    @_redis_errors_as_503
    def submit_filter(self, request: FilterRequest, image_png: bytes) -> None:
        queue = self.queues[FILTER_QUEUE]
        depth = queue.count
        if depth >= self.settings.max_queue:
            raise QueueFull(f"the filter queue is full ({depth} jobs waiting)",
                            retry_after_s=self.retry_after_s(depth))
        s = self.settings
        job_id = request["job_id"]
        # The upload must outlive the wait in the queue plus every (re)try of the job.
        upload_ttl = s.job_ttl_s + s.job_timeout_s * (1 + s.job_retries) + 60
        self.redis.set(upload_key(job_id), image_png, ex=upload_ttl)
        try:
            job = queue.enqueue_call(
                FILTER_FUNC, args=(request,), job_id=job_id, timeout=s.job_timeout_s,
                result_ttl=s.result_ttl_s, failure_ttl=s.result_ttl_s, ttl=s.job_ttl_s,
                meta={"submitted_at": request["submitted_at"]},
                retry=Retry(max=s.job_retries) if s.job_retries else None,
                description=f"filter {request['image']['width']}x{request['image']['height']}")
        except BaseException:
            self.redis.delete(upload_key(job_id))  # no orphaned upload without a job
            raise
        # The depth check above races with concurrent submissions (every request of a
        # burst may read the same depth): admit by position instead.  A job queued
        # behind max_queue others takes itself back, unless a worker already took it.
        position = place_in_queue(queue, job_id)
        if position is not None and position >= s.max_queue and withdraw(queue, job):
            self.redis.delete(upload_key(job_id))
            raise QueueFull(f"the filter queue is full ({position} jobs waiting)",
                            retry_after_s=self.retry_after_s(position))

    @_redis_errors_as_503
    def get_job(self, job_id: str) -> JobView | None:
        return self._view(job_id, FILTER_FUNC, FILTER_QUEUE)

    @_redis_errors_as_503
    def get_result_image(self, job_id: str) -> bytes | None:
        data = self.redis.get(result_image_key(job_id))
        return cast(bytes | None, data)

    @_redis_errors_as_503
    def queue_depth(self) -> int:
        return int(self.queues[FILTER_QUEUE].count)

    @_redis_errors_as_503
    def queue_depths(self) -> dict[str, int]:
        with self.redis.pipeline(transaction=False) as pipe:
            for queue in self.queues.values():
                pipe.llen(queue.key)
            counts = pipe.execute()
        return {name: int(n) for name, n in zip(self.queues, counts, strict=True)}

    def retry_after_s(self, depth: int) -> int:
        """Rough time until the queue has room: depth x time per job / workers."""
        try:
            workers = max(1, self.ready_workers())
        except NotReady:
            workers = 1
        estimate = math.ceil(depth * self.settings.seconds_per_job / workers)
        return int(min(MAX_RETRY_AFTER_S, max(1, estimate)))

    # ----------------------------------------------------------- readiness
    def redis_up(self) -> bool:
        try:
            return bool(self.redis.ping())
        except redis.RedisError:
            return False

    @_redis_errors_as_503
    def ready_workers(self) -> int:
        """Workers of the filter queue whose heartbeat is fresh and that hold a model."""
        statuses = self.redis.hgetall(WORKERS_KEY)
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in statuses]
        if not names:
            return 0
        with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.exists(worker_alive_key(name))
            alive = pipe.execute()
        ready = 0
        for name, raw, is_alive in zip(names, statuses.values(), alive, strict=True):
            try:
                status = json.loads(raw)
            except (TypeError, ValueError):
                logger.warning("unreadable worker status for %s", name)
                continue
            queues = status.get("queues") or [FILTER_QUEUE]
            if is_alive and status.get("model") and FILTER_QUEUE in queues:
                ready += 1
        return ready

    def ready(self) -> tuple[bool, str]:
        if not self.redis_up():
            return False, "Redis is unreachable"
        try:
            count = self.ready_workers()
        except NotReady as e:
            return False, e.message
        if count == 0:
            return False, "no live worker with a loaded model"
        return True, f"{count} worker(s) with a loaded model"

    # ----------------------------------------------------------- checkpoints
    @_redis_errors_as_503
    def list_checkpoints(self) -> list[CheckpointRecord]:
        return self.registry.records()

    @_redis_errors_as_503
    def add_checkpoint(self, record: CheckpointRecord) -> None:
        self.registry.add(record)
        self._enqueue_admin_job(ADMIN_QUEUE, VET_FUNC, VetRequest(checkpoint_id=record["id"]),
                                f"vet-{record['id']}", self.settings.vet_timeout_s,
                                f"vet checkpoint {record['id']}")

    @_redis_errors_as_503
    def activate_checkpoint(self, checkpoint_id: str, override: bool = False,
                            reason: str | None = None) -> CheckpointRecord:
        return self.registry.activate(checkpoint_id, override, reason)

    @_redis_errors_as_503
    def delete_checkpoint(self, checkpoint_id: str) -> None:
        self.registry.delete(checkpoint_id)

    # -------------------------------------------------------------- training
    @_redis_errors_as_503
    def submit_training(self, request: TrainRequest) -> None:
        self._enqueue_admin_job(TRAIN_QUEUE, TRAIN_FUNC, request, request["job_id"],
                                self.settings.train_timeout_s,
                                f"train {request['recipe']} {request['epochs']} epochs")

    @_redis_errors_as_503
    def get_training(self, job_id: str) -> JobView | None:
        return self._view(job_id, TRAIN_FUNC, TRAIN_QUEUE)

    # ----------------------------------------------------------------- helpers
    def _enqueue_admin_job(self, queue: str, func: str, request: VetRequest | TrainRequest,
                           job_id: str, timeout_s: int, description: str) -> None:
        self.queues[queue].enqueue_call(
            func, args=(request,), job_id=job_id, timeout=timeout_s, result_ttl=ADMIN_RESULT_TTL_S,
            failure_ttl=ADMIN_RESULT_TTL_S, meta={"submitted_at": time.time()}, description=description)

    def _view(self, job_id: str, func_name: str, queue_name: str) -> JobView | None:
        job = load_job(self.redis, job_id, func_name)
        if job is not None and job.get_status(refresh=False) == "started" \
                and self._reap_abandoned(queue_name):
            job = load_job(self.redis, job_id, func_name)  # the cleanup may have ended it
        return None if job is None else job_view(job)

    def _reap_abandoned(self, queue_name: str) -> bool:
        """Run the StartedJobRegistry cleanup if it has not run recently.

        Returns True when it ran (the caller then re-reads the job).  Only one
        request thread cleans at a time; the others skip rather than wait."""
        now = time.monotonic()
        if now - self._last_reap.get(queue_name, -math.inf) < REAP_INTERVAL_S:
            return False
        if not self._reap_lock.acquire(blocking=False):
            return False
        try:
            self._last_reap[queue_name] = now
            reap_abandoned(self.queues[queue_name])
            return True
        finally:
            self._reap_lock.release()

    def close(self) -> None:
        self.redis.close()


_STATUS: dict[str, str] = {
    JobStatus.QUEUED: "queued", JobStatus.CREATED: "queued", JobStatus.DEFERRED: "queued",
    JobStatus.SCHEDULED: "queued", JobStatus.READY_TO_ENQUEUE: "queued",
    JobStatus.RATE_LIMITED: "queued",
    JobStatus.STARTED: "started", JobStatus.FINISHED: "finished", JobStatus.FAILED: "failed",
    JobStatus.STOPPED: "canceled", JobStatus.CANCELED: "canceled",
}

WORKER_LOST = {"code": "worker_lost",
               "message": "the worker running this job stopped before finishing it"}
JOB_FAILED = {"code": ErrorCode.JOB_FAILED, "message": "the job failed; see the worker logs"}
TIMED_OUT = {"code": "timeout", "message": "the job took longer than its time limit"}


def load_job(connection: redis.Redis, job_id: str, func_name: str) -> Job | None:
    """The job, or None when it does not exist, has expired, or is another kind of
    job (a training job's id must not answer on /v1/jobs and vice versa)."""
    try:
        job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
    except NoSuchJobError:
        return None
    try:
        if job.func_name != func_name:
            return None
    except Exception:  # undecodable payload: not one of ours
        return None
    return job


def job_view(job: Job) -> JobView:
    raw_status = job.get_status(refresh=False)
    status = _STATUS.get(raw_status, "queued") if raw_status else "expired"
    meta: dict[str, Any] = job.meta or {}
    view = JobView(
        id=job.id, status=status,  # type: ignore[typeddict-item]
        progress=cast(Progress, meta.get("progress") or {"phase": "queued"}),
        result=None, error=None,
        created_at=float(meta.get("submitted_at") or _epoch(job.created_at) or 0.0),
        started_at=_epoch(job.started_at), ended_at=_epoch(job.ended_at))
    if status == "finished":
        result = job.return_value()
        if result is None:
            view["status"] = "expired"  # the job record outlived its result
        else:
            view["result"] = result
    elif status == "failed":
        view["error"] = meta.get("error") or _failure_reason(job)
    return view


def _failure_reason(job: Job) -> dict[str, str]:
    text = ""
    try:
        latest = job.latest_result()
        text = (latest.exc_string if latest is not None else None) or ""
    except Exception:  # a result we cannot read says nothing more than "failed"
        pass
    if "AbandonedJobError" in text:
        return dict(WORKER_LOST)
    if "JobTimeoutException" in text:
        return dict(TIMED_OUT)
    return dict(JOB_FAILED)


def _epoch(moment: datetime | None) -> float | None:
    return moment.timestamp() if moment else None
