from __future__ import annotations

import pytest
import torch

from models.architectures import ARCHITECTURES, NATIVE_INPUT, build_network


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
