"""Reading RQ jobs into the protocol's `JobView`.

RQ knows more states than a client needs; they fold into the six of
`JobView["status"]`.  A failed job carries the worker's
`meta["error"] = {"code", "message"}`; when there is none (the worker died,
or raised something unexpected) a generic error is reported instead of the
traceback, which stays in RQ for operators.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

import redis
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from worker.protocol import ErrorCode, JobView, Progress

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
