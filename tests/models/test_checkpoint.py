from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from models.checkpoint import (
    ModelInfo,
    build_model,
    load_checkpoint,
    model_from_state,
    read_info,
    save_checkpoint,
)
from models.errors import CheckpointError
from tests.conftest import TINY_MODEL


def _info(**kw) -> ModelInfo:
    base = dict(arch="cifar_cnn", arch_args={"width": 4, "hidden": 16}, num_classes=10,
                input_size=(3, 32, 32), class_names=[f"c{i}" for i in range(10)],
                mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    base.update(kw)
    return ModelInfo(**base)  # type: ignore[arg-type]


def test_round_trip_keeps_weights_metadata_and_identity(tmp_path: Path) -> None:
    info = _info(recipe={"name": "natural"}, metrics={"clean_acc": 0.5}, domain="cifar10")
    model = build_model(info).eval()
    digest = save_checkpoint(model, info, tmp_path / "m.safetensors")
    loaded = load_checkpoint(tmp_path / "m.safetensors")
    assert loaded.sha256 == digest and loaded.info.metrics == {"clean_acc": 0.5}
    assert loaded.info.domain == "cifar10"
    assert read_info(TINY_MODEL).domain == ""  # written before the field: no domain, still loads
    assert not loaded.model.training
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x))
    assert read_info(tmp_path / "m.safetensors").arch == "cifar_cnn"



def _state(info: ModelInfo) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in build_model(info).network.state_dict().items()}


def test_nan_weights_are_refused() -> None:
    info = _info()
    state = _state(info)
    weight = next(v for v in state.values() if v.is_floating_point())
    weight[(0,) * weight.ndim] = float("nan")
    with pytest.raises(CheckpointError, match="NaN"):
        model_from_state(info, state)


def test_wrong_shapes_and_lying_class_counts_are_refused() -> None:
    info = _info()
    with pytest.raises(CheckpointError, match="shapes"):
        model_from_state(_info(num_classes=5, class_names=[]), _state(info))
    with pytest.raises(CheckpointError, match="names 10 classes but declares 7"):
        ModelInfo.from_dict(json.loads(_info(num_classes=7).to_json()))
    state = _state(info)
    state.pop(next(iter(state)))
    with pytest.raises(CheckpointError, match="missing"):
        model_from_state(info, state)


def test_wrong_input_size_is_refused() -> None:
    # The metadata claims grey inputs; the weights expect three channels.
    with pytest.raises(CheckpointError, match="does not run"):
        model_from_state(_info(input_size=(1, 32, 32), mean=[0.5], std=[0.25]), _state(_info()))


def test_tampered_weights_and_foreign_files_are_refused(tmp_path: Path) -> None:
    info = _info()
    path = tmp_path / "m.safetensors"
    save_checkpoint(build_model(info), info, path)
    header = json.loads(path.read_bytes()[8:8 + int.from_bytes(path.read_bytes()[:8], "little")])
    state = {k: v.contiguous() for k, v in _state(info).items()}
    save_file(state, tmp_path / "tampered.safetensors", metadata=header["__metadata__"])
    with pytest.raises(CheckpointError, match="digest"):
        load_checkpoint(tmp_path / "tampered.safetensors")
    save_file(state, tmp_path / "bare.safetensors")
    with pytest.raises(CheckpointError, match="no 'safespot' metadata"):
        load_checkpoint(tmp_path / "bare.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_checkpoint(tmp_path / "junk.safetensors")
    with pytest.raises(CheckpointError, match="does not match the expected"):
        load_checkpoint(path, expected_sha256="0" * 64)


def test_oversize_files_are_refused_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import models.checkpoint as ck

    monkeypatch.setattr(ck, "MAX_CHECKPOINT_BYTES", 1000)
    with pytest.raises(CheckpointError, match="over the 1000-byte limit"):
        load_checkpoint(TINY_MODEL)


def test_unknown_architecture_is_refused() -> None:
    with pytest.raises(CheckpointError, match="unknown architecture"):
        ModelInfo.from_dict(json.loads(_info(arch="os.system").to_json()))


def test_checkpoints_without_a_view_keep_the_whole_image_resize() -> None:
    info = read_info(TINY_MODEL)  # written before views had names
    assert info.view == {"kind": "resize"}


def test_the_view_round_trips_and_must_fit_the_input_size(tmp_path: Path) -> None:
    info = _info(view={"kind": "resize-crop", "resize": 36, "crop": 32})
    save_checkpoint(build_model(info), info, tmp_path / "m.safetensors")
    assert read_info(tmp_path / "m.safetensors").view == {"kind": "resize-crop", "resize": 36, "crop": 32}
    raw = json.loads(info.to_json())
    for view, message in (({"kind": "resize-crop", "resize": 256, "crop": 224}, "model takes 32x32"),
                          ({"kind": "fisheye"}, "unknown view"), ("resize", "unknown view")):
        with pytest.raises(CheckpointError, match=message):
            ModelInfo.from_dict({**raw, "view": view})


def test_library_architectures_are_checked_before_anything_is_built() -> None:
    raw = json.loads(_info().to_json())
    with pytest.raises(CheckpointError, match="timm has no classification architecture 'nope'"):
        ModelInfo.from_dict({**raw, "arch": "timm:nope"})
    with pytest.raises(CheckpointError, match=r"\['checkpoint_path'\] are not allowed"):
        ModelInfo.from_dict({**raw, "arch": "timm:resnet18", "arch_args": {"checkpoint_path": "/x"}})



WNIDS = [f"n{i:08d}" for i in range(10)]


@pytest.mark.parametrize("wnids", [WNIDS[:9], [*WNIDS[:9], "n00000000"], [*WNIDS[:9], ""], [*WNIDS[:9], ["n"]],
                                   [*WNIDS[:9], 7], "n012345678"],
                         ids=["too-few", "repeated", "empty", "a-list", "a-number", "a-string"])
def test_wnids_must_name_every_class_once(wnids: list[str], tmp_path: Path) -> None:
    _info(wnids=WNIDS).validate()
    with pytest.raises(CheckpointError, match="'wnids' must be 10 distinct non-empty strings"):
        _info(wnids=wnids).validate()
    info = _info(wnids=WNIDS)
    save_checkpoint(build_model(info).eval(), info, tmp_path / "w.safetensors")
    assert read_info(tmp_path / "w.safetensors").wnids == WNIDS


@pytest.mark.parametrize("names", [[*[f"c{i}" for i in range(9)], ["x"]], "c0c1c2c3c4"])
def test_class_names_must_be_strings(names: object) -> None:
    with pytest.raises(CheckpointError, match="'class_names' must be a list of strings"):
        _info(class_names=names).validate()


def test_the_default_budget_is_the_one_trained_for_in_the_same_norm() -> None:
    assert _info(threat={"norm": "linf", "eps": 4 / 255}).budget("linf") == pytest.approx(4 / 255)
    assert _info(threat={"norm": "linf", "eps": 4 / 255}).budget("l2") == pytest.approx(0.5)
    assert _info(threat={}).budget("linf") == pytest.approx(8 / 255)
    assert _info(threat={"norm": "linf", "eps": "4/255"}).budget("linf") == pytest.approx(8 / 255)
    assert _info(threat={"norm": "l2", "eps": True}).budget("l2") == 0.5  # not a budget of 1.0
    with pytest.raises(ValueError, match="unknown norm"):
        _info().budget("l3")


def test_the_default_norm_is_the_one_trained_against() -> None:
    gaussian = _info(threat={"norm": "l2", "sigma": 0.25})  # a smoothing model: noise norm, no eps
    assert (gaussian.norm, gaussian.budget(gaussian.norm)) == ("l2", 0.5)
    assert _info(threat={"norm": "linf", "eps": 4 / 255}).norm == "linf"
    assert _info(threat={}).norm == _info(threat={"norm": "l7"}).norm == _info(threat="l2").norm == "linf"
