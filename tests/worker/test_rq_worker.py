"""The batching RQ worker as a real subprocess against a real Redis: shared batches,
RQ's success and failure paths, progress, metrics, liveness, webhooks, a SIGKILL
mid-batch, and a checkpoint activation while jobs run."""

from __future__ import annotations

import io
import json
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from rq import Queue, Retry
from rq.job import Job
from rq.serializers import JSONSerializer

from models.checkpoint import file_sha256, save_checkpoint
from tests.worker.conftest import (
    TINY_MODEL,
    cifar_png,
    filter_request,
    free_port,
    photo,
    png_bytes,
    wait_for,
    worker_env,
)
from worker.protocol import (
    ACTIVE_CHECKPOINT_KEY,
    ACTIVE_VERSION_KEY,
    CHECKPOINTS_KEY,
    FILTER_FUNC,
    FILTER_QUEUE,
    WORKERS_KEY,
    result_image_key,
    upload_key,
    worker_alive_key,
)
from worker.registry_stores import redis_registry

pytestmark = pytest.mark.integration
TERMINAL = ("finished", "failed")


def enqueue(conn: Any, job_id: str, png: bytes, image: Image.Image | None = None,
            retry: Retry | None = None, **request_args: Any) -> Job:
    """What the API does: store the normalised upload, enqueue the FilterRequest."""
    request = filter_request(job_id, image, **request_args)
    conn.set(upload_key(job_id), png, ex=600)
    queue = Queue(FILTER_QUEUE, connection=conn, serializer=JSONSerializer)
    return queue.enqueue_call(FILTER_FUNC, args=(request,), job_id=job_id, timeout=600, result_ttl=600,
                              failure_ttl=600, meta={"submitted_at": request["submitted_at"]}, retry=retry)


def fetch(conn: Any, job_id: str) -> Job:
    return Job.fetch(job_id, connection=conn, serializer=JSONSerializer)


def statuses(conn: Any, ids: list[str]) -> dict[str, str]:
    return {i: str(fetch(conn, i).get_status(refresh=True).value) for i in ids}


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the one sample of `name` whose labels include `labels`."""
    from prometheus_client.parser import text_string_to_metric_families

    found = [s.value for family in text_string_to_metric_families(text) for s in family.samples
             if s.name == name and labels.items() <= s.labels.items()]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def test_queued_jobs_share_batches_and_each_ends_on_its_own(
        redis_conn, redis_url, start_worker, tmp_path, cifar_mini, hooks) -> None:
    hook_url = hooks.url
    big = photo("chelsea.jpg")
    enqueue(redis_conn, "photo", png_bytes(big), big, webhook_url=hook_url)
    for i in range(4):
        enqueue(redis_conn, f"small{i}", cifar_png(cifar_mini, i))
    enqueue(redis_conn, "broken", b"\x89PNG\r\n\x1a\n truncated", webhook_url=hook_url)
    ids = ["photo", "small0", "small1", "small2", "small3", "broken"]
    port = free_port()
    proc = start_worker(worker_env(redis_url, tmp_path / "checkpoints", metrics_port=port, max_batch=8,
                                   max_wait_ms=300, webhook_allowed_hosts="127.0.0.1"))
    wait_for(lambda: all(s in TERMINAL for s in statuses(redis_conn, ids).values()), 90, "all jobs to end")

    assert statuses(redis_conn, ids) == {**dict.fromkeys(ids, "finished"), "broken": "failed"}
    broken = fetch(redis_conn, "broken")
    assert broken.meta["error"]["code"] == "invalid_image"
    photo_job = fetch(redis_conn, "photo")
    result = photo_job.return_value()
    assert result["model"]["sha256"] == file_sha256(TINY_MODEL) and result["config"]["eps"] > 0
    assert photo_job.meta["progress"]["phase"] == "done"
    out = Image.open(io.BytesIO(redis_conn.get(result_image_key("photo"))))
    assert out.size == big.size and out.mode == "RGB"
    assert np.abs(np.asarray(out, np.int16) - np.asarray(big, np.int16)).max() <= 8
    assert 0 < redis_conn.ttl(result_image_key("photo")) <= 600
    batch_sizes = [fetch(redis_conn, i).meta["progress"]["batch_size"] for i in ids[:-1]]
    assert max(batch_sizes) > 1  # requests were searched together

    status = json.loads(redis_conn.hget(WORKERS_KEY, redis_conn.hkeys(WORKERS_KEY)[0]))
    assert status["model"]["sha256"] == result["model"]["sha256"] and FILTER_QUEUE in status["queues"]
    assert redis_conn.exists(worker_alive_key(status["name"]))
    shipped = redis_registry(redis_conn, tmp_path / "checkpoints").get("default")  # registered by the worker
    assert shipped is not None and shipped["status"] == "active"  # derived: nothing else was activated

    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    model = {"model": "tiny-test-fixture"}
    assert sample(text, "safespot_worker_jobs_total", outcome="finished", preset="fast", **model) == 5
    assert sample(text, "safespot_worker_jobs_total", outcome="failed", preset="fast", **model) == 1
    assert sample(text, "safespot_worker_search_passes_total", **model) > 0
    assert sample(text, "safespot_worker_model_info", sha256=result["model"]["sha256"]) == 1
    passes = sample(text, "safespot_worker_batch_size_count")
    assert sample(text, "safespot_worker_batch_size_bucket", le="1.0") < passes  # some passes held several
    assert sample(text, "safespot_worker_busy_seconds_total") > 0

    wait_for(lambda: len(hooks.received) >= 2, 10, "two webhooks")
    sent = {h["job_id"]: h for h in hooks.received}
    assert sent["photo"]["status"] == "finished" and sent["photo"]["result"]["image"]["width"] == 451
    assert sent["broken"] == {"job_id": "broken", "status": "failed", "error": broken.meta["error"]}

    proc.send_signal(signal.SIGTERM)  # warm shutdown: nothing in flight, leaves at once
    assert proc.wait(timeout=20) == 0
    assert not redis_conn.hkeys(WORKERS_KEY)


def test_a_worker_killed_mid_batch_leaves_no_job_started(
        redis_conn, redis_url, start_worker, tmp_path) -> None:
    big = photo("coffee.webp")
    enqueue(redis_conn, "retried", png_bytes(big), big, preset="paper", retry=Retry(max=1))
    enqueue(redis_conn, "lost", png_bytes(big), big, preset="paper")
    proc = start_worker(worker_env(redis_url, tmp_path / "checkpoints", job_heartbeat_ttl_s=2,
                                   max_wait_ms=300))
    queue = Queue(FILTER_QUEUE, connection=redis_conn, serializer=JSONSerializer)
    wait_for(lambda: set(statuses(redis_conn, ["retried", "lost"]).values()) == {"started"}, 60, "both started")
    wait_for(lambda: fetch(redis_conn, "lost").meta.get("progress", {}).get("grad_evals"), 30, "some passes")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert set(statuses(redis_conn, ["retried", "lost"]).values()) == {"started"}

    time.sleep(3)  # the heartbeats stopped; both executions expire after job_heartbeat_ttl_s
    queue.started_job_registry.cleanup()  # what every worker's maintenance (and the API) runs
    assert statuses(redis_conn, ["retried", "lost"]) == {"retried": "queued", "lost": "failed"}
    assert "retried" in queue.job_ids and "lost" in queue.failed_job_registry.get_job_ids()
    assert not queue.started_job_registry.get_job_ids()


def test_activation_reaches_a_running_worker_without_losing_jobs(
        redis_conn, redis_url, start_worker, tmp_path, tiny_checkpoint, cifar_mini) -> None:
    checkpoints = tmp_path / "checkpoints"
    info = tiny_checkpoint.info
    v2 = type(info)(**{**info.__dict__, "name": "tiny-v2"})
    v2_sha = save_checkpoint(tiny_checkpoint.model, v2, checkpoints / "v2.safetensors")
    redis_conn.hset(CHECKPOINTS_KEY, "v2", json.dumps({
        "id": "v2", "name": "tiny-v2", "status": "ready", "sha256": v2_sha, "path": "v2.safetensors",
        "source": "upload"}))
    proc = start_worker(worker_env(redis_url, checkpoints, max_wait_ms=300))
    first = ["a0", "a1", "a2"]
    images = [photo(name) for name in ("chelsea.jpg", "coffee.webp", "astronaut.png")]
    uploads = [png_bytes(image) for image in images]  # encoded first: the three arrive together
    for job_id, image, upload in zip(first, images, uploads, strict=True):
        enqueue(redis_conn, job_id, upload, image, preset="standard")
    wait_for(lambda: "started" in statuses(redis_conn, first).values(), 60, "the first batch to start")
    redis_conn.set(ACTIVE_CHECKPOINT_KEY, "v2")
    redis_conn.incr(ACTIVE_VERSION_KEY)
    second = [f"b{i}" for i in range(3)]
    for i, job_id in enumerate(second):
        enqueue(redis_conn, job_id, cifar_png(cifar_mini, i))
    wait_for(lambda: all(s in TERMINAL for s in statuses(redis_conn, first + second).values()), 90,
             "every job to end")

    assert set(statuses(redis_conn, first + second).values()) == {"finished"}
    old_sha = file_sha256(TINY_MODEL)
    for job_id in second:
        model = fetch(redis_conn, job_id).return_value()["model"]
        assert model == {"name": "tiny-v2", "sha256": v2_sha, "checkpoint_id": "v2"}
    shas = {fetch(redis_conn, j).return_value()["model"]["sha256"] for j in first}
    assert old_sha in shas  # started on the old model, finished on it (drained, not cut off)
    status = json.loads(redis_conn.hget(WORKERS_KEY, redis_conn.hkeys(WORKERS_KEY)[0]))
    wait_for(lambda: json.loads(redis_conn.hget(WORKERS_KEY, status["name"]))["model"]["checkpoint_id"] == "v2",
             10, "the worker status to name v2")
    assert proc.poll() is None


def test_the_worker_refuses_to_start_without_redis(tmp_path: Path) -> None:
    from worker.rq_worker import run_worker
    from worker.settings import WorkerSettings

    with pytest.raises(ValueError, match="REDIS_URL"):
        run_worker(WorkerSettings(redis_url=None, checkpoint_dir=tmp_path))


def test_a_warm_shutdown_finishes_in_flight_jobs_and_takes_no_more(
        redis_conn, redis_url, start_worker, tmp_path, cifar_mini) -> None:
    images = [photo("chelsea.jpg"), photo("astronaut.png")]
    uploads = [png_bytes(image) for image in images]
    for i, (image, upload) in enumerate(zip(images, uploads, strict=True)):
        enqueue(redis_conn, f"w{i}", upload, image, preset="standard")
    proc = start_worker(worker_env(redis_url, tmp_path / "checkpoints", max_wait_ms=300))
    wait_for(lambda: set(statuses(redis_conn, ["w0", "w1"]).values()) == {"started"}, 60, "both started")
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    enqueue(redis_conn, "late", cifar_png(cifar_mini))
    assert proc.wait(timeout=90) == 0
    assert statuses(redis_conn, ["w0", "w1", "late"]) == {"w0": "finished", "w1": "finished", "late": "queued"}
    queue = Queue(FILTER_QUEUE, connection=redis_conn, serializer=JSONSerializer)
    assert not queue.started_job_registry.get_job_ids() and queue.job_ids == ["late"]
