"""POST /v1/training-jobs and GET /v1/training-jobs/{id} (admin)."""

from __future__ import annotations

from pathlib import Path

import pytest
from service_testkit import admin_auth, client_auth, photo_bytes


def provide(data_dir: Path, relative: str) -> None:
    """A (placeholder) data file where the trainer would read it."""
    path = data_dir / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"placeholder")


def test_a_training_run_is_queued_with_defaults(client, backend, settings):
    provide(settings.data_dir, "cifar10_train.npz")
    response = client.post("/v1/training-jobs", json={"epochs": 3}, headers=admin_auth())
    assert response.status_code == 202, response.text
    body = response.json()
    job_id = body["job_id"]
    assert body["status"] == "queued" and body["links"]["self"] == f"/v1/training-jobs/{job_id}"
    request = backend.training[job_id]
    assert request["recipe"] == "s-fgsm-adv" and request["norm"] == "linf"
    assert request["eps"] == pytest.approx(8 / 255) and request["epochs"] == 3
    assert request["data"] == "cifar10" and request["arch"] == "cifar_cnn"

    status = client.get(f"/v1/training-jobs/{job_id}", headers=admin_auth())
    assert status.status_code == 200 and status.json()["status"] == "queued"


def test_a_data_path_inside_the_data_dir_is_accepted(client, backend, settings):
    provide(settings.data_dir, "sets/cats/a.png")
    response = client.post("/v1/training-jobs", json={"data": "sets/cats", "recipe": "natural"},
                           headers=admin_auth())
    assert response.status_code == 202
    assert backend.training[response.json()["job_id"]]["data"] == "sets/cats"


@pytest.mark.parametrize("body", [
    {"recipe": "rm -rf"}, {"norm": "l7"}, {"epochs": 0}, {"epochs": 100000}, {"eps": -1},
    {"eps": 1.0}, {"data": "/etc/passwd"}, {"data": "../../secrets"}, {"data": "a/../../b"},
    {"arch": "../x"}, {"unknown_field": 1}, {"limit": 0},
])
def test_invalid_runs_are_422(client, backend, body):
    response = client.post("/v1/training-jobs", json=body, headers=admin_auth())
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "validation_error"
    assert not backend.training


def test_unknown_or_foreign_training_jobs_are_404(client):
    filter_job = client.post("/v1/filter", headers=client_auth(), files={
        "image": ("a.jpg", photo_bytes(), "image/jpeg")}).json()["job_id"]
    for job_id in ("f" * 32, "bad id", filter_job):
        assert client.get(f"/v1/training-jobs/{job_id}", headers=admin_auth()).status_code == 404


def test_the_pages_recipe_choices_are_the_recipes_a_training_job_accepts() -> None:
    import re

    from service.app import STATIC_DIR
    from worker.protocol import RECIPES

    page = (Path(STATIC_DIR) / "index.html").read_text()
    select = page[page.index('id="train-recipe"'):]
    select = select[:select.index("</select>")]
    assert set(re.findall(r'<option value="([^"]+)"', select)) == set(RECIPES)
