"""/healthz, /readyz and /metrics: probes answer, metric names and labels are bounded."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from service_testkit import FakeJobBackend, client_auth, photo_bytes

from service.app import create_app


def families(client: TestClient) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(response.text)}


def test_healthz_is_always_ok(client, backend):
    backend.is_ready = False
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_follows_the_backend(client, backend):
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    backend.is_ready = False
    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json()["error"] == {"code": "not_ready",
                                         "message": "no live worker with a loaded model"}


def test_readyz_answers_503_when_the_backend_blows_up(client, backend):
    def broken() -> tuple[bool, str]:
        raise ConnectionError("redis is gone")

    backend.ready = broken
    assert client.get("/readyz").status_code == 503


def test_metric_names_follow_the_conventions(client):
    client.get("/healthz")
    found = families(client)
    expected = {"safespot_http_requests": "counter", "safespot_http_request_duration_seconds": "histogram",
                "safespot_queue_depth": "gauge", "safespot_jobs_submitted": "counter",
                "safespot_uploads_rejected": "counter", "safespot_workers_ready": "gauge"}
    for name, kind in expected.items():
        assert found[name].type == kind, name
    for family in found.values():
        assert family.name.startswith("safespot_")


def test_route_labels_are_templates_never_ids(client, backend):
    job_id = client.post("/v1/filter", headers=client_auth(),
                         files={"image": ("a.jpg", photo_bytes(), "image/jpeg")}).json()["job_id"]
    client.get(f"/v1/jobs/{job_id}", headers=client_auth())
    client.get(f"/v1/jobs/{job_id}/image", headers=client_auth())
    for i in range(5):
        client.get(f"/no/such/path/{i}")
    text = client.get("/metrics").text
    assert job_id not in text
    routes = set(re.findall(r'route="([^"]*)"', text))
    assert routes <= {"/v1/filter", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/image", "/metrics",
                      "unmatched"}
    assert ('safespot_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="200"} 1.0'
            in text)
    assert 'safespot_http_requests_total{method="GET",route="unmatched",status="404"} 5.0' in text
    assert 'safespot_jobs_submitted_total{preset="standard"} 1.0' in text


def test_queue_depth_and_workers_are_read_at_scrape_time(client, backend):
    backend.depth = 7
    text = client.get("/metrics").text
    assert 'safespot_queue_depth{queue="safespot-filter"} 7.0' in text
    assert "safespot_workers_ready 1.0" in text
    backend.is_ready = False
    backend.depth = 0
    text = client.get("/metrics").text
    assert 'safespot_queue_depth{queue="safespot-filter"} 0.0' in text
    assert "safespot_workers_ready 0.0" in text


def test_a_scrape_answers_even_when_the_backend_is_down(settings):
    class Down(FakeJobBackend):
        def queue_depth(self) -> int:
            raise ConnectionError("down")

        def ready(self) -> tuple[bool, str]:
            raise ConnectionError("down")

        def redis_up(self) -> bool:
            return False

    with TestClient(create_app(settings, Down())) as client:
        text = client.get("/metrics").text
    assert "safespot_workers_ready 0.0" in text and "safespot_redis_up 0.0" in text


def test_each_app_has_its_own_registry(settings):
    with TestClient(create_app(settings, FakeJobBackend())) as one:
        one.get("/healthz")
    with TestClient(create_app(settings, FakeJobBackend())) as two:
        assert 'route="/healthz"' not in two.get("/metrics").text


def test_a_static_page_is_served_at_the_root_without_shadowing_the_api(settings, tmp_path, monkeypatch):
    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text("<h1>SafeSpot demo</h1>")
    monkeypatch.setattr("service.app.STATIC_DIR", static)
    with TestClient(create_app(settings, FakeJobBackend())) as client:
        assert "SafeSpot demo" in client.get("/").text
        assert client.get("/healthz").json() == {"status": "ok"}
        missing = client.get("/nothing-here.js")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        assert 'route="/"' in client.get("/metrics").text


def test_metrics_include_the_in_process_workers_registry(settings, backend) -> None:
    from fastapi.testclient import TestClient
    from prometheus_client import CollectorRegistry, Counter

    from service.app import create_app

    worker_registry = CollectorRegistry()
    Counter("safespot_worker_search_passes_total", "passes", ["model"], registry=worker_registry).labels(
        model="m").inc(3)
    backend.metrics_registry = worker_registry  # what EmbeddedBackend exposes
    with TestClient(create_app(settings, backend)) as client:
        text = client.get("/metrics").text
    assert 'safespot_worker_search_passes_total{model="m"} 3.0' in text
    assert "safespot_http_requests_total" in text
