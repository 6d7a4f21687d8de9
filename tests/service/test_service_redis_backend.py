"""RedisJobBackend against a real Redis server, with real RQ jobs and workers.

The job functions named in the protocol (worker.jobs.*) belong to the worker
package and need torch; here a stand-in module with the same dotted path runs
inside a real RQ SimpleWorker, so the queue, statuses, meta and results are
RQ's own.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest
from rq import Queue
from rq.executions import Execution
from rq.job import Job
from rq.serializers import JSONSerializer
from service_testkit import install_stand_in_jobs, run_worker

from service.backends.redis_backend import RedisJobBackend
from service.errors import QueueFull, from_backend
from service.settings import Settings
from worker import protocol
from worker.errors import CheckpointStateError, CheckpointUnvettedError

pytestmark = pytest.mark.integration


def filter_request(job_id: str, **overrides: Any) -> protocol.FilterRequest:
    request = protocol.FilterRequest(
        job_id=job_id, preset="fast", norm="linf", eps=8 / 255, delta=8 / 255, reencode=None,
        webhook_url=None, submitted_at=time.time(),
        image={"width": 4, "height": 3, "mode": "RGB", "format": "PNG", "bytes": 10})
    request.update(overrides)  # type: ignore[typeddict-item]
    return request


@pytest.fixture
def stand_in_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    install_stand_in_jobs(monkeypatch)


@pytest.fixture
def settings(redis_url: str, tmp_path) -> Settings:
    return Settings(redis_url=redis_url, max_queue=3, job_retries=0, data_dir=tmp_path,
                    checkpoint_dir=tmp_path / "ckpt", seconds_per_job=10)


@pytest.fixture
def backend(settings: Settings, redis_conn) -> Iterator[RedisJobBackend]:
    backend = RedisJobBackend(settings)
    yield backend
    backend.close()


def test_submit_enqueues_an_rq_job_with_the_request_and_stores_the_upload(backend, redis_conn, settings):
    backend.submit_filter(filter_request("a" * 32), b"\x89PNG-upload")
    job = Job.fetch("a" * 32, connection=redis_conn, serializer=JSONSerializer)
    assert job.func_name == protocol.FILTER_FUNC and job.origin == protocol.FILTER_QUEUE
    assert job.args[0]["job_id"] == "a" * 32 and job.args[0]["preset"] == "fast"
    assert job.meta["submitted_at"] > 0
    assert job.timeout == settings.job_timeout_s and job.result_ttl == settings.result_ttl_s
    assert redis_conn.get(protocol.upload_key("a" * 32)) == b"\x89PNG-upload"
    assert 0 < redis_conn.ttl(protocol.upload_key("a" * 32)) <= settings.job_ttl_s + 2 * settings.job_timeout_s + 60
    assert backend.queue_depth() == 1
    view = backend.get_job("a" * 32)
    assert view is not None and view["status"] == "queued" and view["progress"] == {"phase": "queued"}


def test_finished_and_failed_jobs_are_reported(backend, redis_conn, stand_in_jobs):
    backend.submit_filter(filter_request("b" * 32), b"png")
    backend.submit_filter(filter_request("c" * 32, preset="paper"), b"png")
    run_worker(redis_conn)

    done = backend.get_job("b" * 32)
    assert done is not None and done["status"] == "finished"
    assert done["result"] == {"safe_spot_found": True, "preset": "fast"}
    assert done["progress"]["phase"] == "done" and done["ended_at"] >= done["started_at"] > 0
    assert backend.get_result_image("b" * 32) == b"PNG-BYTES"

    failed = backend.get_job("c" * 32)
    assert failed is not None and failed["status"] == "failed"
    assert failed["error"] == {"code": "model_error", "message": "no model"}
    assert backend.get_result_image("c" * 32) is None


def test_unknown_and_foreign_jobs_are_none(backend, redis_conn):
    assert backend.get_job("d" * 32) is None
    backend.submit_training(protocol.TrainRequest(
        job_id="e" * 32, recipe="natural", norm="linf", eps=0.03, epochs=1, data="cifar10",
        limit=None, name="t", arch="cifar_cnn"))
    assert backend.get_job("e" * 32) is None, "a training job is not a filter job"
    training = backend.get_training("e" * 32)
    assert training is not None and training["status"] == "queued"
    job = Job.fetch("e" * 32, connection=redis_conn, serializer=JSONSerializer)
    assert job.origin == protocol.TRAIN_QUEUE and job.timeout == 24 * 3600


def _abandon(redis_conn, job_id: str) -> None:
    """A worker took the job, marked it started, and died (its heartbeat lapses in 1 s)."""
    queue = Queue(protocol.FILTER_QUEUE, connection=redis_conn, serializer=JSONSerializer)
    job = Job.fetch(job_id, connection=redis_conn, serializer=JSONSerializer)
    queue.remove(job)
    with redis_conn.pipeline() as pipe:
        Execution.create(job, ttl=1, pipeline=pipe, worker_name="dead-worker")
        job.prepare_for_execution("dead-worker", pipe)
        pipe.execute()


def test_a_job_of_a_dead_worker_ends_failed_not_started_forever(backend, redis_conn):
    backend.submit_filter(filter_request("f" * 32), b"png")
    _abandon(redis_conn, "f" * 32)
    time.sleep(1.2)
    view = backend.get_job("f" * 32)
    assert view is not None and view["status"] == "failed"
    assert view["error"]["code"] == "worker_lost"


def test_a_job_of_a_dead_worker_is_retried_when_retries_are_left(settings, redis_conn):
    backend = RedisJobBackend(settings.model_copy(update={"job_retries": 1}))
    backend.submit_filter(filter_request("9" * 32), b"png")
    _abandon(redis_conn, "9" * 32)
    time.sleep(1.2)
    view = backend.get_job("9" * 32)
    assert view is not None and view["status"] == "queued"
    assert backend.queue_depth() == 1


def test_full_queue_raises_429_with_a_retry_after_estimate(backend):
    for i in range(3):
        backend.submit_filter(filter_request(f"{i:032x}"), b"png")
    with pytest.raises(QueueFull) as refused:
        backend.submit_filter(filter_request("1" * 32), b"png")
    assert refused.value.status == 429
    assert refused.value.headers["Retry-After"] == "30"  # 3 jobs x 10 s / 1 worker
    assert backend.queue_depth() == 3 and backend.get_job("1" * 32) is None


def register_worker(redis_conn, name: str, *, model: bool = True, alive: bool = True) -> None:
    status = {"name": name, "queues": [protocol.FILTER_QUEUE], "device": "cpu", "pid": 1,
              "host": "h", "started_at": 0, "last_seen": time.time(), "busy": False,
              "model": {"name": "tiny", "sha256": "0", "checkpoint_id": "c"} if model else None}
    redis_conn.hset(protocol.WORKERS_KEY, name, json.dumps(status))
    if alive:
        redis_conn.set(protocol.worker_alive_key(name), 1, ex=protocol.WORKER_ALIVE_TTL_S)


def test_ready_needs_a_live_worker_with_a_model(backend, redis_conn):
    assert backend.ready() == (False, "no live worker with a loaded model")
    register_worker(redis_conn, "stale", alive=False)
    register_worker(redis_conn, "loading", model=False)
    assert backend.ready()[0] is False and backend.ready_workers() == 0
    register_worker(redis_conn, "good")
    assert backend.ready()[0] is True and backend.ready_workers() == 1


def record(checkpoint_id: str, status: str = "ready", **extra: Any) -> protocol.CheckpointRecord:
    fields: dict[str, Any] = dict(id=checkpoint_id, name=checkpoint_id, status=status,
                                  sha256=checkpoint_id * 2, path=f"{checkpoint_id}.safetensors",
                                  size_bytes=1, uploaded_at=time.time(), source="upload", **extra)
    return cast(protocol.CheckpointRecord, fields)


def test_checkpoints_go_through_the_registry_and_uploads_are_vetted(backend, redis_conn, settings):
    """The rules themselves are tested against both stores in tests/worker/test_registry.py."""
    settings.checkpoint_path.mkdir(parents=True)
    backend.add_checkpoint(record("ck1", status="validating"))
    vet = Job.fetch("vet-ck1", connection=redis_conn, serializer=JSONSerializer)
    assert vet.func_name == protocol.VET_FUNC and vet.origin == protocol.ADMIN_QUEUE
    assert vet.args[0] == {"checkpoint_id": "ck1"}
    with pytest.raises(CheckpointStateError):
        backend.activate_checkpoint("ck1")  # still validating

    for name in ("ck1", "ck2"):  # a worker vetted them
        redis_conn.hset(protocol.CHECKPOINTS_KEY, name, json.dumps(record(name)))
        (settings.checkpoint_path / f"{name}.safetensors").write_bytes(b"x")
    assert backend.activate_checkpoint("ck1")["status"] == "active"
    assert redis_conn.get(protocol.ACTIVE_CHECKPOINT_KEY) == b"ck1"
    backend.activate_checkpoint("ck2")
    assert {r["id"]: r["status"] for r in backend.list_checkpoints()} == {"ck1": "ready", "ck2": "active"}
    backend.delete_checkpoint("ck1")
    assert not (settings.checkpoint_path / "ck1.safetensors").exists()


def test_an_unvetted_checkpoint_activates_through_redis_only_with_the_override(backend, redis_conn):
    redis_conn.hset(protocol.CHECKPOINTS_KEY, "ck3", json.dumps(record(
        "ck3", status="unvetted", vetting={"skipped": "no vetting set for domain 'toy'", "domain": "toy"})))
    with pytest.raises(CheckpointUnvettedError) as refused:
        backend.activate_checkpoint("ck3")
    assert from_backend(refused.value).status == 409 and from_backend(refused.value).code == "checkpoint_unvetted"
    assert redis_conn.get(protocol.ACTIVE_CHECKPOINT_KEY) is None
    activated = backend.activate_checkpoint("ck3", True, "trial")
    assert activated["status"] == "active" and activated["override"]["reason"] == "trial"
    assert redis_conn.get(protocol.ACTIVE_CHECKPOINT_KEY) == b"ck3"
    assert json.loads(redis_conn.hget(protocol.CHECKPOINTS_KEY, "ck3"))["override"] == activated["override"]
