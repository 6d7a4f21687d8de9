"""Checkpoint admin routes: upload (stored safely, never loaded here), list,
activate (ready only; unvetted with ?override=true), delete (never the active one)."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import pytest
from service_testkit import FakeJobBackend, admin_auth

from service.errors import UnsupportedMediaType
from service.routes.checkpoints import sniff_kind

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "tiny.safetensors"
METADATA = {"arch": "cifar_cnn", "num_classes": 10, "input_size": [3, 32, 32],
            "class_names": [str(i) for i in range(10)], "mean": [0.5] * 3, "std": [0.25] * 3}


def upload(client, data: bytes, filename: str = "model.safetensors", **form: str):
    return client.post("/v1/checkpoints", files={"file": (filename, data, "application/octet-stream")},
                       data=form, headers=admin_auth())


def stored_files(settings) -> list[str]:
    directory = settings.checkpoint_path
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_safetensors_upload_is_stored_under_a_server_chosen_name(client, backend, settings):
    data = TINY.read_bytes()
    response = upload(client, data, filename="../../../etc/cron.d/evil.safetensors", name="tiny")
    assert response.status_code == 202, response.text
    record = response.json()
    assert record["status"] == "validating" and record["name"] == "tiny"
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert record["size_bytes"] == len(data) and record["source"] == "upload"
    assert record["path"] == f"{record['id']}.safetensors"  # the client's name is ignored
    assert stored_files(settings) == [record["path"]]
    assert (settings.checkpoint_path / record["path"]).read_bytes() == data
    assert backend.checkpoints[record["id"]]["status"] == "validating"


def test_state_dict_upload_needs_metadata(client, backend, settings):
    torch_zip = b"PK\x03\x04" + b"\x00" * 200  # what torch.save writes starts like a zip
    missing = upload(client, torch_zip, filename="model.pt")
    assert missing.status_code == 422 and "metadata" in missing.json()["error"]["message"]
    assert stored_files(settings) == [] and not backend.checkpoints
    bad = upload(client, torch_zip, filename="model.pt", metadata="{not json")
    assert bad.status_code == 422 and stored_files(settings) == []
    ok = upload(client, torch_zip, filename="model.pth", metadata=json.dumps(METADATA))
    assert ok.status_code == 202, ok.text
    assert ok.json()["path"].endswith(".pt") and ok.json()["info"] == METADATA


def test_a_pickle_is_stored_for_the_worker_not_executed_here(client, settings, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    payload = pickle.dumps(Exploit(), protocol=2)
    response = upload(client, payload, filename="model.pt", metadata=json.dumps(METADATA))
    assert response.status_code == 202  # a legacy torch file: the worker loads it weights_only
    assert not marker.exists()


@pytest.mark.parametrize("data", [b"", b"hello world, no checkpoint here", b"\x89PNG\r\n\x1a\n" + b"0" * 64,
                                  b"\xff" * 64])
def test_non_checkpoints_are_415_and_leave_no_file(client, settings, data):
    response = upload(client, data)
    assert response.status_code == 415 and response.json()["error"]["code"] == "unsupported_checkpoint"
    assert stored_files(settings) == []


def test_over_size_checkpoint_is_413_and_leaves_no_file(client, settings):
    header = json.dumps({"__metadata__": {}}).encode()
    data = len(header).to_bytes(8, "little") + header + b"\x00" * (settings.max_checkpoint_bytes + 1)
    response = upload(client, data)
    assert response.status_code == 413
    assert stored_files(settings) == []


def test_the_same_file_twice_is_a_conflict(client, settings):
    data = TINY.read_bytes()
    first = upload(client, data).json()["id"]
    second = upload(client, data)
    assert second.status_code == 409 and first in second.json()["error"]["message"]
    assert len(stored_files(settings)) == 1


def test_list_activate_delete_lifecycle(client, backend):
    a = upload(client, TINY.read_bytes()).json()["id"]
    b = upload(client, TINY.read_bytes() + b" ").json()["id"]  # trailing bytes: another sha256
    listing = client.get("/v1/checkpoints", headers=admin_auth()).json()
    assert [c["id"] for c in listing["checkpoints"]] == [a, b] and listing["active"] is None

    early = client.post(f"/v1/checkpoints/{a}/activate", headers=admin_auth())
    assert early.status_code == 409, "a checkpoint still validating cannot be activated"
    backend.set_status(a, "ready")
    backend.set_status(b, "rejected")
    assert client.post(f"/v1/checkpoints/{b}/activate", headers=admin_auth()).status_code == 409
    activated = client.post(f"/v1/checkpoints/{a}/activate", headers=admin_auth())
    assert activated.status_code == 200 and activated.json()["status"] == "active"
    again = client.post(f"/v1/checkpoints/{a}/activate", headers=admin_auth())
    assert again.status_code == 200, "activating the active checkpoint is a no-op"
    assert client.get("/v1/checkpoints", headers=admin_auth()).json()["active"] == a

    refused = client.delete(f"/v1/checkpoints/{a}", headers=admin_auth())
    assert refused.status_code == 409 and a in backend.checkpoints
    assert client.delete(f"/v1/checkpoints/{b}", headers=admin_auth()).status_code == 204
    assert b not in backend.checkpoints


@pytest.mark.parametrize("checkpoint_id", ["ckpt_missing", "..%2F..%2Fetc", "a" * 200])
def test_unknown_checkpoints_are_404(client, checkpoint_id):
    assert client.post(f"/v1/checkpoints/{checkpoint_id}/activate", headers=admin_auth()).status_code == 404
    assert client.delete(f"/v1/checkpoints/{checkpoint_id}", headers=admin_auth()).status_code == 404


def test_backend_refusals_map_to_http(client, backend):
    """A backend that refuses in its own words (the embedded one cannot import
    our errors) still produces the right status codes."""
    a = upload(client, TINY.read_bytes()).json()["id"]
    backend.set_status(a, "ready")

    def lost(checkpoint_id: str, override: bool = False, reason: str | None = None) -> None:
        raise KeyError(checkpoint_id)

    backend.activate_checkpoint = lost
    assert client.post(f"/v1/checkpoints/{a}/activate", headers=admin_auth()).status_code == 404

    def busy(checkpoint_id: str) -> None:
        raise ValueError("checkpoint is in use")

    backend.delete_checkpoint = busy
    response = client.delete(f"/v1/checkpoints/{a}", headers=admin_auth())
    assert response.status_code == 409 and "in use" in response.json()["error"]["message"]


def test_sniffing_recognises_containers_not_names():
    assert sniff_kind(TINY.read_bytes()[:16]) == "safetensors"
    assert sniff_kind(b"PK\x03\x04rest-of-zip....") == "pt"
    assert sniff_kind(pickle.dumps({"w": 1}, protocol=2)[:16]) == "pt"
    with pytest.raises(UnsupportedMediaType):
        sniff_kind(b'{"json": "only"}')


def test_fake_backend_is_a_job_backend():
    from worker.protocol import JobBackend

    backend: JobBackend = FakeJobBackend()
    assert backend.list_checkpoints() == []


def test_an_unvetted_checkpoint_is_409_until_the_override_which_the_record_then_shows(client, backend, caplog):
    a = upload(client, TINY.read_bytes()).json()["id"]
    backend.registry.put({**backend.checkpoints[a], "status": "unvetted",
                          "vetting": {"skipped": "no vetting set for domain 'toy-shapes'", "domain": "toy-shapes"}})
    refused = client.post(f"/v1/checkpoints/{a}/activate", headers=admin_auth())
    error = refused.json()["error"]
    assert refused.status_code == 409 and error["code"] == "checkpoint_unvetted"
    assert "no vetting set for domain 'toy-shapes'" in error["message"] and "override=true" in error["message"]
    assert client.post(f"/v1/checkpoints/{a}/activate", params={"override": "nonsense"},
                       headers=admin_auth()).status_code == 422
    assert client.get("/v1/checkpoints", headers=admin_auth()).json()["active"] is None

    with caplog.at_level("WARNING"):
        activated = client.post(f"/v1/checkpoints/{a}/activate", params={"override": "true"},
                                headers=admin_auth())
    assert activated.status_code == 200, activated.text
    body = activated.json()
    assert body["status"] == "active" and body["override"]["reason"] == "activated without vetting"
    assert body["override"]["at"] > 0
    assert any("WITHOUT VETTING" in r.getMessage() for r in caplog.records if r.name == "safespot.service")
    listing = client.get("/v1/checkpoints", headers=admin_auth()).json()
    assert listing["active"] == a and listing["checkpoints"][0]["override"] == body["override"]


def test_the_override_keeps_the_admin_s_reason_and_opens_no_other_door(client, backend):
    a = upload(client, TINY.read_bytes()).json()["id"]
    b = upload(client, TINY.read_bytes() + b" ").json()["id"]
    backend.set_status(a, "rejected")
    rejected = client.post(f"/v1/checkpoints/{a}/activate", params={"override": "true"}, headers=admin_auth())
    assert rejected.status_code == 409 and rejected.json()["error"]["code"] == "conflict"
    backend.set_status(b, "unvetted")
    reasoned = client.post(f"/v1/checkpoints/{b}/activate", headers=admin_auth(),
                           params={"override": "true", "reason": "trial on\x00 our photos"})
    assert reasoned.status_code == 200 and reasoned.json()["override"]["reason"] == "trial on our photos"
    too_long = client.post(f"/v1/checkpoints/{b}/activate", headers=admin_auth(),
                           params={"override": "true", "reason": "x" * 201})
    assert too_long.status_code == 422


def test_the_override_is_documented_in_openapi(client):
    operation = client.get("/openapi.json").json()["paths"]["/v1/checkpoints/{checkpoint_id}/activate"]["post"]
    params = {p["name"]: p for p in operation["parameters"] if p["in"] == "query"}
    assert params["override"]["schema"]["type"] == "boolean" and params["override"]["schema"]["default"] is False
    assert "unvetted" in params["override"]["description"] and "checkpoint_unvetted" in params["override"]["description"]
    assert "reason" in params and "409" in operation["responses"]
