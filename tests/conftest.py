"""Shared fixtures: a real Redis server, the shipped test fixtures, a tiny model.

Redis: `REDIS_URL` when given (CI may point at its own server); otherwise a
throwaway `redis-server` on a free port, started once per session.  Tests
that need Redis and find neither fail loudly rather than skip.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bench.stack import REPO, RedisServer, free_port

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PHOTOS = FIXTURES / "photos"
TINY_MODEL = FIXTURES / "tiny.safetensors"
__all__ = ["FIXTURES", "PHOTOS", "REPO", "TINY_MODEL", "free_port"]


@pytest.fixture
def no_safespot_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read SAFESPOT_*; the developer's own environment must not leak in."""
    for name in list(os.environ):
        if name.startswith("SAFESPOT_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real Redis server (REDIS_URL, or a private one started here)."""
    given = os.environ.get("REDIS_URL")
    if given:
        yield given
        return
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture
def redis_conn(redis_url: str):
    """A client on a flushed database (each test starts empty)."""
    import redis

    conn = redis.Redis.from_url(redis_url)
    conn.flushdb()
    yield conn
    conn.flushdb()
    conn.close()


@pytest.fixture(scope="session")
def cifar_mini() -> dict[str, np.ndarray]:
    """400 train / 200 test JPEG-derived CIFAR-10 images (uint8 NHWC) with labels."""
    with np.load(FIXTURES / "cifar10_mini.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="session")
def tiny_checkpoint():
    """The small adversarially trained test model (models.checkpoint.LoadedCheckpoint)."""
    from models.checkpoint import load_checkpoint

    return load_checkpoint(TINY_MODEL)


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    return tiny_checkpoint.model


@pytest.fixture(scope="session")
def tiny_detector_checkpoint(tmp_path_factory: pytest.TempPathFactory, cifar_mini: dict[str, np.ndarray]) -> Path:
    """The tiny model with a stored layer-wise Mahalanobis OOD flag (as `safespot ood-calibrate
    --score mahalanobis` stores it): fitted on the 400 mini training images, its threshold
    keeping 95% of the first 100 mini test images unflagged."""
    import torch

    from models.checkpoint import load_checkpoint, save_checkpoint
    from models.ood_detector import (
        DEFAULT_MAX_LAYERS,
        MAHALANOBIS_SCORE,
        describe_detector,
        detector_score,
    )
    from safespot.ood import LayerwiseMahalanobis, layer_features, threshold_for_tpr
    from training.data import to_tensor

    ck = load_checkpoint(TINY_MODEL)
    layers = layer_features(ck.model, to_tensor(cifar_mini["x_train"]), max_layers=DEFAULT_MAX_LAYERS)[1]
    detector = LayerwiseMahalanobis.fit(layers, torch.from_numpy(cifar_mini["y_train"]))
    val = detector_score(ck.model, detector, to_tensor(cifar_mini["x_test"][:100]), DEFAULT_MAX_LAYERS)
    ck.info.ood = {"score": MAHALANOBIS_SCORE, "threshold": threshold_for_tpr(val, 0.95),
                   "detector": describe_detector(detector, DEFAULT_MAX_LAYERS)}
    path = tmp_path_factory.mktemp("detector") / "tiny-mahalanobis.safetensors"
    save_checkpoint(ck.model, ck.info, path, ood_detector=detector)
    return path
