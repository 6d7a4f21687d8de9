"""Issue 7, item 2, end to end: hostile checkpoints uploaded through the admin
API, vetted by a real worker process, refused with a reason visible in
GET /v1/checkpoints; the active model unchanged and still serving.

tests/worker/test_vetting.py calls the vetting function directly and
tests/service/test_service_checkpoints_routes.py stores uploads with an
in-memory queue; here the upload crosses a real socket, the vetting job
crosses Redis, and the worker that runs it is the one serving filter jobs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import struct
from pathlib import Path
from typing import Any

import httpx
import pytest

from models.checkpoint import build_model, file_sha256, save_checkpoint
from tests.conftest import TINY_MODEL
from tests.reliability.conftest import (
    Stack,
    admin_auth,
    client_auth,
    small_photo,
    stream_upload,
    wait_for,
)
from worker.registry import json_safe

pytestmark = pytest.mark.integration

ACTIVE = "default"  # the shipped model's record: what the worker serves with nothing activated


class WritesAFile:
    """A pickle payload that creates a file when unpickled."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.target), "w"))


class RunsAShellCommand:
    """A pickle payload that runs `touch TARGET` through os.system when unpickled."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.target}",))


@dataclasses.dataclass
class Hostile:
    """One hostile upload: its bytes, its metadata, the file name it claims, and
    the refusal expected (error code, and a word the message must contain)."""

    data: bytes
    metadata: dict[str, Any] | None
    code: str
    says: str
    filename: str = "model.pt"


def _state(tiny_checkpoint: Any) -> dict[str, Any]:
    import torch

    return {k: v.clone(memory_format=torch.contiguous_format)
            for k, v in tiny_checkpoint.model.network.state_dict().items()}


def _info(tiny_checkpoint: Any, **changes: Any) -> dict[str, Any]:
    return json_safe(dataclasses.asdict(dataclasses.replace(tiny_checkpoint.info, **changes)))


def _torch_bytes(obj: Any, tmp: Path, stem: str) -> bytes:
    """torch.save's zip; `stem` names its inner folder, so equal weights still differ in bytes
    (the API refuses a second upload of the same file)."""
    import torch

    path = tmp / f"{stem}.pt"
    torch.save(obj, path)
    return path.read_bytes()


def _safetensors_bytes(tiny_checkpoint: Any, tmp: Path, state: dict[str, Any] | None = None,
                       **info_changes: Any) -> bytes:
    model = build_model(tiny_checkpoint.info)
    model.network.load_state_dict(state or _state(tiny_checkpoint))
    info = dataclasses.replace(tiny_checkpoint.info, **info_changes)
    path = tmp / "model.safetensors"
    save_checkpoint(model, info, path)
    return path.read_bytes()


def _lying_safetensors_header() -> bytes:
    """A safetensors header whose one tensor claims far more bytes than the file holds."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [100000, 100000],
                               "data_offsets": [0, 40_000_000_000]}}).encode()
    return struct.pack("<Q", len(header)) + header + b"\0" * 64


def hostile_uploads(tiny_checkpoint: Any, tmp: Path) -> dict[str, Hostile]:
    info = _info(tiny_checkpoint)
    state = _state(tiny_checkpoint)
    nan_state = _state(tiny_checkpoint)
    first = next(k for k, v in nan_state.items() if v.is_floating_point() and v.numel() > 1)
    nan_state[first].view(-1)[0] = float("nan")
    return {
        "pickle that writes a file (torch.save zip)": Hostile(
            _torch_bytes({**state, "x": WritesAFile(tmp / "proof-open")}, tmp, "case2"), info,
            "unsafe_checkpoint", "unpickle"),
        "pickle that runs a shell command (raw pickle)": Hostile(
            pickle.dumps({**state, "x": RunsAShellCommand(tmp / "proof-shell")}), info,
            "unsafe_checkpoint", "unpickle"),
        "wrong shapes": Hostile(
            _torch_bytes(state, tmp, "case3"), _info(tiny_checkpoint, arch_args={"width": 16, "hidden": 64}),
            "invalid_checkpoint", "shape"),
        "NaN weights (state dict)": Hostile(_torch_bytes(nan_state, tmp, "case4"), info, "invalid_checkpoint", "NaN"),
        "NaN weights (safetensors)": Hostile(
            _safetensors_bytes(tiny_checkpoint, tmp, nan_state, name="nan"), None, "invalid_checkpoint",
            "", filename="model.safetensors"),
        "lying class count (metadata)": Hostile(
            _torch_bytes(state, tmp, "case5"), _info(tiny_checkpoint, num_classes=100), "invalid_checkpoint", ""),
        "lying class count (safetensors header)": Hostile(
            _safetensors_bytes(tiny_checkpoint, tmp, num_classes=100, name="liar"), None,
            "invalid_checkpoint", "", filename="model.safetensors"),
        "tensor larger than the file": Hostile(
            _lying_safetensors_header(), None, "invalid_checkpoint", "", filename="model.safetensors"),
        "pickle with a path-traversal name": Hostile(
            _torch_bytes({**state, "x": WritesAFile(tmp / "proof-traversal")}, tmp, "case6"), info,
            "unsafe_checkpoint", "unpickle", filename="../../evil.pt"),
    }


def upload(api: httpx.Client, data: bytes, filename: str, metadata: dict[str, Any] | None = None,
           name: str | None = None) -> httpx.Response:
    fields = {k: v for k, v in (("metadata", None if metadata is None else json.dumps(metadata)),
                                ("name", name)) if v is not None}
    return api.post("/v1/checkpoints", headers=admin_auth(), data=fields,
                    files={"file": (filename, data, "application/octet-stream")})


def records(api: httpx.Client) -> dict[str, Any]:
    response = api.get("/v1/checkpoints", headers=admin_auth())
    assert response.status_code == 200, response.text
    return response.json()


def vetted(api: httpx.Client, ids: list[str], timeout: float = 120) -> dict[str, dict[str, Any]]:
    def done() -> dict[str, dict[str, Any]] | None:
        by_id = {r["id"]: r for r in records(api)["checkpoints"]}
        if all(by_id[i]["status"] != "validating" for i in ids):
            return by_id
        return None

    return wait_for(done, timeout, "the worker to vet every upload", interval=0.25)


def files_outside(root: Path, inside: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() and inside not in p.parents}


def test_hostile_checkpoints_are_refused_with_a_reason_and_change_nothing(
        stack: Stack, tiny_checkpoint: Any, tmp_path: Path) -> None:
    cases = hostile_uploads(tiny_checkpoint, tmp_path)
    proofs = [tmp_path / "proof-open", tmp_path / "proof-shell", tmp_path / "proof-traversal"]
    stack_files_before = files_outside(stack.tmp, stack.checkpoint_dir)
    with stack.api.client() as api:
        assert records(api)["active"] == ACTIVE
        ids: dict[str, str] = {}
        for label, case in cases.items():
            response = upload(api, case.data, case.filename, case.metadata, name=label)
            assert response.status_code == 202, (label, response.text)
            body = response.json()
            assert body["status"] == "validating" and body["id"].startswith("ckpt_")
            ids[label] = body["id"]
        by_id = vetted(api, list(ids.values()))

        for label, case in cases.items():
            record = by_id[ids[label]]
            assert record["status"] == "rejected", (label, record)
            assert record["error"]["code"] == case.code, (label, record["error"])
            assert case.says in record["error"]["message"], (label, record["error"])
            assert record["name"] == label
            assert "/" not in record["path"] and ".." not in record["path"]
            refused = api.post(f"/v1/checkpoints/{ids[label]}/activate", headers=admin_auth())
            assert refused.status_code == 409 and refused.json()["error"]["code"] == "conflict"

        listing = records(api)
        assert listing["active"] == ACTIVE
        assert [r["id"] for r in listing["checkpoints"] if r["status"] == "active"] == [ACTIVE]
        for proof in proofs:
            assert not proof.exists(), f"a pickled payload ran: {proof} exists"

        # The worker still serves the model it had, and is the same process.
        job = api.post("/v1/filter", headers=client_auth(), data={"preset": "fast", "wait": "30"},
                       files={"image": ("a.png", small_photo(), "image/png")}).json()
        assert job["status"] == "finished", job
        assert job["result"]["model"]["checkpoint_id"] == ACTIVE
        assert job["result"]["model"]["sha256"] == file_sha256(TINY_MODEL)
    assert stack.worker_alive()
    assert files_outside(stack.tmp, stack.checkpoint_dir) == stack_files_before


@pytest.mark.parametrize("filename", ["../../x.safetensors", "/tmp/x.safetensors",
                                      "..\\..\\x.safetensors", "x.safetensors\0.png"])
def test_a_path_traversal_file_name_is_ignored(stack: Stack, tiny_checkpoint: Any, tmp_path: Path,
                                               filename: str) -> None:
    """A valid checkpoint sent under a hostile file name: stored under a
    server-chosen name inside the checkpoint directory, vetted, ready, and
    not activated; nothing written anywhere else."""
    data = _safetensors_bytes(tiny_checkpoint, tmp_path, name=f"renamed {filename!r}")
    outside_before = files_outside(stack.tmp, stack.checkpoint_dir)
    with stack.api.client() as api:
        response = upload(api, data, filename)
        assert response.status_code == 202, response.text
        checkpoint_id = response.json()["id"]
        record = vetted(api, [checkpoint_id])[checkpoint_id]
        assert record["status"] == "ready", record
        assert record["path"] == f"{checkpoint_id}.safetensors"
        assert (stack.checkpoint_dir / record["path"]).read_bytes() == data
        assert records(api)["active"] == ACTIVE
        assert api.delete(f"/v1/checkpoints/{checkpoint_id}", headers=admin_auth()).status_code == 204
    assert not (stack.checkpoint_dir / record["path"]).exists()
    assert files_outside(stack.tmp, stack.checkpoint_dir) == outside_before
    assert not Path("/tmp/x.safetensors").exists()


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_an_over_size_checkpoint_is_413_while_streaming_and_leaves_nothing(
        stack: Stack, chunked: bool) -> None:
    limit = 1024 * 1024  # the stack's SAFESPOT_MAX_CHECKPOINT_BYTES
    total = 32 * limit
    count_before = len(list(stack.checkpoint_dir.glob("*"))) if stack.checkpoint_dir.exists() else 0
    with stack.api.client() as api:
        ids_before = {r["id"] for r in records(api)["checkpoints"]}
        sent, status, body = stream_upload(stack.api.port, "/v1/checkpoints", "file", admin_auth(), total,
                                           chunked=chunked, first_bytes=b"PK\x03\x04")
        assert status == 413 and body["error"]["code"] in ("payload_too_large", "file_too_large")
        assert sent < total // 4, f"sent {sent} of {total} bytes before the refusal"
        assert {r["id"] for r in records(api)["checkpoints"]} == ids_before
    leftovers = list(stack.checkpoint_dir.glob("*")) if stack.checkpoint_dir.exists() else []
    assert len(leftovers) == count_before, leftovers  # no half-written or temporary file


def test_an_upload_between_the_limits_is_refused_by_the_api_not_stored(
        stack: Stack, tiny_checkpoint: Any) -> None:
    """Just over SAFESPOT_MAX_CHECKPOINT_BYTES but within the body's framing
    allowance: the streaming copy refuses it (file_too_large), no file stays."""
    data = b"PK\x03\x04" + b"\0" * (1024 * 1024 + 10)
    with stack.api.client() as api:
        ids_before = {r["id"] for r in records(api)["checkpoints"]}
        response = upload(api, data, "big.pt", _info(tiny_checkpoint))
        assert response.status_code == 413 and response.json()["error"]["code"] == "file_too_large"
        assert {r["id"] for r in records(api)["checkpoints"]} == ids_before
    assert not list(stack.checkpoint_dir.glob(".upload-*"))

