"""A ResNet-50 checkpoint in the robustness library's layout, end to end through a real
`safespot serve` (embedded worker, no Redis): an admin uploads the .pt with its metadata, the
worker converts and vets it (ImageNet has no shipped vetting set: `unvetted`), the admin
activates it with an override, and a client filters a real photograph through it.
Random weights: what is tested is the plumbing, not the predictions."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from bench.stack import Stack, service_env
from models.importers import imagenet_classes, resize_crop_view
from models.normalize import IMAGENET_MEAN, IMAGENET_STD
from tests.browser.checkpoints import wait_until_vetted
from tests.conftest import PHOTOS, TINY_MODEL
from tests.models.foreign_checkpoints import save_resnet50_in_robustness_layout

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(300)]

ADMIN_KEY = "serve-r50-admin-key-0001"
CLIENT_KEY = "serve-r50-client-key-0001"
# 64 px rather than ImageNet's 224: ResNet-50 runs at any size (global pooling), and the
# `fast` search plus its verification cost ~12x less per pass on a busy 2-core machine.
SIDE = 64
EPS = 2 / 255  # asked explicitly, unlike the checkpoint's own budget (it records none)
PHOTO = PHOTOS / "chelsea.jpg"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def metadata() -> dict[str, Any]:
    """What the upload path needs for a bare state dict (docs/service.md, models.ModelInfo)."""
    return {"arch": "torchvision:resnet50", "num_classes": 1000, "class_names": imagenet_classes(),
            "input_size": [3, SIDE, SIDE], "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "view": resize_crop_view(SIDE), "domain": "imagenet", "name": "resnet50 robustness-library"}


def finished(api: httpx.Client, answer: httpx.Response, timeout_s: float = 180) -> dict[str, Any]:
    job = answer.json()
    deadline = time.monotonic() + timeout_s
    while job["status"] not in ("finished", "failed", "canceled", "expired"):
        assert time.monotonic() < deadline, f"job still {job['status']} after {timeout_s} s: {job}"
        time.sleep(0.5)
        job = api.get(f"v1/jobs/{job['job_id']}", headers=auth(CLIENT_KEY)).json()
    assert job["status"] == "finished", job
    return dict(job)


def test_a_robustness_library_resnet50_uploads_vets_activates_and_filters(tmp_path: Path) -> None:
    source = tmp_path / "imagenet_linf_4.pt"
    save_resnet50_in_robustness_layout(source, IMAGENET_MEAN, IMAGENET_STD)
    env = service_env(None, data_dir=tmp_path / "data", checkpoint_dir=tmp_path / "checkpoints",
                      admin_keys=ADMIN_KEY, api_keys=CLIENT_KEY, default_model=TINY_MODEL, metrics_port=0)
    with Stack(tmp_path / "serve") as stack, httpx.Client(base_url=stack.start_api(env), timeout=120) as api:
        stack.wait_http(stack.url + "readyz", 120, "the embedded worker to load the model")
        api.headers.update(auth(ADMIN_KEY))  # the checkpoint routes; the filter sends the client's key
        with open(source, "rb") as f:  # streamed: the file is ~200 MB with the attacker's copy
            answer = api.post("v1/checkpoints", data={"metadata": json.dumps(metadata())},
                              files={"file": (source.name, f, "application/octet-stream")})
        assert answer.status_code == 202, answer.text
        checkpoint_id = answer.json()["id"]

        record = wait_until_vetted(api, checkpoint_id, timeout_s=180)
        assert record["status"] == "unvetted" and record["error"] is None, record
        assert record["vetting"]["domain"] == "imagenet"
        assert "no vetting set for domain 'imagenet'" in record["vetting"]["skipped"]
        assert record["path"] == f"{checkpoint_id}.safetensors"  # converted; the .pt is gone
        assert not (tmp_path / "checkpoints" / f"{checkpoint_id}.pt").exists()
        assert record["info"]["view"] == {"kind": "resize-crop", "resize": 73, "crop": SIDE}

        refused = api.post(f"v1/checkpoints/{checkpoint_id}/activate")
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "checkpoint_unvetted"
        reason = "e2e test: random ImageNet weights"
        activated = api.post(f"v1/checkpoints/{checkpoint_id}/activate",
                             params={"override": "true", "reason": reason})
        assert activated.status_code == 200 and activated.json()["status"] == "active", activated.text
        assert activated.json()["override"]["reason"] == reason

        model = api.get("v1/model", headers=auth(CLIENT_KEY)).json()
        assert model["checkpoint_id"] == checkpoint_id and model["sha256"] == record["sha256"]
        assert model["num_classes"] == 1000 and len(model["class_names"]) == 1000
        assert model["input_size"] == [3, SIDE, SIDE] and model["domain"] == "imagenet"

        answer = api.post("v1/filter", headers=auth(CLIENT_KEY),
                          data={"preset": "fast", "norm": "linf", "eps": "2/255", "wait": "60"},
                          files={"image": (PHOTO.name, PHOTO.read_bytes(), "image/jpeg")})
        assert answer.status_code in (200, 202), answer.text
        job = finished(api, answer)
        result = job["result"]
        assert result["model"]["checkpoint_id"] == checkpoint_id
        assert result["model"]["sha256"] == record["sha256"]
        assert result["threat"]["norm"] == "linf" and result["threat"]["eps"] == pytest.approx(EPS)
        assert result["preset"] == "fast"
        prediction = result["prediction"]
        assert 0 <= prediction["label"] < 1000
        assert prediction["class_name"] == model["class_names"][prediction["label"]]
        assert len(prediction["top5"]) == 5 and all(0 <= c["label"] < 1000 for c in prediction["top5"])
        with Image.open(PHOTO) as photo:
            size = photo.size
        assert (result["image"]["width"], result["image"]["height"]) == size
        png = api.get(f"v1/jobs/{job['job_id']}/image", headers=auth(CLIENT_KEY))
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        with Image.open(io.BytesIO(png.content)) as output:
            assert output.format == "PNG" and output.size == size
