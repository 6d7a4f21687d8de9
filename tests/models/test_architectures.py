from __future__ import annotations

import pytest
import torch

from models.architectures import (
    ARCHITECTURES,
    NATIVE_INPUT,
    build_network,
    check_architecture,
    native_input,
)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_builds_and_runs_at_its_native_size(arch: str) -> None:
    kwargs = {"widen_factor": 1, "depth": 10} if arch == "wide_resnet" else {}
    net = build_network(arch, num_classes=7, **kwargs).eval()
    with torch.no_grad():
        out = net(torch.rand(1, *NATIVE_INPUT[arch]))
    assert out.shape == (1, 7)


def test_wrn_34_10_is_the_papers_size() -> None:
    net = build_network("wide_resnet", num_classes=10, depth=34, widen_factor=10)
    params = sum(p.numel() for p in net.parameters())
    assert 46_000_000 < params < 46_300_000


def test_unknown_architecture_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="cifar_cnn"):
        build_network("lenet")


@pytest.mark.parametrize(("arch", "size"), [("timm:test_resnet", 64), ("timm:test_vit", 64),
                                            ("torchvision:resnet18", 64)])
def test_library_architectures_build_by_name_at_any_size(arch: str, size: int) -> None:
    kwargs = {"img_size": size} if "vit" in arch else {}  # a ViT's positions are built for its size
    net = build_network(arch, num_classes=5, **kwargs).eval()
    with torch.no_grad():
        assert net(torch.rand(2, 3, size, size)).shape == (2, 5)


def test_library_architectures_never_download_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    import timm.models._builder as timm_builder
    import torchvision.models._api as tv_api

    def no_download(*args, **kwargs):
        raise AssertionError("tried to load pretrained weights")

    monkeypatch.setattr(timm_builder, "load_pretrained", no_download)
    monkeypatch.setattr(tv_api.WeightsEnum, "get_state_dict", no_download)
    build_network("timm:test_resnet", num_classes=3)
    build_network("torchvision:resnet18", num_classes=3)


@pytest.mark.parametrize(("arch", "message"), [("timm:resnet_nope", "timm has no"),
                                               ("torchvision:fasterrcnn_resnet50_fpn", "torchvision has no"),
                                               ("timm:", "timm has no"), ("keras:resnet50", "timm:<name>")])
def test_unknown_library_names_are_refused(arch: str, message: str) -> None:
    with pytest.raises(KeyError, match=message):
        check_architecture(arch)


@pytest.mark.parametrize("args", [{"pretrained": True}, {"checkpoint_path": "/etc/passwd"},
                                  {"pretrained_cfg_overlay": {"file": "x"}}, {"drop_rate": [0.1, "x"]}])
def test_a_checkpoint_cannot_pass_loading_arguments_to_a_library(args: dict) -> None:
    with pytest.raises(ValueError, match=r"not allowed|not a plain"):
        build_network("timm:test_resnet", num_classes=3, **args)
    with pytest.raises(ValueError, match="not allowed"):
        check_architecture("torchvision:resnet18", {"weights": "DEFAULT"})


def test_native_input_comes_from_the_library_or_imagenet() -> None:
    assert native_input("cifar_cnn") == (3, 32, 32)
    assert native_input("timm:resnet18") == (3, 224, 224)
    assert native_input("timm:vit_base_patch16_384") == (3, 384, 384)
    assert native_input("torchvision:resnet18") == (3, 224, 224)
