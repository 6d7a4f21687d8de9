"""The OpenAPI document is valid and complete, and the API honours it under
schemathesis' generated requests (no 5xx, documented statuses, JSON errors)."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance
from service_testkit import ADMIN_KEY, CLIENT_KEY, FakeJobBackend

from service.app import create_app
from service.settings import Settings
from worker.protocol import Prediction, RankedClass

CONTRACT = {
    ("/v1/filter", "post"), ("/v1/jobs/{job_id}", "get"), ("/v1/jobs/{job_id}/image", "get"),
    ("/v1/model", "get"),
    ("/v1/checkpoints", "get"), ("/v1/checkpoints", "post"),
    ("/v1/checkpoints/{checkpoint_id}/activate", "post"), ("/v1/checkpoints/{checkpoint_id}", "delete"),
    ("/v1/training-jobs", "post"), ("/v1/training-jobs/{job_id}", "get"),
    ("/healthz", "get"), ("/readyz", "get"), ("/metrics", "get"),
}


def make_app():
    # Requests carry the admin key, so they get past auth and reach validation.
    directory = Path(tempfile.mkdtemp(prefix="safespot-openapi-"))
    app_settings = Settings(api_keys=CLIENT_KEY, admin_keys=ADMIN_KEY, data_dir=directory,
                            max_wait_s=0.2)
    backend = FakeJobBackend(auto_finish=True)
    backend.registry.register_shipped({  # a running service has its model (else /v1/model is 503)
        "name": "tiny", "status": "ready", "sha256": "0" * 64, "path": "", "vetting": {}, "error": None,
        "info": {"num_classes": 2, "class_names": ["cat", "dog"], "input_size": [3, 32, 32]}})
    return create_app(app_settings, backend)


APP = make_app()
SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", APP)


def test_openapi_lists_every_contract_route_with_json_errors():
    document = TestClient(APP).get("/openapi.json").json()
    assert document["openapi"].startswith("3.")
    operations = {(path, method) for path, item in document["paths"].items() for method in item}
    assert operations >= CONTRACT
    assert "ErrorResponse" in document["components"]["schemas"]
    filter_op = document["paths"]["/v1/filter"]["post"]
    assert {"202", "200", "413", "415", "429"} <= set(filter_op["responses"])
    form = filter_op["requestBody"]["content"]["multipart/form-data"]["schema"]
    form = document["components"]["schemas"][form["$ref"].rsplit("/", 1)[1]] if "$ref" in form else form
    assert "image" in form["required"]
    assert document["components"]["schemas"]["JobResponse"]["examples"]


def test_the_result_example_has_the_workers_prediction_shape():
    """The example at /docs shows every prediction field the worker writes, top5 included."""
    document = TestClient(APP).get("/openapi.json").json()
    prediction = document["components"]["schemas"]["JobResponse"]["examples"][0]["result"]["prediction"]
    assert set(prediction) == set(Prediction.__annotations__)
    probabilities = [entry["probability"] for entry in prediction["top5"]]
    assert all(set(entry) == set(RankedClass.__annotations__) for entry in prediction["top5"])
    assert len(probabilities) == 5 and probabilities == sorted(probabilities, reverse=True)
    assert prediction["top5"][0]["label"] == prediction["label"] and sum(probabilities) <= 1


def test_docs_page_is_served():
    response = TestClient(APP).get("/docs")
    assert response.status_code == 200 and "swagger" in response.text.lower()


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_api_docs_load_every_asset_from_this_server(path):
    """Swagger UI and ReDoc come from the installed package: no CDN, so they work offline
    (tests/browser/test_api_docs.py renders them in Chromium with the network cut)."""
    client = TestClient(APP)
    page = client.get(path)
    assert page.status_code == 200
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assert any(a.endswith(".js") for a in assets)
    assert not [a for a in assets if "//" in a], f"{path} loads from another host: {assets}"
    assert "fonts.googleapis" not in page.text
    for asset in assets:
        fetched = client.get(asset)
        assert fetched.status_code == 200 and len(fetched.content) > 1000, asset


@pytest.mark.filterwarnings("ignore")
@SCHEMA.parametrize()
@settings(max_examples=int(os.environ.get("SCHEMATHESIS_EXAMPLES", "15")), deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_api_conforms_to_its_schema(case):

    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    response = case.call(headers=auth)
    # Not "positive data accepted": a schema cannot say which bytes are a valid
    # image (or checkpoint), so schema-valid uploads are rightly refused with 400/415.
    case.validate_response(response, headers=auth, excluded_checks=[positive_data_acceptance])
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"} and {"code", "message"} <= set(body["error"])


def test_unknown_paths_and_methods_use_the_error_shape():
    client = TestClient(APP)
    for response, status in ((client.get("/v2/nothing"), 404), (client.put("/v1/filter"), 405),
                             (client.delete("/healthz"), 405)):
        assert response.status_code == status
        assert set(response.json()["error"]) == {"code", "message"}
