"""The shipped OOD model's verdict through the worker's own search (issue 5).

`models/zoo/ood.safetensors` was trained with outliers (gamma 1.0, lambda
0.3) and calibrated (`safespot ood-calibrate`, `fast` preset: mu and the
threshold for 95% TPR on held-out training images).  Served with it,
Gaussian-noise uploads must be flagged and CIFAR-10 test images mostly not.
(The `cifar10` model, trained without outliers, calls such noise "frog" with
~80% confidence and does not flag it: docs/ood.md.)
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from models.checkpoint import load_checkpoint
from tests.worker.conftest import cifar_png, filter_request, png_bytes
from worker.processor import FilterProcessor, build_processor

OOD_MODEL = "models/zoo/ood.safetensors"


@pytest.fixture(scope="module")
def ood_processor() -> FilterProcessor:
    from tests.conftest import REPO
    loaded = load_checkpoint(REPO / OOD_MODEL)
    assert loaded.info.ood.get("threshold") is not None, "the shipped OOD model must be calibrated"
    assert loaded.info.ood["search"]["preset"] == "fast"
    return build_processor(None, loaded, "ood", max_batch=32)


def _flags(processor: FilterProcessor, uploads: list[bytes]) -> list[bool]:
    for i, data in enumerate(uploads):
        processor.add(f"j{i}", filter_request(f"j{i}", preset="fast"), data)  # the calibration's preset
    done = sorted(processor.drain(), key=lambda d: int(d.job_id[1:]))
    assert all(d.error is None for d in done)
    return [bool(d.result["ood_flag"]) for d in done]


def test_gaussian_noise_is_flagged_and_cifar_test_images_mostly_are_not(ood_processor, cifar_mini) -> None:
    rng = np.random.default_rng(7)
    noise = [png_bytes(Image.fromarray(np.clip(rng.normal(127.5, 64, (32, 32, 3)), 0, 255).astype(np.uint8)))
             for _ in range(24)]
    cifar = [cifar_png(cifar_mini, i) for i in range(0, 200, 8)]  # 25 test images
    noise_flags = _flags(ood_processor, noise)
    cifar_flags = _flags(ood_processor, cifar)
    print(f"flagged: noise {sum(noise_flags)}/24, CIFAR-10 test {sum(cifar_flags)}/25")
    # Measured with the shipped `ood` of 2026-12-07: 20/24 noise and 1/25 test images flagged;
    # the score's AUROC on 1,000 noise images is in docs/ood.md.
    assert sum(noise_flags) >= 16, noise_flags  # at least 2 in 3 noise uploads flagged
    assert sum(cifar_flags) <= 6, cifar_flags   # at most 1 in 4 test images (the threshold keeps 95% on held-out images)
