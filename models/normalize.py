"""Normalisation as the model's first layer: the model takes [0,1] pixels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """(x - mean) / std per channel; budgets stay in pixel units outside the model."""

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward hands back a contiguous gradient.

    The network runs channels-last, so the input gradient would come back
    channels-last too; callers (and libraries such as torchattacks, which
    `.view` gradients) expect the layout of the tensor they passed in.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:
        return grad.contiguous()


class Classifier(nn.Module):
    """Normalize + network.  Runs in channels-last layout (faster convolutions on
    CPU and on tensor cores); callers pass ordinary NCHW tensors.  Set
    ``channels_last = False`` (and convert the weights) to run in NCHW."""

    channels_last = True

    def __init__(self, network: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.network = network

    def forward(self, x: Tensor) -> Tensor:
        if x.requires_grad:
            x = _ContiguousGrad.apply(x)
        x = self.normalize(x)
        if x.ndim == 4:  # callers' tensors come in either layout (an NHWC array's view is channels-last)
            x = x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        return self.network(x)
