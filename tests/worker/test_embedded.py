"""EmbeddedBackend end to end: the single-process mode's queue, jobs, checkpoints, webhooks."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from models.checkpoint import load_checkpoint, save_checkpoint
from tests.conftest import FIXTURES, TINY_MODEL
from tests.worker.conftest import cifar_png, filter_request, photo, png_bytes, wait_for
from training.data import CIFAR10_CLASSES
from worker.embedded import EmbeddedBackend
from worker.errors import (
    CheckpointNotFoundError,
    CheckpointStateError,
    CheckpointUnvettedError,
    QueueFullError,
)
from worker.registry_stores import REGISTRY_FILE
from worker.settings import WorkerSettings


def service_settings(tmp_path: Path, **changes: Any) -> WorkerSettings:
    """The settings `safespot serve` would hand the embedded worker (all of SharedSettings)."""
    values: dict[str, Any] = dict(
        redis_url=None, data_dir=FIXTURES, checkpoint_dir=tmp_path / "checkpoints",
        max_queue=5, job_ttl_s=60, result_ttl_s=60, webhook_allowed_hosts=frozenset({"127.0.0.1"}),
        default_model=str(TINY_MODEL), vetting_data=FIXTURES / "cifar10_mini.npz", vetting_n=8,
        max_batch=8, max_wait_ms=20, threads=1)
    values.update(changes)
    return WorkerSettings(**values)


@pytest.fixture
def backend(tmp_path: Path):
    backend = EmbeddedBackend(service_settings(tmp_path)).start()
    yield backend
    backend.stop()


def finished(backend: EmbeddedBackend, job_id: str) -> dict[str, Any]:
    return wait_for(lambda: (v := backend.get_job(job_id)) and v["status"] in ("finished", "failed") and v,
                    60, f"job {job_id}")


def test_filter_jobs_run_in_process_and_results_are_served(backend, cifar_mini) -> None:
    ok, _ = backend.ready()
    assert ok
    big = photo("coffee.webp", mode="L")
    backend.submit_filter(filter_request("big", big), png_bytes(big))
    for i in range(3):
        backend.submit_filter(filter_request(f"s{i}"), cifar_png(cifar_mini, i))
    views = {i: finished(backend, i) for i in ("big", "s0", "s1", "s2")}
    assert {v["status"] for v in views.values()} == {"finished"}
    result = views["big"]["result"]
    assert result["image"] == {"width": 600, "height": 400, "mode": "L"}
    out = Image.open(io.BytesIO(backend.get_result_image("big")))
    assert out.size == (600, 400) and out.mode == "L"
    assert np.abs(np.asarray(out, np.int16) - np.asarray(big, np.int16)).max() <= 8
    assert max(v["progress"]["batch_size"] for v in views.values()) > 1
    assert views["s0"]["started_at"] >= views["s0"]["created_at"] and views["s0"]["ended_at"]
    assert backend.queue_depth() == 0 and backend.get_job("unknown") is None
    from prometheus_client import generate_latest

    text = generate_latest(backend.metrics_registry).decode()
    assert "safespot_worker_jobs_total{" in text and "safespot_worker_model_info{" in text


def test_a_full_queue_refuses_with_retry_after(tmp_path, cifar_mini) -> None:
    backend = EmbeddedBackend(service_settings(tmp_path, max_queue=2))  # not started: nothing drains
    backend.submit_filter(filter_request("q1"), cifar_png(cifar_mini))
    backend.submit_filter(filter_request("q2"), cifar_png(cifar_mini))
    with pytest.raises(QueueFullError) as caught:
        backend.submit_filter(filter_request("q3"), cifar_png(cifar_mini))
    assert caught.value.code == "queue_full" and caught.value.retry_after_s > 0
    assert backend.queue_depth() == 2 and backend.get_job("q1")["status"] == "queued"
    assert backend.ready() == (False, "the embedded worker is not running")


def test_bad_uploads_fail_and_results_expire(tmp_path, cifar_mini) -> None:
    backend = EmbeddedBackend(service_settings(tmp_path, result_ttl_s=1)).start()
    try:
        backend.submit_filter(filter_request("bad"), b"garbage")
        view = finished(backend, "bad")
        assert view["status"] == "failed" and view["error"]["code"] == "invalid_image"
        wait_for(lambda: backend.get_job("bad")["status"] == "expired", 10, "expiry")
        assert backend.get_result_image("bad") is None
    finally:
        backend.stop()


def test_checkpoints_are_vetted_activated_and_deleted(backend, tmp_path, cifar_mini) -> None:
    listed = backend.list_checkpoints()
    assert [(r["id"], r["status"], r["source"]) for r in listed] == [("default", "active", "shipped")]
    directory = tmp_path / "checkpoints"
    directory.mkdir(exist_ok=True)
    shutil.copy(TINY_MODEL, directory / "mine.safetensors")
    backend.add_checkpoint({"id": "mine", "name": "my robust cnn", "status": "validating", "path": "mine.safetensors",
                            "uploaded_at": time.time(), "source": "upload", "info": {}})
    with pytest.raises(CheckpointStateError):
        backend.activate_checkpoint("mine")  # not vetted yet
    wait_for(lambda: {r["id"]: r for r in backend.list_checkpoints()}["mine"]["status"] == "ready", 60, "vetting")
    assert backend.activate_checkpoint("mine")["status"] == "active"
    statuses = {r["id"]: r["status"] for r in backend.list_checkpoints()}
    assert statuses == {"default": "ready", "mine": "active"}
    backend.submit_filter(filter_request("after"), cifar_png(cifar_mini))
    model = finished(backend, "after")["result"]["model"]
    # Named as the admin named it at upload, not by the name stored inside the file.
    assert model["checkpoint_id"] == "mine" and model["name"] == "my robust cnn"
    with pytest.raises(CheckpointStateError):
        backend.delete_checkpoint("mine")  # active
    with pytest.raises(CheckpointNotFoundError):
        backend.activate_checkpoint("nope")
    saved = json.loads((directory / REGISTRY_FILE).read_text())
    assert saved["active"] == "mine" and sorted(r["id"] for r in saved["records"]) == ["default", "mine"]
    assert {r["status"] for r in saved["records"]} == {"ready"}  # "active" is derived, never stored
    backend.activate_checkpoint("default")
    backend.delete_checkpoint("mine")
    assert not (directory / "mine.safetensors").exists()
    assert [r["id"] for r in backend.list_checkpoints()] == ["default"]


def test_an_unvetted_checkpoint_is_served_only_after_the_override(tmp_path, cifar_mini) -> None:
    backend = EmbeddedBackend(service_settings(tmp_path, vetting_data=None)).start()  # the shipped sets
    try:
        unvetted_then_overridden(backend, tmp_path, cifar_mini)
    finally:
        backend.stop()


def unvetted_then_overridden(backend: EmbeddedBackend, tmp_path: Path, cifar_mini: Any) -> None:
    directory = tmp_path / "checkpoints"
    directory.mkdir(exist_ok=True)
    loaded = load_checkpoint(TINY_MODEL)  # the tiny weights under a domain nothing ships a set for
    save_checkpoint(loaded.model, dataclasses.replace(loaded.info, domain="sketches"), directory / "odd.safetensors")
    backend.add_checkpoint({"id": "odd", "name": "odd", "status": "validating", "path": "odd.safetensors",
                            "uploaded_at": time.time(), "source": "upload", "info": {}})
    record = wait_for(lambda: (r := {r["id"]: r for r in backend.list_checkpoints()}["odd"])
                      and r["status"] != "validating" and r, 60, "vetting")
    assert record["status"] == "unvetted" and record["vetting"]["domain"] == "sketches", record
    with pytest.raises(CheckpointUnvettedError):
        backend.activate_checkpoint("odd")
    assert backend.activate_checkpoint("odd", override=True)["override"]["reason"] == "activated without vetting"
    backend.submit_filter(filter_request("overridden"), cifar_png(cifar_mini))
    assert finished(backend, "overridden")["result"]["model"]["checkpoint_id"] == "odd"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_hostile_upload_is_rejected_and_changes_nothing(backend, tmp_path) -> None:
    directory = tmp_path / "checkpoints"
    directory.mkdir(exist_ok=True)
    (directory / "evil.pt").write_bytes(b"\x80\x04cbuiltins\nexec\n(Vprint(1)\ntR.")
    backend.add_checkpoint({"id": "evil", "status": "validating", "path": "evil.pt", "uploaded_at": time.time(),
                            "source": "upload", "info": {"arch": "cifar_cnn", "num_classes": 10,
                                                          "input_size": [3, 32, 32], "class_names": [],
                                                          "mean": [0.5] * 3, "std": [0.25] * 3}})

    def verdict() -> dict[str, Any] | None:
        record = next(r for r in backend.list_checkpoints() if r["id"] == "evil")
        return None if record["status"] == "validating" else record

    record = wait_for(verdict, 30, "the verdict")
    assert record["status"] == "rejected" and record["error"]["code"] == "unsafe_checkpoint"
    with pytest.raises(CheckpointStateError):
        backend.activate_checkpoint("evil")
    assert {r["id"]: r["status"] for r in backend.list_checkpoints()}["default"] == "active"


def test_webhooks_are_sent_to_allowed_hosts_only(backend, cifar_mini, hooks) -> None:
    backend.submit_filter(filter_request("w1", webhook_url=hooks.url), cifar_png(cifar_mini))
    elsewhere = hooks.url.replace("127.0.0.1", "localhost")  # the same server, not on the allowlist
    backend.submit_filter(filter_request("w2", webhook_url=elsewhere), cifar_png(cifar_mini))
    finished(backend, "w1")
    finished(backend, "w2")
    wait_for(lambda: hooks.received, 10, "the webhook")
    time.sleep(0.3)
    assert [h["job_id"] for h in hooks.received] == ["w1"]
    assert hooks.received[0]["status"] == "finished" and "result" in hooks.received[0]


@pytest.mark.slow
def test_training_runs_in_the_background(tmp_path, cifar_mini) -> None:
    data = tmp_path / "data"
    data.mkdir()
    np.savez(data / "small.npz", x=cifar_mini["x_train"][:200], y=cifar_mini["y_train"][:200],
             class_names=CIFAR10_CLASSES)  # its classes name the domain: vetted on CIFAR-10
    backend = EmbeddedBackend(service_settings(tmp_path, data_dir=data, train_holdout=40, train_eval_pgd=16,
                                               train_batch_size=40)).start()
    try:
        backend.submit_training({"job_id": "t", "recipe": "natural", "norm": "linf", "eps": 8 / 255, "epochs": 1,
                                 "data": "small.npz", "limit": None, "name": "bg", "arch": "cifar_cnn"})
        view = wait_for(lambda: (v := backend.get_training("t")) and v["status"] in ("finished", "failed") and v,
                        120, "training")
        assert view["status"] == "finished", view["error"]
        progress = view["progress"]  # the last report: the run's step count kept beside "done"
        assert progress["phase"] == "done" and progress["fraction"] == 1.0
        assert progress["step"] == progress["steps"] == 4 and progress["epochs"] == 1  # 160 images / 40
        record = view["result"]
        assert {r["id"]: r["status"] for r in backend.list_checkpoints()}[record["id"]] == "ready"
        assert backend.get_job("t") is None  # a training id is not a filter job
    finally:
        backend.stop()
