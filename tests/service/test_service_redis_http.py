"""The whole API on a real Redis: 202/429/503 over HTTP, and recovery when
Redis comes back, without restarting the app."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_testkit import CLIENT_KEY, client_auth, install_stand_in_jobs, photo_bytes, run_worker

from bench.stack import RedisServer, free_port
from service.app import create_app
from service.settings import Settings
from worker import protocol

pytestmark = pytest.mark.integration


def submit(client: TestClient):
    return client.post("/v1/filter", headers=client_auth(),
                       files={"image": ("a.jpg", photo_bytes(), "image/jpeg")})


def test_filter_round_trip_queue_full_and_readiness(redis_url, redis_conn, tmp_path):
    settings = Settings(redis_url=redis_url, api_keys=CLIENT_KEY, max_queue=2, data_dir=tmp_path)
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 503
        ids = [submit(client).json()["job_id"] for _ in range(2)]
        assert client.get(f"/v1/jobs/{ids[0]}", headers=client_auth()).json()["status"] == "queued"
        assert redis_conn.exists(protocol.upload_key(ids[0]))

        full = submit(client)
        assert full.status_code == 429 and full.json()["error"]["code"] == "queue_full"
        assert int(full.headers["retry-after"]) >= 1

        status = {"name": "w1", "queues": [protocol.FILTER_QUEUE], "model": {"name": "m"}}
        redis_conn.hset(protocol.WORKERS_KEY, "w1", json.dumps(status))
        redis_conn.set(protocol.worker_alive_key("w1"), 1, ex=30)
        assert client.get("/readyz").status_code == 200

        text = client.get("/metrics").text
        assert f'safespot_queue_depth{{queue="{protocol.FILTER_QUEUE}"}} 2.0' in text
        assert "safespot_redis_up 1.0" in text and "safespot_workers_ready 1.0" in text


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private Redis this test may stop and start again (same port, empty)."""
    with RedisServer(tmp_path / "redis") as server:
        yield server


def test_redis_down_is_503_and_the_api_recovers_by_itself(own_redis, tmp_path):
    settings = Settings(redis_url=own_redis.url, api_keys=CLIENT_KEY,
                        data_dir=tmp_path, redis_timeout_s=0.5)
    with TestClient(create_app(settings)) as client:
        job_id = submit(client).json()["job_id"]

        own_redis.stop()
        down = submit(client)
        assert down.status_code == 503, down.text
        assert down.json()["error"]["code"] == "queue_unavailable" and "retry-after" in down.headers
        assert client.get(f"/v1/jobs/{job_id}", headers=client_auth()).status_code == 503
        assert client.get("/readyz").status_code == 503
        assert client.get("/healthz").status_code == 200
        assert "safespot_redis_up 0.0" in client.get("/metrics").text

        own_redis.start()  # an empty Redis, as after a restart
        again = submit(client)
        assert again.status_code == 202, again.text
        assert client.get(f"/v1/jobs/{again.json()['job_id']}", headers=client_auth()).status_code == 200
        assert "safespot_redis_up 1.0" in client.get("/metrics").text


def test_nothing_listening_at_start_is_503_not_a_crash(tmp_path):
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", api_keys=CLIENT_KEY,
                        data_dir=tmp_path, redis_timeout_s=0.5)
    with TestClient(create_app(settings)) as client:
        assert submit(client).status_code == 503
        assert client.get("/readyz").status_code == 503
        assert client.get("/metrics").status_code == 200


def test_results_survive_an_api_restart(redis_url, redis_conn, tmp_path, monkeypatch):
    """Jobs live in Redis, not in the API process: a new API instance (a restart,
    or another replica) answers for jobs the previous one accepted."""
    install_stand_in_jobs(monkeypatch)
    settings = Settings(redis_url=redis_url, api_keys=CLIENT_KEY, data_dir=tmp_path)
    with TestClient(create_app(settings)) as first:
        job_id = submit(first).json()["job_id"]
    run_worker(redis_conn)
    with TestClient(create_app(settings)) as second:
        body = second.get(f"/v1/jobs/{job_id}", headers=client_auth()).json()
        assert body["status"] == "finished" and body["result"]["safe_spot_found"] is True
        image = second.get(f"/v1/jobs/{job_id}/image", headers=client_auth())
        assert image.status_code == 200 and image.content == b"PNG-BYTES"
