"""Checkpoints in other people's layouts, for the importer's tests and the upload's end-to-end
test (tests/cli/test_serve_imported_resnet50.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

# the CIFAR-10 normaliser of the robustness library's own models
MADRY_MEAN, MADRY_STD = [0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616]


def prefixed(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {prefix + k: v for k, v in state.items()}


def stat(values: Sequence[float], shape: tuple[int, ...]) -> Tensor:
    return torch.tensor(list(values)).view(shape)


def robustness_library(state: dict[str, Tensor], mean: Sequence[float] = MADRY_MEAN,
                       std: Sequence[float] = MADRY_STD) -> dict[str, Any]:
    """What robustness.train saves: the AttackerModel's state dict (normaliser, model, and the
    attacker's copy of both) beside the optimiser's state and the epoch."""
    weights = {**prefixed(state, "module.model."), **prefixed(state, "module.attacker.model."),
               "module.normalizer.new_mean": stat(mean, (3, 1, 1)),
               "module.normalizer.new_std": stat(std, (3, 1, 1)),
               "module.attacker.normalize.new_mean": stat(mean, (3, 1, 1)),
               "module.attacker.normalize.new_std": stat(std, (3, 1, 1))}
    return {"model": weights, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]},
            "schedule": None, "epoch": 90}


def save_resnet50_in_robustness_layout(path: Path, mean: Sequence[float] = MADRY_MEAN,
                                       std: Sequence[float] = MADRY_STD, seed: int = 0) -> torch.nn.Module:
    """A torchvision ResNet-50 (1000 classes) with seeded random weights, saved at `path` as the
    robustness library would (~200 MB with the attacker's copy); returns the network."""
    from models.architectures import build_network

    torch.manual_seed(seed)
    net = build_network("torchvision:resnet50", num_classes=1000).eval()
    torch.save(robustness_library(net.state_dict(), mean, std), path)
    return net
