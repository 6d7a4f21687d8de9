"""`safespot serve` on a fresh machine (no data directory, no SAFESPOT_VETTING_DATA) vets an
uploaded checkpoint of a shipped domain on the vetting set inside the package, and leaves one
of an unknown domain `unvetted` until an admin's override, which the record then shows."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.stack import Stack, service_env
from tests.conftest import TINY_MODEL

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ADMIN_KEY = "serve-vetting-admin-key-0001"
FIGURES = ("clean_acc", "pgd_acc", "apgd_acc", "safe_spot_rate", "s_full_adv_acc", "grad_evals_per_image")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    workdir = tmp_path_factory.mktemp("fresh-serve")
    env = service_env(None, data_dir=workdir / "no-such-data-dir", checkpoint_dir=workdir / "checkpoints",
                      admin_keys=ADMIN_KEY, default_model=TINY_MODEL, metrics_port=0)
    assert not any(k in env for k in ("SAFESPOT_VETTING_DATA", "SAFESPOT_VETTING_N"))  # the defaults
    with Stack(workdir) as stack:
        url = stack.start_api(env)
        stack.wait_http(url + "readyz", 120, "the embedded worker to load the model")
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30) as client:
            yield client
    assert not (workdir / "no-such-data-dir").exists()  # vetting never needed it


def upload(api: httpx.Client, path: Path, name: str) -> str:
    answer = api.post("v1/checkpoints", data={"name": name},
                      files={"file": (path.name, path.read_bytes(), "application/octet-stream")})
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def verdict(api: httpx.Client, checkpoint_id: str, timeout_s: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = next(r for r in api.get("v1/checkpoints").json()["checkpoints"] if r["id"] == checkpoint_id)
        if record["status"] != "validating":
            return dict(record)
        time.sleep(0.5)
    raise AssertionError(f"{checkpoint_id} still validating after {timeout_s} s")


def test_a_checkpoint_of_a_shipped_domain_is_vetted_on_the_packaged_set(api: httpx.Client, tmp_path: Path) -> None:
    from models.checkpoint import load_checkpoint, save_checkpoint

    loaded = load_checkpoint(TINY_MODEL)  # the served model's weights in other files (other sha256s)
    inferred, declared = tmp_path / "inferred.safetensors", tmp_path / "declared.safetensors"
    save_checkpoint(loaded.model, dataclasses.replace(loaded.info, name="no domain"), inferred)
    save_checkpoint(loaded.model, dataclasses.replace(loaded.info, domain="cifar10"), declared)
    for path, domain_from in ((inferred, "classes"), (declared, "metadata")):
        record = verdict(api, upload(api, path, path.stem))
        vetting = record["vetting"]
        assert record["status"] == "ready" and "skipped" not in vetting, record
        assert vetting["domain"] == "cifar10" and vetting["domain_from"] == domain_from
        assert vetting["data"] == "cifar10.npz (shipped, 300 images)"
        assert vetting["n"] == 100 and vetting["n_apgd"] == 32  # the defaults
        assert all(isinstance(vetting[k], int | float) for k in FIGURES), vetting
        assert 0 <= vetting["apgd_acc"] <= vetting["clean_acc"] <= 1 and vetting["seconds"] > 0
        print(f"vetting {path.name}: {vetting['seconds']} s")  # reported by the measurement


def test_an_unknown_domain_stays_unvetted_until_the_override(api: httpx.Client, tmp_path: Path) -> None:
    from tests.browser.checkpoints import unvettable_checkpoint

    checkpoint_id = upload(api, unvettable_checkpoint(tmp_path / "five.safetensors"), "five classes")
    record = verdict(api, checkpoint_id)
    assert record["status"] == "unvetted" and record["vetting"]["domain"] == "toy-shapes", record
    assert "no vetting set for domain 'toy-shapes'" in record["vetting"]["skipped"]
    refused = api.post(f"v1/checkpoints/{checkpoint_id}/activate")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "checkpoint_unvetted"
    assert api.get("v1/checkpoints").json()["active"] == "default"
    activated = api.post(f"v1/checkpoints/{checkpoint_id}/activate", params={"override": "true"})
    assert activated.status_code == 200 and activated.json()["status"] == "active", activated.text
    listing = api.get("v1/checkpoints").json()
    shown = next(r for r in listing["checkpoints"] if r["id"] == checkpoint_id)
    assert listing["active"] == checkpoint_id and shown["override"]["reason"] == "activated without vetting"
    api.post("v1/checkpoints/default/activate").raise_for_status()
