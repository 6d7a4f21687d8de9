from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from safespot import SearchConfig, find_safe_spots
from safespot.attacks import pgd
from safespot.jpeg import jpeg_approx, quant_table
from safespot.publish import Reencode
from tests.conftest import PHOTOS


def pillow_jpeg(quality: int):
    def encode(image: torch.Tensor) -> torch.Tensor:
        arr = (image * 255).round().byte().permute(1, 2, 0).numpy()
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
        back = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        return torch.from_numpy(back.copy()).permute(2, 0, 1).to(image.dtype) / 255
    return encode


def test_quality_tables_follow_the_ijg_scaling() -> None:
    assert int(quant_table(50, False)[0, 0]) == 16  # quality 50 is the base table
    assert int(quant_table(100, True).max()) == 1
    assert bool((quant_table(10, False) >= quant_table(90, False)).all())


def test_surrogate_is_close_to_a_real_encoder_and_differentiable() -> None:
    photo = np.asarray(Image.open(PHOTOS / "chelsea.jpg").convert("RGB"))
    x = torch.from_numpy(photo.copy()).permute(2, 0, 1)[None].float() / 255
    real = pillow_jpeg(85)(x[0])[None]
    approx = jpeg_approx(x, 85)
    gap = float((approx - real).abs().mean() * 255)
    distortion = float((real - x).abs().mean() * 255)
    assert gap < distortion, (gap, distortion)  # nearer to the encoder than to the input
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(jpeg_approx(x, 85).sum(), x)
    assert float(grad.abs().sum()) > 0


def test_search_planning_for_a_reencode_verifies_the_published_image(tiny_model, test_images) -> None:
    x = test_images[0][:16]
    reencode = Reencode(quality=75, exact=pillow_jpeg(75))
    res = find_safe_spots(tiny_model, x, SearchConfig.preset("fast"), reencode=reencode)
    assert float((res.x_safe - x).abs().max()) <= 8 / 255 + 1e-6
    published = torch.stack([reencode.published(img) for img in res.x_safe])
    if res.found.any():
        attack = pgd(tiny_model, published[res.found], res.labels[res.found], steps=20,
                     generator=torch.Generator().manual_seed(99))
        assert float(attack.success.float().mean()) <= 0.2
