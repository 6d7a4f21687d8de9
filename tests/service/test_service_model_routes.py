"""GET /v1/model: the active checkpoint's name and classes, from the registry's record."""

from __future__ import annotations

from service_testkit import client_auth

TINY_IMAGENET_NAMES = [f"class {i}" for i in range(200)]


def record(checkpoint_id: str, names: list[str], **info: object) -> dict[str, object]:
    return {"id": checkpoint_id, "name": f"{checkpoint_id} model", "status": "ready", "sha256": "ab" * 32,
            "path": "", "size_bytes": 1, "uploaded_at": 1.0, "vetting": {}, "error": None,
            "info": {"arch": "cifar_cnn", "num_classes": len(names), "class_names": names,
                     "input_size": [3, 64, 64], "mean": [0.5] * 3, "std": [0.25] * 3, **info}}


def test_no_registered_model_is_503_and_a_client_key_is_needed(client):
    assert client.get("/v1/model").status_code == 401
    response = client.get("/v1/model", headers=client_auth())
    assert response.status_code == 503 and response.json()["error"]["code"] == "not_ready"


def test_the_active_checkpoint_with_its_class_names(client, backend):
    backend.registry.register_shipped(record("default", TINY_IMAGENET_NAMES, domain="tinyimagenet",
                                             threat={"norm": "linf", "eps": 4 / 255}))
    backend.registry.put(record("ckpt_0123456789ab", ["cat", "dog"]))
    body = client.get("/v1/model", headers=client_auth()).json()
    assert body == {"checkpoint_id": "default", "name": "default model", "sha256": "ab" * 32,
                    "num_classes": 200, "class_names": TINY_IMAGENET_NAMES, "input_size": [3, 64, 64],
                    "domain": "tinyimagenet", "threat": {"norm": "linf", "eps": 4 / 255},
                    "max_eps": {"linf": 16 / 255, "l2": 2.0}}
    backend.activate_checkpoint("ckpt_0123456789ab")
    body = client.get("/v1/model", headers=client_auth()).json()
    assert body["checkpoint_id"] == "ckpt_0123456789ab" and body["class_names"] == ["cat", "dog"]
    assert body["num_classes"] == 2 and body["domain"] == "" and body["threat"] == {}


def test_a_threat_the_metadata_garbles_is_left_out(client, backend):
    for threat in ({"norm": "linf", "eps": -1}, {"norm": "l3", "eps": 0.1}, {"eps": "8/255"}, "linf"):
        backend.registry.register_shipped(record("default", ["cat", "dog"], threat=threat))
        assert client.get("/v1/model", headers=client_auth()).json()["threat"] == {}


def test_the_budget_limits_are_the_servers_own(settings, backend):
    from fastapi.testclient import TestClient

    from service.app import create_app

    backend.registry.register_shipped(record("default", ["cat", "dog"]))
    tight = settings.model_copy(update={"max_eps_linf": 8 / 255, "max_eps_l2": 1.0})
    with TestClient(create_app(tight, backend)) as client:
        assert client.get("/v1/model", headers=client_auth()).json()["max_eps"] == {"linf": 8 / 255, "l2": 1.0}
