"""Foreign checkpoints -> our format (models/importers.py): each layout round-trips, the rest is refused."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor

from models.architectures import build_network
from models.checkpoint import ModelInfo, load_checkpoint
from models.errors import CheckpointError
from models.importers import (
    ForeignWeights,
    ImportRequest,
    convert,
    import_checkpoint,
    model_from_file,
    read_weights,
    resize_crop_view,
)
from models.normalize import IMAGENET_MEAN, IMAGENET_STD, Classifier
from tests.models.foreign_checkpoints import (
    MADRY_MEAN,
    MADRY_STD,
    prefixed,
    robustness_library,
    save_resnet50_in_robustness_layout,
    stat,
)

ARCH = "timm:test_resnet"  # timm's own tiny test network: same key layout as a real ResNet
SIZE = 64


@pytest.fixture(scope="module")
def network() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network(ARCH, num_classes=10).eval()


def _request(**changes: Any) -> ImportRequest:
    base: dict[str, Any] = dict(arch=ARCH, class_names=[f"c{i}" for i in range(10)], num_classes=10,
                                input_size=(3, SIZE, SIZE), view=resize_crop_view(SIZE), name="imported")
    return ImportRequest(**(base | changes))


# name -> (what to write given the network's state dict, the layout, the mean/std the file carries)
FORMATS: dict[str, tuple[Callable[[dict[str, Tensor]], Any], str, list[float] | None]] = {
    "timm/torchvision state dict": (lambda s: s, "state-dict", None),
    "DataParallel module. prefix": (lambda s: prefixed(s, "module."), "state-dict", None),
    "timm training checkpoint": (lambda s: {"state_dict": s, "epoch": 3, "arch": "test_resnet"},
                                 "state-dict", None),
    "robustness library (Madry lab)": (robustness_library, "robustness-library", MADRY_MEAN),
    "RobustBench ImageNet (normalize + model)": (
        lambda s: {**prefixed(s, "model."), "normalize.mean": stat(MADRY_MEAN, (1, 3, 1, 1)),
                   "normalize.std": stat(MADRY_STD, (1, 3, 1, 1))}, "robustbench", MADRY_MEAN),
    "RobustBench mu/sigma under state_dict": (
        lambda s: {"state_dict": {**prefixed(s, "module."), "module.mu": stat(MADRY_MEAN, (1, 3, 1, 1)),
                                  "module.sigma": stat(MADRY_STD, (1, 3, 1, 1))}}, "robustbench", MADRY_MEAN),
}


def _same_outputs(path: Path, network: torch.nn.Module, mean: list[float], std: list[float]) -> None:
    loaded = load_checkpoint(path)
    reference = Classifier(network, mean, std).eval()
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), reference(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("layout_name", sorted(FORMATS))
def test_each_format_round_trips(tmp_path: Path, network: torch.nn.Module, layout_name: str) -> None:
    build, layout, file_mean = FORMATS[layout_name]
    source = tmp_path / "source.pt"
    torch.save(build(network.state_dict()), source)
    report = import_checkpoint(source, tmp_path / "out.safetensors", _request())
    assert report.converted.layout == layout and report.info.recipe["layout"] == layout
    mean, std = (MADRY_MEAN, MADRY_STD) if file_mean else (list(IMAGENET_MEAN), list(IMAGENET_STD))
    assert report.info.mean == pytest.approx(mean) and report.info.std == pytest.approx(std)
    info = load_checkpoint(tmp_path / "out.safetensors").info
    assert info.view == {"kind": "resize-crop", "resize": 73, "crop": 64} and info.arch == ARCH
    assert info.recipe["source_sha256"] and info.class_names[3] == "c3"
    _same_outputs(tmp_path / "out.safetensors", network, mean, std)


def read_weights_from(obj: Any) -> ForeignWeights:
    from models.importers import _unwrap

    return _unwrap(obj, "in-memory")


def test_robustness_library_drops_the_attacker_copy(network: torch.nn.Module) -> None:
    weights = read_weights_from(robustness_library(network.state_dict()))
    converted = convert(weights, list(network.state_dict()))
    assert converted.prefix == "module.model."
    assert all(k.startswith("module.attacker.") or "normalizer" in k for k in converted.dropped)
    assert len(converted.dropped) == len(network.state_dict()) + 4
    assert converted.mean == pytest.approx(MADRY_MEAN)


def test_safetensors_sources_are_read_without_pickle(tmp_path: Path, network: torch.nn.Module) -> None:
    source = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in prefixed(network.state_dict(), "module.").items()}, source)
    report = import_checkpoint(source, tmp_path / "out.safetensors", _request(view={"kind": "resize"}))
    assert report.weights.encoding == "safetensors" and report.converted.prefix == "module."
    _same_outputs(tmp_path / "out.safetensors", network, list(IMAGENET_MEAN), list(IMAGENET_STD))


def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    for name, payload in (("legacy.pt", None), ("zip.pt", "zip")):
        evil = tmp_path / name
        if payload:  # torch.save's zip container with the same pickle inside
            torch.save({"model": {"w": torch.zeros(1)}, "extra": Payload()}, evil)
            marker.unlink(missing_ok=True)  # saving does not run it; make sure loading doesn't either
        else:
            with open(evil, "wb") as f:
                pickle.dump({"weight": Payload()}, f, protocol=2)
        with pytest.raises(CheckpointError, match="not a plain tensor state dict") as caught:
            import_checkpoint(evil, tmp_path / "out.safetensors", _request())
        assert isinstance(caught.value.__cause__, pickle.UnpicklingError)
        assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


def test_a_whole_pickled_model_is_refused(tmp_path: Path, network: torch.nn.Module) -> None:
    torch.save(network, tmp_path / "whole.pt")
    with pytest.raises(CheckpointError, match=r"save model.state_dict\(\) instead"):
        read_weights(tmp_path / "whole.pt")


@pytest.mark.parametrize(("content", "message"), [
    (b'{"not": "a checkpoint"}\n', "not a checkpoint"),
    (b"", "not a checkpoint"),
    (b"\x10\x00\x00\x00\x00\x00\x00\x00{truncated", "not a readable safetensors"),
])
def test_other_files_are_refused(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "x.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        read_weights(tmp_path / "x.pt")


def test_a_dict_without_weights_names_what_it_found(tmp_path: Path) -> None:
    torch.save({"epoch": 3, "optimizer": {"lr": torch.tensor(0.1)}, "weights": [torch.zeros(1)]}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match=r"top-level keys \['epoch', 'optimizer', 'weights'\]"):
        read_weights(tmp_path / "x.pt")


def test_weights_of_another_architecture_list_missing_and_unexpected_keys(
        tmp_path: Path, network: torch.nn.Module) -> None:
    state = dict(network.state_dict())
    state["head.extra.weight"] = torch.zeros(2)
    del state["conv1.0.weight"]
    torch.save(state, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match=r"1 missing \['conv1.0.weight'\], 1 unexpected \['head.extra.weight'\]"):
        import_checkpoint(tmp_path / "x.pt", tmp_path / "out.safetensors", _request())
    torch.save(network.state_dict(), tmp_path / "ok.pt")
    with pytest.raises(CheckpointError, match="missing"):
        import_checkpoint(tmp_path / "ok.pt", tmp_path / "out.safetensors", _request(arch="torchvision:resnet18"))


def test_a_normaliser_that_disagrees_with_the_given_one_is_refused(tmp_path: Path, network: torch.nn.Module) -> None:
    torch.save(robustness_library(network.state_dict()), tmp_path / "madry.pt")
    with pytest.raises(CheckpointError, match="normaliser has mean"):
        import_checkpoint(tmp_path / "madry.pt", tmp_path / "out.safetensors", _request(mean=list(IMAGENET_MEAN)))
    report = import_checkpoint(tmp_path / "madry.pt", tmp_path / "out.safetensors", _request(mean=MADRY_MEAN))
    assert report.info.mean == pytest.approx(MADRY_MEAN)  # agreeing values are fine


def test_bad_metadata_writes_nothing(tmp_path: Path, network: torch.nn.Module) -> None:
    torch.save(network.state_dict(), tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="view crops 64x64 but the model takes 32x32"):
        import_checkpoint(tmp_path / "x.pt", tmp_path / "out.safetensors", _request(input_size=(3, 32, 32)))
    with pytest.raises(CheckpointError, match="names 10 classes but declares 7"):
        import_checkpoint(tmp_path / "x.pt", tmp_path / "out.safetensors", _request(num_classes=7))
    assert not (tmp_path / "out.safetensors").exists()


def test_the_upload_path_loads_any_layout_into_the_uploaders_metadata(
        tmp_path: Path, network: torch.nn.Module) -> None:
    torch.save(robustness_library(network.state_dict()), tmp_path / "upload.pt")
    info = ModelInfo(arch=ARCH, num_classes=10, input_size=(3, SIZE, SIZE), class_names=[],
                     mean=MADRY_MEAN, std=MADRY_STD, view=resize_crop_view(SIZE))
    model, converted = model_from_file(tmp_path / "upload.pt", info)
    assert converted.layout == "robustness-library" and isinstance(model, Classifier)
    with pytest.raises(CheckpointError, match="normaliser"):
        model_from_file(tmp_path / "upload.pt", ModelInfo(**{**info.__dict__, "mean": list(IMAGENET_MEAN)}))


@pytest.fixture(scope="module")
def resnet50_madry(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A ResNet-50 in the robustness library's layout, random weights: built once for the module."""
    path = tmp_path_factory.mktemp("r50") / "imagenet_linf_4.pt"
    return path, save_resnet50_in_robustness_layout(path)


@pytest.mark.slow  # about 10 s on a shared CPU: a 200 MB file read, converted, written and re-read
def test_a_resnet50_in_robustness_library_layout_imports(
        tmp_path: Path, resnet50_madry: tuple[Path, torch.nn.Module]) -> None:
    source, net = resnet50_madry
    request = _request(arch="torchvision:resnet50", num_classes=1000, class_names=[],
                       input_size=(3, 224, 224), view=resize_crop_view(224))
    report = import_checkpoint(source, tmp_path / "r50.safetensors", request)
    assert report.converted.layout == "robustness-library" and len(report.converted.state) == 320
    loaded = load_checkpoint(tmp_path / "r50.safetensors")
    assert loaded.info.view == {"kind": "resize-crop", "resize": 256, "crop": 224}
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), Classifier(net, MADRY_MEAN, MADRY_STD).eval()(x),
                                   atol=1e-4, rtol=1e-4)
