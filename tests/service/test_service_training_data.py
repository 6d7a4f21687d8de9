"""A training run whose data is missing is refused at submission (409 data_missing,
with the command that provides it), in the embedded and the Redis mode alike."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from rq import Queue
from service_testkit import ADMIN_KEY, admin_auth

from service.app import create_app
from service.settings import Settings
from worker import protocol


def refused(response, *fragments: str) -> None:
    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert error["code"] == "data_missing"
    for fragment in fragments:
        assert fragment in error["message"]


def test_each_built_in_set_names_its_own_download_command(client, backend, settings):
    for name in protocol.TRAINING_DATA:
        response = client.post("/v1/training-jobs", json={"data": name}, headers=admin_auth())
        refused(response, f"safespot data download {name}", str(settings.data_dir))
    assert not backend.training


def test_a_missing_path_is_refused_and_the_torchvision_folder_counts_as_cifar10(client, backend, settings):
    refused(client.post("/v1/training-jobs", json={"data": "sets/cats"}, headers=admin_auth()), "sets/cats")
    batches = settings.data_dir / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    (batches / "data_batch_1").write_bytes(b"placeholder")
    assert client.post("/v1/training-jobs", json={}, headers=admin_auth()).status_code == 202


def test_validation_comes_before_the_data_check(client):
    response = client.post("/v1/training-jobs", json={"epochs": 0}, headers=admin_auth())
    assert response.status_code == 422


def test_the_openapi_document_lists_the_409(client):
    post = client.get("/openapi.json").json()["paths"]["/v1/training-jobs"]["post"]
    assert "409" in post["responses"]


@pytest.fixture
def embedded_client(tmp_path: Path) -> Iterator[tuple[TestClient, object]]:
    from worker.embedded import EmbeddedBackend

    settings = Settings(admin_keys=ADMIN_KEY, data_dir=tmp_path / "data", checkpoint_dir=tmp_path / "ckpt")
    backend = EmbeddedBackend(settings)  # not started: a queued run would only sit there
    with TestClient(create_app(settings, backend)) as client:
        yield client, backend


def test_embedded_mode_refuses_before_queueing(embedded_client):
    client, backend = embedded_client
    refused(client.post("/v1/training-jobs", json={"epochs": 1}, headers=admin_auth()),
            "safespot data download cifar10")
    assert backend._jobs == {}


@pytest.mark.integration
def test_redis_mode_refuses_then_queues_once_the_data_is_there(redis_url, redis_conn, tmp_path):
    settings = Settings(redis_url=redis_url, admin_keys=ADMIN_KEY, data_dir=tmp_path / "data")
    train_queue = Queue(protocol.TRAIN_QUEUE, connection=redis_conn)
    with TestClient(create_app(settings)) as client:
        refused(client.post("/v1/training-jobs", json={"epochs": 1}, headers=admin_auth()),
                "safespot data download cifar10")
        assert train_queue.count == 0
        settings.data_dir.mkdir()
        (settings.data_dir / "cifar10_train.npz").write_bytes(b"placeholder")
        response = client.post("/v1/training-jobs", json={"epochs": 1}, headers=admin_auth())
        assert response.status_code == 202, response.text
        assert train_queue.job_ids == [response.json()["job_id"]]
