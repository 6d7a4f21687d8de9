"""Each helper of worker.rq_compat against a real Redis and the installed RQ.

These are the parts of RQ the batching worker relies on beyond its public
API; an RQ upgrade that changes them must fail here (rq is pinned to one
minor version in pyproject.toml, and this is the test to run before moving
the pin)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from rq import Queue, Retry
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from worker.rq_compat import CompatWorker, place_in_queue, reap_abandoned, withdraw

pytestmark = pytest.mark.integration


@pytest.fixture
def queue(redis_conn: Any) -> Queue:
    return Queue("compat", connection=redis_conn, serializer=JSONSerializer)


@pytest.fixture
def worker(redis_conn: Any, queue: Queue) -> CompatWorker:
    worker = CompatWorker([queue], name="compat-worker", connection=redis_conn, serializer=JSONSerializer)
    worker.register_birth()
    return worker


def enqueue(queue: Queue, job_id: str, retries: int = 0) -> Job:
    return queue.enqueue_call("builtins.len", args=([1, 2, 3],), job_id=job_id, result_ttl=600,
                              failure_ttl=600, retry=Retry(max=retries) if retries else None)


def started(worker: CompatWorker, queue: Queue, job_id: str) -> tuple[Job, Any]:
    dequeued = worker.dequeue_now(queue)
    assert dequeued is not None and dequeued[0].id == job_id
    return dequeued[0], worker.mark_started(dequeued[0])


def fetch(queue: Queue, job_id: str) -> Job:
    return Job.fetch(job_id, connection=queue.connection, serializer=JSONSerializer)


def test_dequeue_now_and_requeue_at_front(worker, queue) -> None:
    enqueue(queue, "a")
    enqueue(queue, "b")
    job, _ = worker.dequeue_now(queue)
    assert job.id == "a" and queue.job_ids == ["b"]
    assert queue.connection.lrange(queue.intermediate_queue_key, 0, -1) == [b"a"]
    worker.requeue_at_front(job, queue)
    assert queue.job_ids == ["a", "b"]
    assert not queue.connection.lrange(queue.intermediate_queue_key, 0, -1)
    queue.empty()
    assert worker.dequeue_now(queue) is None


def test_mark_started_is_what_rq_does_before_running_a_job(worker, queue) -> None:
    enqueue(queue, "s")
    job, execution = started(worker, queue, "s")
    assert fetch(queue, "s").get_status() == JobStatus.STARTED
    assert "s" in queue.started_job_registry.get_job_ids()
    assert not queue.connection.lrange(queue.intermediate_queue_key, 0, -1)
    assert job.started_at is not None and worker.busy and execution.job.id == "s"


def test_record_success_stores_the_return_value(worker, queue) -> None:
    enqueue(queue, "ok")
    job, execution = started(worker, queue, "ok")
    worker.record_success(job, queue, execution, {"safe_spot_found": True})
    job = fetch(queue, "ok")
    assert job.get_status() == JobStatus.FINISHED and job.return_value() == {"safe_spot_found": True}
    assert not queue.started_job_registry.get_job_ids() and "ok" in queue.finished_job_registry.get_job_ids()
    assert not worker.busy


def test_record_failure_spends_a_retry_only_when_retryable(worker, queue) -> None:
    enqueue(queue, "r", retries=1)
    job, execution = started(worker, queue, "r")
    assert worker.record_failure(job, queue, execution, "worker_shutdown: stopped", retryable=True)
    assert fetch(queue, "r").get_status() == JobStatus.QUEUED and queue.job_ids == ["r"]

    job, execution = started(worker, queue, "r")
    assert not worker.record_failure(job, queue, execution, "timeout: too long", retryable=True)
    job = fetch(queue, "r")
    assert job.get_status() == JobStatus.FAILED and "r" in queue.failed_job_registry.get_job_ids()
    assert job.latest_result().exc_string == "timeout: too long"

    enqueue(queue, "n", retries=3)
    job, execution = started(worker, queue, "n")
    assert not worker.record_failure(job, queue, execution, "invalid_image: broken", retryable=False)
    assert fetch(queue, "n").get_status() == JobStatus.FAILED and not queue.started_job_registry.get_job_ids()


def test_heartbeats_extend_an_execution_and_forget_stops_them(worker, queue) -> None:
    enqueue(queue, "h")
    _, execution = started(worker, queue, "h")
    registry = queue.started_job_registry
    before = queue.connection.zscore(registry.key, execution.composite_key)
    time.sleep(1.1)
    worker.heartbeat_executions()
    assert queue.connection.zscore(registry.key, execution.composite_key) > before
    worker.forget(execution)
    assert not worker.busy


def test_run_as_rq_would_performs_a_job_the_stock_way(worker, queue) -> None:
    enqueue(queue, "p")
    job, queue_ = worker.dequeue_now(queue)
    worker.run_as_rq_would(job, queue_)
    assert fetch(queue, "p").get_status() == JobStatus.FINISHED and fetch(queue, "p").return_value() == 3


def test_the_idle_dequeue_calls_the_idle_hook_and_honours_max_idle_time(worker) -> None:
    calls: list[float] = []
    worker.on_idle = lambda: calls.append(time.monotonic())
    started_at = time.monotonic()
    assert worker.dequeue_job_and_maintain_ttl(timeout=1, max_idle_time=1) is None
    assert calls and time.monotonic() - started_at < 5


def test_unsubscribe_is_prompt(worker) -> None:
    for _ in range(5):  # the old race (the reply read before the stop) cost 60 s when hit
        worker.subscribe()
        thread = worker.pubsub_thread
        time.sleep(0.05)
        started_at = time.monotonic()
        worker.unsubscribe()
        assert time.monotonic() - started_at < 3 and not thread.is_alive()


def test_wait_for_redis_returns_when_redis_answers(worker) -> None:
    started_at = time.monotonic()
    worker.wait_for_redis()
    assert time.monotonic() - started_at < 1 and not worker.stop_requested


def test_the_api_side_helpers_place_withdraw_and_reap(worker, queue) -> None:
    for job_id in ("q0", "q1"):
        enqueue(queue, job_id)
    assert place_in_queue(queue, "q0") == 0 and place_in_queue(queue, "q1") == 1
    assert withdraw(queue, fetch(queue, "q1")) and queue.job_ids == ["q0"]
    with pytest.raises(Exception, match="No such job"):
        fetch(queue, "q1")
    job, execution = started(worker, queue, "q0")
    assert place_in_queue(queue, "q0") is None and not withdraw(queue, job)
    worker.forget(execution)  # the worker "died": its execution's heartbeat lapses
    queue.connection.zadd(queue.started_job_registry.key, {execution.composite_key: 1})
    reap_abandoned(queue)
    assert fetch(queue, "q0").get_status() == JobStatus.FAILED and not queue.started_job_registry.get_job_ids()
