"""Classifier architectures, rebuilt by name from a checkpoint's metadata.

Every builder returns a network taking *normalised* inputs; `models.build`
puts the :class:`~models.normalize.Normalize` layer in front, so the full
model takes [0,1] pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from models.architectures.cifar_cnn import CifarCNN
from models.architectures.preact_resnet import PreActResNet18
from models.architectures.wide_resnet import WideResNet

Builder = Callable[..., nn.Module]


def _resnet50(num_classes: int = 1000) -> nn.Module:
    # torchvision's ResNet-50 without downloaded weights: users load their own state dict.
    from torchvision.models import resnet50

    return resnet50(weights=None, num_classes=num_classes)


ARCHITECTURES: dict[str, Builder] = {
    "cifar_cnn": CifarCNN,
    "preact_resnet18": PreActResNet18,
    "wide_resnet": WideResNet,
    "resnet50": _resnet50,
}

# Input size (C, H, W) each architecture was designed for.
NATIVE_INPUT: dict[str, tuple[int, int, int]] = {
    "cifar_cnn": (3, 32, 32),
    "preact_resnet18": (3, 32, 32),
    "wide_resnet": (3, 32, 32),
    "resnet50": (3, 224, 224),
}


def build_network(arch: str, **kwargs: Any) -> nn.Module:
    if arch not in ARCHITECTURES:
        raise KeyError(f"unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](**kwargs)
