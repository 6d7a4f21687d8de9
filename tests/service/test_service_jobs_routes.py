"""POST /v1/filter, GET /v1/jobs/{id}, GET /v1/jobs/{id}/image against a fake queue."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from service_testkit import FakeJobBackend, client_auth, decode_png, encode, photo, photo_bytes

from service.app import create_app
from service.settings import Settings


def submit(client: TestClient, data: bytes | None = None, *, name: str = "photo.jpg",
           field: str = "image", params: dict | None = None, **form: str):
    files = {field: (name, data if data is not None else photo_bytes(), "image/jpeg")}
    return client.post("/v1/filter", files=files, data=form, params=params, headers=client_auth())


def test_submit_answers_202_with_a_job_and_queues_a_normalised_png(client, backend):
    response = submit(client)
    assert response.status_code == 202
    body = response.json()
    job_id = body["job_id"]
    assert body["status"] == "queued"
    assert body["links"] == {"self": f"/v1/jobs/{job_id}", "image": f"/v1/jobs/{job_id}/image"}
    assert response.headers["location"] == f"/v1/jobs/{job_id}"
    request = backend.requests[job_id]
    assert request["preset"] == "standard" and request["norm"] == "linf"
    # No budget asked, none configured: the worker takes the one its checkpoint was trained for.
    assert request["eps"] is None and request["delta"] is None
    assert request["image"] == {"width": 451, "height": 300, "mode": "RGB", "format": "JPEG",
                                "bytes": len(photo_bytes())}
    assert request["reencode"] is None and request["webhook_url"] is None
    assert decode_png(backend.uploads[job_id]).size == (451, 300)


def test_options_are_parsed_and_passed_on(client, backend):
    response = submit(client, preset="fast", norm="l2", eps="0.75", delta="0.5",
                      reencode="jpeg:85", webhook_url="https://hooks.example.com/done")
    assert response.status_code == 202, response.json()
    request = backend.requests[response.json()["job_id"]]
    assert (request["preset"], request["norm"], request["eps"], request["delta"]) == ("fast", "l2", 0.75, 0.5)
    assert request["reencode"] == {"format": "jpeg", "quality": 85}
    assert request["webhook_url"] == "https://hooks.example.com/done"
    fraction = submit(client, eps="8/255").json()["job_id"]
    assert backend.requests[fraction]["eps"] == pytest.approx(8 / 255)


@pytest.mark.parametrize(("form", "needle"), [
    ({"eps": "17/255"}, "eps"), ({"eps": "-1"}, "eps"), ({"eps": "nan"}, "eps"),
    ({"norm": "l1"}, "norm"), ({"norm": "l2", "eps": "2.5"}, "eps"),
    ({"delta": "0.5"}, "delta"), ({"preset": "turbo"}, "preset"),
    ({"reencode": "jpeg:0"}, "reencode"), ({"reencode": "webp:80"}, "reencode"),
    ({"webhook_url": "https://evil.example.org/x"}, "webhook_url"),
    ({"webhook_url": "http://169.254.169.254/latest"}, "webhook_url"),
    ({"webhook_url": "file:///etc/passwd"}, "webhook_url"),
    ({"webhook_url": "https://user:pw@hooks.example.com/"}, "webhook_url"),
    ({"wait": "61"}, "wait"), ({"wait": "-1"}, "wait"),
])
def test_out_of_bounds_options_are_422_and_queue_nothing(client, backend, form, needle):
    response = submit(client, **form)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] in ("validation_error", "webhooks_disabled") and needle in error["message"]
    assert not backend.requests


def test_webhooks_are_refused_when_no_host_is_allowed(settings, backend):
    with TestClient(create_app(settings.model_copy(update={"webhook_allowed_hosts": frozenset()}),
                               backend)) as client:
        response = submit(client, webhook_url="https://hooks.example.com/done")
    assert response.status_code == 422 and response.json()["error"]["code"] == "webhooks_disabled"


def test_wait_returns_200_with_the_result_when_the_job_ends_in_time(settings):
    backend = FakeJobBackend(auto_finish=True)
    with TestClient(create_app(settings, backend)) as client:
        response = submit(client, params={"wait": "2"})
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "finished" and body["result"]["safe_spot_found"] is True
    assert body["result"]["image"] == {"width": 451, "height": 300, "mode": "RGB"}


def test_wait_as_form_field_follows_a_job_finished_by_another_thread(client, backend):
    def finish_soon() -> None:
        deadline = time.time() + 5
        while not backend.requests and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        backend.finish(next(iter(backend.requests)))

    threading.Thread(target=finish_soon, daemon=True).start()
    started = time.monotonic()
    response = submit(client, wait="4")
    assert response.status_code == 200 and response.json()["status"] == "finished"
    assert time.monotonic() - started < 3


def test_wait_gives_up_with_202_after_the_given_time(client):
    started = time.monotonic()
    response = submit(client, params={"wait": "0.3"})
    assert response.status_code == 202 and response.json()["status"] == "queued"
    assert 0.3 <= time.monotonic() - started < 2


def test_an_accepted_job_is_answered_202_even_if_the_queue_fails_while_waiting(client, backend):
    def down(job_id: str) -> None:
        raise ConnectionError("redis went away")

    backend.get_job = down
    response = submit(client, params={"wait": "2"})
    assert response.status_code == 202 and response.json()["job_id"] in backend.requests


def test_job_status_and_image_follow_the_job(client, backend):
    job_id = submit(client).json()["job_id"]
    status = client.get(f"/v1/jobs/{job_id}", headers=client_auth())
    assert status.status_code == 200 and status.json()["status"] == "queued"
    not_ready = client.get(f"/v1/jobs/{job_id}/image", headers=client_auth())
    assert not_ready.status_code == 409 and not_ready.json()["error"]["code"] == "not_ready"

    backend.finish(job_id)
    body = client.get(f"/v1/jobs/{job_id}", headers=client_auth()).json()
    assert body["status"] == "finished" and body["progress"]["phase"] == "done"
    image = client.get(f"/v1/jobs/{job_id}/image", headers=client_auth())
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert decode_png(image.content).size == (451, 300)

    del backend.images[job_id]  # the result image expired before the job record
    expired = client.get(f"/v1/jobs/{job_id}/image", headers=client_auth())
    assert expired.status_code == 404 and expired.json()["error"]["code"] == "expired"


def test_failed_job_reports_its_error_and_has_no_image(client, backend):
    job_id = submit(client).json()["job_id"]
    backend.fail(job_id, code="model_error")
    body = client.get(f"/v1/jobs/{job_id}", headers=client_auth()).json()
    assert body["status"] == "failed" and body["error"]["code"] == "model_error"
    image = client.get(f"/v1/jobs/{job_id}/image", headers=client_auth())
    assert image.status_code == 409 and image.json()["error"]["code"] == "job_failed"


@pytest.mark.parametrize("job_id", ["0" * 32, "not-a-job", "../../etc/passwd", "A" * 32])
def test_unknown_jobs_are_404(client, job_id):
    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/image"):
        response = client.get(path, headers=client_auth())
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_full_queue_is_429_with_retry_after_before_any_decoding(client, backend, settings):
    backend.depth = settings.max_queue
    response = submit(client)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "queue_full"
    assert int(response.headers["retry-after"]) >= 1
    assert not backend.requests


def test_unreachable_queue_is_503(client, backend):
    def down(*_args: object) -> None:
        raise ConnectionError("connection refused")

    backend.submit_filter = down
    response = submit(client)
    assert response.status_code == 503 and response.json()["error"]["code"] == "queue_unavailable"
    assert "retry-after" in response.headers


def test_grayscale_and_alpha_survive_the_http_path(client, backend):
    rgba = photo("astronaut.png").convert("RGBA")
    rgba.putalpha(200)
    for image, mode in ((photo().convert("L"), "L"), (rgba, "RGBA")):
        job_id = submit(client, encode(image, "PNG"), name="x.png").json()["job_id"]
        assert backend.requests[job_id]["image"]["mode"] == mode
        assert decode_png(backend.uploads[job_id]).mode == mode


def test_open_mode_without_client_keys(settings, backend):
    open_settings = Settings(**{**settings.model_dump(), "api_keys": frozenset()})
    with TestClient(create_app(open_settings, backend)) as client:
        image = encode(Image.new("RGB", (64, 64), (9, 9, 9)), "PNG")
        response = client.post("/v1/filter", files={"image": ("a.png", image, "image/png")})
    assert response.status_code == 202
