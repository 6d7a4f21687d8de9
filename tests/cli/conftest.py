"""Fixtures shared by the CLI tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def test_set(tmp_path_factory: pytest.TempPathFactory, cifar_mini: dict[str, np.ndarray]) -> Path:
    """The 200 test images of the CIFAR-10 fixture as an .npz that --data takes."""
    path = tmp_path_factory.mktemp("eval") / "test.npz"
    np.savez(path, x=cifar_mini["x_test"], y=cifar_mini["y_test"])
    return path
