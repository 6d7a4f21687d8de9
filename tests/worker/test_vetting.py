"""Checkpoint validation and vetting: hostile files are refused with a reason (and run
nothing); good ones are converted, vetted on a fixed slice of their domain's vetting set
(or left unvetted when there is none), and never activated."""

from __future__ import annotations

import builtins
import dataclasses
import pickle
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models.checkpoint import build_model, file_sha256, load_checkpoint, save_checkpoint
from models.formats import looks_like_safetensors
from tests.conftest import FIXTURES, TINY_MODEL
from tests.models.foreign_checkpoints import robustness_library
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


@pytest.mark.parametrize("layout", ["robustness-library", "foreign-safetensors"])
def test_other_peoples_layouts_are_converted_like_safespot_import_does(settings, tiny_checkpoint, layout) -> None:
    from safetensors.torch import save_file

    settings.checkpoint_dir.mkdir(parents=True)
    state, info = state_of(tiny_checkpoint), tiny_checkpoint.info
    if layout == "robustness-library":  # weights under module.model., a second copy for the attacker
        upload = settings.checkpoint_dir / "madry.pt"
        torch.save(robustness_library(state, info.mean, info.std), upload)
    else:  # plain safetensors without our metadata
        upload = settings.checkpoint_dir / "plain.safetensors"
        save_file(state, str(upload))
    out = vet_checkpoint(record(settings, upload.name, info_dict(tiny_checkpoint)), settings)
    assert out["status"] == "ready" and out["error"] is None, out.get("error")
    assert out["path"] == "ckpt-test.safetensors" and not upload.exists()
    served = load_checkpoint(settings.checkpoint_dir / out["path"]).model.network.state_dict()
    assert all(torch.equal(served[k].contiguous(), v) for k, v in state.items())
    assert 0 <= out["vetting"]["clean_acc"] <= 1


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


def test_an_input_size_without_a_vetting_set_stays_unvetted(settings, tiny_checkpoint) -> None:
    settings.checkpoint_dir.mkdir(parents=True)
    torch.save(state_of(tiny_checkpoint), settings.checkpoint_dir / "big.pt")
    out = vet_checkpoint(record(settings, "big.pt", info_dict(tiny_checkpoint, input_size=(3, 64, 64))),
                         settings)
    assert out["status"] == "unvetted" and out["error"] is None
    assert "no domain" in out["vetting"]["skipped"] and "(3, 64, 64)" in out["vetting"]["skipped"]


def test_without_vetting_data_the_shipped_set_of_the_inferred_domain_is_used(settings) -> None:
    """The tiny fixture's metadata predates domains: CIFAR-10's class names and 32x32 say it."""
    plain = settings.model_copy(update={"vetting_data": None, "data_dir": settings.checkpoint_dir / "none",
                                        "vetting_apgd_n": 4})
    settings.checkpoint_dir.mkdir(parents=True)
    shutil.copy(TINY_MODEL, settings.checkpoint_dir / "tiny.safetensors")
    out = vet_checkpoint(record(plain, "tiny.safetensors"), plain)
    assert out["status"] == "ready", out
    vetting = out["vetting"]
    assert vetting["domain"] == "cifar10" and vetting["domain_from"] == "classes"
    assert vetting["data"] == "cifar10.npz (shipped, 300 images)" and vetting["n"] == 8
    assert 0 <= vetting["clean_acc"] <= 1 and 0 <= vetting["pgd_acc"] <= vetting["clean_acc"]
    assert vetting["n_apgd"] == 4 and 0 <= vetting["apgd_acc"] <= 1 and "apgd-t toward 3" in vetting["apgd_attack"]
    assert vetting["grad_evals_per_image"] > 0 and vetting["preset"] == "fast" and vetting["seconds"] > 0
    assert vetting["threat"]["norm"] == "linf" and "pgd-20" in vetting["attack"]


def test_without_torchattacks_the_strong_attack_is_skipped_with_the_way_to_get_it(
        settings, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torchattacks", None)  # import torchattacks now raises ImportError
    settings.checkpoint_dir.mkdir(parents=True)
    shutil.copy(TINY_MODEL, settings.checkpoint_dir / "tiny.safetensors")
    out = vet_checkpoint(record(settings, "tiny.safetensors"), settings)
    assert out["status"] == "ready" and out["vetting"]["apgd_acc"] is None
    assert out["vetting"]["apgd_skipped"] == "torchattacks not installed (pip install 'safespot[eval]')"
    assert out["vetting"]["clean_acc"] is not None and out["vetting"]["n_apgd"] == 0


def toy_checkpoint(tiny_checkpoint: Any, path: Path) -> Path:
    """A 5-class model whose metadata names a domain nothing ships a set for."""
    info = dataclasses.replace(tiny_checkpoint.info, num_classes=5, domain="toy-shapes", ood={},
                               class_names=[f"shape {i}" for i in range(5)], metrics={})
    torch.manual_seed(0)
    save_checkpoint(build_model(info).eval(), info, path)
    return path


def test_an_unknown_domain_stays_unvetted_until_an_operator_adds_its_set(settings, tiny_checkpoint,
                                                                        tmp_path) -> None:
    settings.checkpoint_dir.mkdir(parents=True)
    toy_checkpoint(tiny_checkpoint, settings.checkpoint_dir / "toy.safetensors")
    out = vet_checkpoint(record(settings, "toy.safetensors"), settings)
    assert out["status"] == "unvetted" and out["error"] is None
    assert out["vetting"]["domain"] == "toy-shapes" and out["vetting"]["domain_from"] == "metadata"
    assert out["vetting"]["skipped"] == "cifar10_mini.npz has labels up to 9, the model 5 classes"
    folder = tmp_path / "vetting"
    folder.mkdir()
    rng = np.random.default_rng(1)
    np.savez(folder / "toy-shapes.npz", x=rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8),
             y=np.arange(12) % 5, class_names=np.array([f"shape {i}" for i in range(5)]))
    with_folder = settings.model_copy(update={"vetting_data": folder, "vetting_apgd_n": 2})
    vetted = vet_checkpoint(record(with_folder, "toy.safetensors"), with_folder)
    assert vetted["status"] == "ready", vetted
    assert vetted["vetting"]["data"] == "toy-shapes.npz (SAFESPOT_VETTING_DATA, 12 images)"
    assert vetted["vetting"]["n"] == 8 and vetted["vetting"]["n_apgd"] == 2
    assert vet_checkpoint(record(settings, "toy.safetensors"), with_folder.model_copy(
        update={"vetting_data": None}))["status"] == "unvetted"  # nothing shipped for it


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


def test_a_stored_ood_detector_is_vetted_and_a_hostile_one_refused(settings, tiny_detector_checkpoint) -> None:
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from models.checkpoint import METADATA_KEY, weights_sha256

    settings.checkpoint_dir.mkdir(parents=True)
    shutil.copy(tiny_detector_checkpoint, settings.checkpoint_dir / "flag.safetensors")
    out = vet_checkpoint(record(settings, "flag.safetensors"), settings)
    assert out["status"] == "ready" and out["info"]["ood"]["score"] == "mahalanobis-layers"
    with safe_open(str(tiny_detector_checkpoint), framework="pt") as f:
        state, meta = {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()[METADATA_KEY])  # noqa: SIM118
    state["ood/mahalanobis/0/precision"] = state["ood/mahalanobis/0/precision"][:, :3].contiguous()
    meta["weights_sha256"] = weights_sha256(state)
    save_file(state, str(settings.checkpoint_dir / "bad.safetensors"), metadata={METADATA_KEY: json.dumps(meta)})
    out = vet_checkpoint(record(settings, "bad.safetensors"), settings)
    assert out["status"] == "rejected" and out["error"]["code"] == "invalid_checkpoint"
    assert "ood/mahalanobis/0/precision" in out["error"]["message"]
