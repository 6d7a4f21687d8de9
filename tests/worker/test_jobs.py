"""The RQ job functions, run by RQ itself in this process (a synchronous queue) on real Redis."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from rq import Queue, Retry, SimpleWorker
from rq.job import Job
from rq.serializers import JSONSerializer

from tests.conftest import FIXTURES, TINY_MODEL
from tests.worker.conftest import cifar_png, filter_request, photo, png_bytes
from training.data import CIFAR10_CLASSES
from worker import jobs
from worker.errors import JobError
from worker.protocol import (
    ACTIVE_CHECKPOINT_KEY,
    ACTIVE_VERSION_KEY,
    CHECKPOINTS_KEY,
    FILTER_FUNC,
    TRAIN_FUNC,
    VET_FUNC,
    result_image_key,
    upload_key,
)
from worker.settings import WorkerSettings

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(tmp_path: Path) -> Any:
    settings = WorkerSettings(checkpoint_dir=tmp_path / "checkpoints", data_dir=tmp_path / "data",
                              vetting_data=FIXTURES / "cifar10_mini.npz", vetting_n=8,
                              default_model=str(TINY_MODEL), train_holdout=40, train_eval_pgd=16,
                              train_batch_size=40, threads=1)
    settings.checkpoint_dir.mkdir(parents=True)
    settings.data_dir.mkdir(parents=True)
    jobs.use_settings(settings)
    yield settings
    jobs._context = jobs._ProcessContext()  # the next test starts from a clean process context


def run(conn: Any, func: str, request: Any, job_id: str) -> Job:
    """Run a job the way a worker would, synchronously, in this process."""
    queue = Queue("sync", connection=conn, serializer=JSONSerializer, is_async=False)
    return queue.enqueue_call(func, args=(request,), job_id=job_id, result_ttl=600, failure_ttl=600)


def test_filter_job_processes_one_image_with_the_shared_processor(redis_conn, settings) -> None:
    image = photo("astronaut.png", mode="RGBA", size=(80, 80))
    redis_conn.set(upload_key("f1"), png_bytes(image))
    job = run(redis_conn, FILTER_FUNC, filter_request("f1", image), "f1")
    assert job.get_status() == "finished"
    result = job.return_value()
    assert result["image"] == {"width": 80, "height": 80, "mode": "RGBA"}
    out = Image.open(io.BytesIO(redis_conn.get(result_image_key("f1"))))
    assert out.mode == "RGBA" and np.array_equal(np.asarray(out)[..., 3], np.asarray(image)[..., 3])
    assert job.meta["progress"]["phase"] == "done"


def test_filter_job_failure_records_the_reason(redis_conn, settings, cifar_mini) -> None:
    redis_conn.set(upload_key("f2"), cifar_png(cifar_mini))
    job = run(redis_conn, FILTER_FUNC, filter_request("f2", preset="turbo"), "f2")  # SearchConfig refuses it
    assert job.get_status() == "failed"
    assert job.meta["error"]["code"] == "invalid_request"


def test_filter_job_without_a_loadable_model_fails_as_unavailable(redis_conn, settings, cifar_mini,
                                                                  tmp_path) -> None:
    jobs.use_settings(settings.model_copy(update={"default_model": str(tmp_path / "gone.safetensors")}))
    redis_conn.set(upload_key("f0"), cifar_png(cifar_mini))
    job = run(redis_conn, FILTER_FUNC, filter_request("f0"), "f0")
    assert job.get_status() == "failed"
    assert job.meta["error"]["code"] == "model_unavailable"
    assert job.meta["progress"]["phase"] == "done" and redis_conn.get(result_image_key("f0")) is None


def test_filter_job_serves_the_active_checkpoint(redis_conn, settings, cifar_mini) -> None:
    shutil.copy(TINY_MODEL, settings.checkpoint_dir / "copy.safetensors")
    redis_conn.hset(CHECKPOINTS_KEY, "c1", json.dumps({"id": "c1", "status": "active", "sha256": "",
                                                       "path": "copy.safetensors", "source": "upload"}))
    redis_conn.set(ACTIVE_CHECKPOINT_KEY, "c1")
    redis_conn.incr(ACTIVE_VERSION_KEY)
    redis_conn.set(upload_key("f3"), cifar_png(cifar_mini))
    job = run(redis_conn, FILTER_FUNC, filter_request("f3"), "f3")
    assert job.return_value()["model"]["checkpoint_id"] == "c1"


def test_vet_job_writes_the_verdict_into_the_registry(redis_conn, settings, tiny_checkpoint) -> None:
    state = {k: v.clone(memory_format=torch.contiguous_format)
             for k, v in tiny_checkpoint.model.network.state_dict().items()}
    torch.save(state, settings.checkpoint_dir / "up.pt")
    import dataclasses

    record = {"id": "up1", "name": "mine", "status": "validating", "path": "up.pt", "source": "upload",
              "info": dataclasses.asdict(tiny_checkpoint.info), "uploaded_at": 1.0}
    redis_conn.hset(CHECKPOINTS_KEY, "up1", json.dumps(record))
    job = run(redis_conn, VET_FUNC, {"checkpoint_id": "up1"}, "vet-up1")
    stored = json.loads(redis_conn.hget(CHECKPOINTS_KEY, "up1"))
    assert job.get_status() == "finished" and job.return_value()["status"] == "ready"
    assert stored["status"] == "ready" and stored["path"] == "up1.safetensors" and stored["vetting"]["n"] == 8
    assert redis_conn.get(ACTIVE_CHECKPOINT_KEY) is None  # vetting never activates
    missing = run(redis_conn, VET_FUNC, {"checkpoint_id": "nope"}, "vet-nope")
    assert missing.get_status() == "failed" and missing.meta["error"]["code"] == "checkpoint_not_found"


def test_a_job_error_the_same_input_repeats_spends_no_retry(redis_conn, settings) -> None:
    queue = Queue("retrying", connection=redis_conn, serializer=JSONSerializer)
    job = queue.enqueue_call(VET_FUNC, args=({"checkpoint_id": "nope"},), job_id="vet-retry",
                             retry=Retry(max=1, interval=600), failure_ttl=600)
    SimpleWorker([queue], connection=redis_conn, serializer=JSONSerializer).work(burst=True)
    assert job.get_status() == "failed"  # a spent retry would have scheduled it again in 10 minutes
    job.refresh()
    assert job.meta["error"]["code"] == "checkpoint_not_found"


def test_train_job_registers_a_vetted_checkpoint_without_activating_it(
        redis_conn, settings, cifar_mini) -> None:
    np.savez(settings.data_dir / "small.npz", x=cifar_mini["x_train"][:200], y=cifar_mini["y_train"][:200],
             class_names=CIFAR10_CLASSES)  # its classes name the domain: vetted on CIFAR-10
    request = {"job_id": "t1", "recipe": "adv-fast", "norm": "linf", "eps": 8 / 255, "epochs": 1,
               "data": "small.npz", "limit": None, "name": "trained-here", "arch": "cifar_cnn"}
    job = run(redis_conn, TRAIN_FUNC, request, "t1")
    assert job.get_status() == "finished", job.meta
    record = job.return_value()
    stored = json.loads(redis_conn.hget(CHECKPOINTS_KEY, record["id"]))
    assert stored["status"] == "ready" and stored["source"] == "training:t1" and stored["name"] == "trained-here"
    assert (settings.checkpoint_dir / stored["path"]).is_file() and stored["vetting"]["n"] == 8
    assert job.meta["progress"]["phase"] == "done" and job.meta["progress"]["epochs"] == 1
    assert redis_conn.get(ACTIVE_CHECKPOINT_KEY) is None


def test_train_job_refuses_data_outside_the_data_directory(redis_conn, settings) -> None:
    request = {"job_id": "t2", "recipe": "natural", "norm": "linf", "eps": 8 / 255, "epochs": 1,
               "data": "../../etc", "limit": None, "name": "", "arch": "cifar_cnn"}
    job = run(redis_conn, TRAIN_FUNC, request, "t2")
    assert job.get_status() == "failed" and job.meta["error"]["code"] == "invalid_request"


def test_jobs_need_an_rq_context() -> None:
    with pytest.raises(RuntimeError):
        jobs.filter_job(filter_request("x"))
    assert issubclass(JobError, Exception)
