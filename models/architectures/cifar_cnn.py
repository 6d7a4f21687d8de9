"""A small CPU-friendly CIFAR network: three stages of two 3x3 conv+BN+ReLU
layers, max-pooling between stages, then two linear layers."""

from __future__ import annotations

from torch import Tensor, nn


def _conv(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class CifarCNN(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 32, hidden: int = 256, in_channels: int = 3) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_conv(in_channels, w), *_conv(w, w), nn.MaxPool2d(2),
            *_conv(w, 2 * w), *_conv(2 * w, 2 * w), nn.MaxPool2d(2),
            *_conv(2 * w, 4 * w), *_conv(4 * w, 4 * w), nn.AdaptiveMaxPool2d(4),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(4 * w * 16, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
