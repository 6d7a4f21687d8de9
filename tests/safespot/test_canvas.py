"""The views: what the classifier sees of a full-resolution upload (safespot/canvas.py)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.functional import pil_to_tensor

from safespot.canvas import (
    ResizeCropView,
    ResizeView,
    check_view,
    describe_view,
    make_view,
    stack_canvas,
)
from tests.conftest import PHOTOS

IMAGENET_EVAL = v2.Compose([v2.Resize(256), v2.CenterCrop(224)])


def _photo(name: str) -> tuple[Image.Image, torch.Tensor]:
    img = Image.open(PHOTOS / name).convert("RGB")
    return img, pil_to_tensor(img).float() / 255


@pytest.mark.parametrize("name", ["chelsea.jpg", "coffee.webp", "astronaut.png"])
def test_resize_crop_is_torchvisions_resize_then_centre_crop(name: str) -> None:
    img, x = _photo(name)
    canvas, sizes = stack_canvas([x])
    seen = ResizeCropView(256, 224)(canvas, sizes)[0]
    assert seen.shape == (3, 224, 224)
    # the same arithmetic as torchvision's tensor transforms (sizes, rounding, antialiasing) ...
    torch.testing.assert_close(seen, IMAGENET_EVAL(x), atol=1e-5, rtol=0)
    # ... and within a level or so of the PIL pipeline most ImageNet models were evaluated with
    via_pil = pil_to_tensor(IMAGENET_EVAL(img)).float() / 255
    assert (seen - via_pil).abs().max() < 2 / 255 and (seen - via_pil).abs().mean() < 0.5 / 255


def test_resize_crop_of_a_canvas_batch_reads_each_image_at_its_own_size() -> None:
    (_, portrait), (_, landscape) = _photo("astronaut.png"), _photo("chelsea.jpg")
    portrait = portrait[:, :, :300]  # 384x300: the shorter side is the width
    canvas, sizes = stack_canvas([portrait, landscape, landscape[:1]])  # and a grey one
    seen = ResizeCropView(256, 224)(canvas, sizes)
    torch.testing.assert_close(seen[0], IMAGENET_EVAL(portrait), atol=1e-5, rtol=0)
    torch.testing.assert_close(seen[1], IMAGENET_EVAL(landscape), atol=1e-5, rtol=0)
    torch.testing.assert_close(seen[2], IMAGENET_EVAL(landscape[:1]).expand(3, -1, -1), atol=1e-5, rtol=0)


def test_gradients_reach_full_resolution_pixels_inside_the_crop_only() -> None:
    _, x = _photo("chelsea.jpg")  # 300x451: resized to 256x384, crop columns 80..304
    view = ResizeCropView(256, 224)
    canvas, sizes = stack_canvas([x])
    canvas.requires_grad_(True)
    weights = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)) + 0.1
    (view(canvas, sizes) * weights).sum().backward()
    grad = canvas.grad[0].abs().sum(0)  # (300, 451)
    scale = 451 / 384  # full-resolution pixels per resized pixel
    top, left = view.crop_box(300, 451)
    assert (top, left) == (16, 80)
    first, last = int(left * scale), int((left + 224) * scale)  # the crop's footprint: columns 93..357
    top_row, bottom_row = int(top * scale), int((top + 224) * scale)  # rows 18..281
    support = int(scale) + 2  # the antialiasing filter reaches this far past it
    inside = grad[top_row + support:bottom_row - support, first + support:last - support]
    assert bool((inside > 0).all())  # every pixel the model reads can move
    for outside in (grad[:, :first - support], grad[:, last + support:],
                    grad[:top_row - support], grad[bottom_row + support:]):
        assert outside.numel() and float(outside.max()) == 0.0  # the rest never does


def test_make_view_builds_what_the_checkpoint_names() -> None:
    assert isinstance(make_view(None, (3, 32, 32)), ResizeView)
    assert isinstance(make_view({"kind": "resize"}, (3, 32, 32)), ResizeView)
    crop = make_view({"kind": "resize-crop", "resize": 256, "crop": 224}, (3, 224, 224))
    assert isinstance(crop, ResizeCropView) and crop.input_size == (224, 224)
    assert describe_view(None, (3, 32, 32)) == "whole image resized to 32x32"
    assert "centre 224x224 crop" in describe_view({"kind": "resize-crop", "resize": 256, "crop": 224},
                                                  (3, 224, 224))


@pytest.mark.parametrize(("spec", "message"), [
    ({"kind": "zoom"}, "unknown view"),
    ("resize", "unknown view"),
    ({"kind": "resize", "crop": 3}, "takes only"),
    ({"kind": "resize-crop", "resize": 256}, "integer"),
    ({"kind": "resize-crop", "resize": True, "crop": 224}, "integer"),
    ({"kind": "resize-crop", "resize": 200, "crop": 224}, "crop <= resize"),
    ({"kind": "resize-crop", "resize": 256, "crop": 192}, "model takes 224x224"),
])
def test_views_that_do_not_fit_the_model_are_refused(spec: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_view(spec, (3, 224, 224))  # type: ignore[arg-type]
