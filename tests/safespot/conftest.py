from __future__ import annotations

import copy

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> None:
    # CI has two cores; the tiny model is fastest on one thread and the suite stays quiet.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def test_images(cifar_mini: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """The 200 fixture test images as [0,1] float NCHW (exact 8-bit values) and labels."""
    x = torch.from_numpy(cifar_mini["x_test"]).permute(0, 3, 1, 2).contiguous().float() / 255
    return x, torch.from_numpy(cifar_mini["y_test"])


@pytest.fixture(scope="session")
def tiny_model64(tiny_model: torch.nn.Module) -> torch.nn.Module:
    """The tiny model in float64: bit-stable enough to compare batched with unbatched runs."""
    return copy.deepcopy(tiny_model).double().eval()
