"""Checkpoint validation and vetting: hostile files are refused with a reason (and run
nothing); good ones are converted, vetted on a fixed slice, and never activated."""

from __future__ import annotations

import builtins
import dataclasses
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from models.checkpoint import build_model, file_sha256, save_checkpoint
from tests.conftest import FIXTURES, TINY_MODEL
from worker.registry import looks_like_safetensors
from worker.settings import WorkerSettings
from worker.vetting import vet_checkpoint


@pytest.fixture
def settings(tmp_path: Path) -> WorkerSettings:
    return WorkerSettings(checkpoint_dir=tmp_path / "checkpoints", data_dir=FIXTURES,
                          vetting_data=FIXTURES / "cifar10_mini.npz", vetting_n=8,
                          default_model=str(TINY_MODEL))


def info_dict(tiny_checkpoint: Any, **changes: Any) -> dict[str, Any]:
    return dataclasses.asdict(dataclasses.replace(tiny_checkpoint.info, **changes))


def record(settings: WorkerSettings, name: str, info: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": "ckpt-test", "name": "", "status": "validating", "sha256": "", "path": name,
            "size_bytes": 0, "uploaded_at": 0.0, "info": info or {}, "vetting": {}, "error": None,
            "source": "upload"}


def state_of(tiny_checkpoint: Any) -> dict[str, torch.Tensor]:
    return {k: v.clone(memory_format=torch.contiguous_format)
            for k, v in tiny_checkpoint.model.network.state_dict().items()}


class MakesAFile:
    """A pickle payload that creates a file when unpickled (what an attacker would send)."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, ...]:
        return (builtins.open, (str(self.target), "w"))


def test_a_good_state_dict_is_converted_vetted_and_not_activated(settings, tiny_checkpoint) -> None:
    settings.checkpoint_dir.mkdir(parents=True)
    upload = settings.checkpoint_dir / "upload.pt"
    torch.save(state_of(tiny_checkpoint), upload)
    out = vet_checkpoint(record(settings, "upload.pt", info_dict(tiny_checkpoint)), settings)
    assert out["status"] == "ready" and out["error"] is None, out.get("error")
    converted = settings.checkpoint_dir / out["path"]
    assert out["path"] == "ckpt-test.safetensors" and looks_like_safetensors(converted.read_bytes()[:9]) and not upload.exists()
    assert out["sha256"] == file_sha256(converted) and out["size_bytes"] == converted.stat().st_size
    vetting = out["vetting"]
    assert vetting["n"] == 8 and 0 <= vetting["clean_acc"] <= 1 and 0 <= vetting["pgd_acc"] <= 1
    assert vetting["safe_spot_rate"] is None or 0 <= vetting["safe_spot_rate"] <= 1
    assert out["info"]["num_classes"] == 10


def test_a_safetensors_upload_is_vetted_in_place(settings) -> None:
    settings.checkpoint_dir.mkdir(parents=True)
    shutil.copy(TINY_MODEL, settings.checkpoint_dir / "model.bin")  # content decides, not the name
    out = vet_checkpoint(record(settings, "model.bin"), settings)
    assert out["status"] == "ready" and out["sha256"] == file_sha256(TINY_MODEL)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("fmt", ["zip", "raw-pickle"])
def test_a_pickle_that_runs_code_is_refused_and_runs_nothing(settings, tiny_checkpoint, tmp_path, fmt) -> None:
    proof = tmp_path / "payload-ran.txt"
    probe = tmp_path / "probe.txt"
    pickle.loads(pickle.dumps(MakesAFile(probe)))  # the payload is live: plain unpickling runs it
    assert probe.exists()
    settings.checkpoint_dir.mkdir(parents=True)
    evil = {**state_of(tiny_checkpoint), "extra": MakesAFile(proof)}
    path = settings.checkpoint_dir / "evil.pt"
    if fmt == "zip":
        torch.save(evil, path)
    else:
        path.write_bytes(pickle.dumps(evil))
    out = vet_checkpoint(record(settings, "evil.pt", info_dict(tiny_checkpoint)), settings)
    assert out["status"] == "rejected" and out["error"]["code"] == "unsafe_checkpoint"
    assert not proof.exists()


def test_nan_weights_are_refused(settings, tiny_checkpoint) -> None:
    settings.checkpoint_dir.mkdir(parents=True)
    state = state_of(tiny_checkpoint)
    first = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[first].view(-1)[0] = float("nan")
    torch.save(state, settings.checkpoint_dir / "nan.pt")
    out = vet_checkpoint(record(settings, "nan.pt", info_dict(tiny_checkpoint)), settings)
    assert out["status"] == "rejected" and "NaN" in out["error"]["message"]
    model = build_model(tiny_checkpoint.info)  # the same weights as a self-describing file
    model.network.load_state_dict(state)
    save_checkpoint(model, tiny_checkpoint.info, settings.checkpoint_dir / "nan.safetensors")
    out = vet_checkpoint(record(settings, "nan.safetensors"), settings)
    assert out["status"] == "rejected" and out["error"]["code"] == "invalid_checkpoint"


def test_wrong_shapes_are_refused(settings, tiny_checkpoint) -> None:
    settings.checkpoint_dir.mkdir(parents=True)
    torch.save(state_of(tiny_checkpoint), settings.checkpoint_dir / "shapes.pt")
    wider = info_dict(tiny_checkpoint, arch_args={"width": 16, "hidden": 64})
    out = vet_checkpoint(record(settings, "shapes.pt", wider), settings)
    assert out["status"] == "rejected" and "shape" in out["error"]["message"]


@pytest.mark.parametrize("lie", [{"num_classes": 100}, {"num_classes": 100, "class_names": []}])
def test_a_lying_class_count_is_refused(settings, tiny_checkpoint, lie) -> None:
    settings.checkpoint_dir.mkdir(parents=True)
    torch.save(state_of(tiny_checkpoint), settings.checkpoint_dir / "lie.pt")
    out = vet_checkpoint(record(settings, "lie.pt", info_dict(tiny_checkpoint, **lie)), settings)
    assert out["status"] == "rejected" and out["error"]["code"] == "invalid_checkpoint"


def test_a_model_that_cannot_run_at_its_input_size_is_refused(settings, tiny_checkpoint) -> None:
    settings.checkpoint_dir.mkdir(parents=True)
    torch.save(state_of(tiny_checkpoint), settings.checkpoint_dir / "size.pt")
    one_channel = info_dict(tiny_checkpoint, input_size=(1, 32, 32), mean=[0.5], std=[0.25])
    out = vet_checkpoint(record(settings, "size.pt", one_channel), settings)
    assert out["status"] == "rejected" and "does not run" in out["error"]["message"]


def test_an_input_size_without_data_is_ready_but_not_vetted(settings, tiny_checkpoint) -> None:
    settings.checkpoint_dir.mkdir(parents=True)
    torch.save(state_of(tiny_checkpoint), settings.checkpoint_dir / "big.pt")
    out = vet_checkpoint(record(settings, "big.pt", info_dict(tiny_checkpoint, input_size=(3, 64, 64))),
                         settings)
    assert out["status"] == "ready" and "64" in out["vetting"]["skipped"]


def test_oversize_missing_and_escaping_files_are_refused(settings, tiny_checkpoint) -> None:
    settings.checkpoint_dir.mkdir(parents=True)
    shutil.copy(TINY_MODEL, settings.checkpoint_dir / "big.safetensors")
    small = settings.model_copy(update={"max_checkpoint_bytes": 1000})
    assert vet_checkpoint(record(small, "big.safetensors"), small)["error"]["code"] == "checkpoint_too_large"
    assert vet_checkpoint(record(settings, "gone.pt"), settings)["error"]["code"] == "checkpoint_missing"
    out = vet_checkpoint(record(settings, "../../../etc/passwd"), settings)
    assert out["status"] == "rejected" and out["error"]["code"] == "invalid_path"
    no_info = vet_checkpoint(record(settings, "x.pt"), settings)
    assert no_info["error"]["code"] in ("checkpoint_missing", "missing_metadata")
    torch.save(state_of(tiny_checkpoint), settings.checkpoint_dir / "bare.pt")
    assert vet_checkpoint(record(settings, "bare.pt"), settings)["error"]["code"] == "missing_metadata"
