"""Canvas batches: images of different sizes searched together.

Image i of a canvas batch fills ``canvas[i, :C, :H, :W]`` for its own size
(C, H, W); the rest is zero padding that the classifier's view never reads,
so its gradient is zero and it never moves.  The classifier sees each image
through a *view*, while the perturbation lives at full resolution.  A
checkpoint names its view (``ModelInfo.view``; :func:`make_view` builds it):

- ``{"kind": "resize"}``: the whole image resized to the input size (aspect
  ratio not kept): :class:`ResizeView`;
- ``{"kind": "resize-crop", "resize": 256, "crop": 224}``: ImageNet's
  evaluation transform, shorter side resized to ``resize`` (aspect ratio
  kept), then the centre ``crop`` x ``crop`` square: :class:`ResizeCropView`.

Both crop each image to its own size, repeat grey to three channels and use
antialiased bilinear interpolation (as torchvision's tensor transforms do), so
they are differentiable and a gradient reaches every full-resolution pixel the
model reads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from safespot.threat import Norm, random_in_ball

Size = tuple[int, ...]

RESIZE = "resize"
RESIZE_CROP = "resize-crop"
VIEW_KINDS = (RESIZE, RESIZE_CROP)
DEFAULT_VIEW: dict[str, Any] = {"kind": RESIZE}  # what checkpoints without a view were searched with


def cat_rows(a: Tensor, b: Tensor) -> Tensor:
    """Concatenate along rows, zero-padding trailing dimensions to the larger canvas."""
    if a.shape[1:] != b.shape[1:]:
        shape = [max(p, q) for p, q in zip(a.shape[1:], b.shape[1:], strict=True)]
        a, b = (_pad(t, shape) for t in (a, b))
    return torch.cat([a, b])


def _pad(t: Tensor, shape: list[int]) -> Tensor:
    pads: list[int] = []
    for have, want in zip(reversed(t.shape[1:]), reversed(shape), strict=True):
        pads += [0, want - have]
    return F.pad(t, pads) if any(pads) else t


def stack_canvas(images: Sequence[Tensor]) -> tuple[Tensor, list[Size]]:
    """Stack (C, H, W) images of any sizes into one zero-padded canvas batch."""
    sizes = [tuple(img.shape) for img in images]
    shape = [max(s[d] for s in sizes) for d in range(len(sizes[0]))]
    return torch.stack([_pad(img[None], shape)[0] for img in images]), sizes


def crop(canvas_row: Tensor, size: Size) -> Tensor:
    return canvas_row[tuple(slice(0, s) for s in size)]


class ResizeView:
    """What the classifier sees of full-resolution images.

    Maps a canvas batch and its sizes to a (N, 3, H_in, W_in) model input:
    each image is cropped to its size, grey images are repeated to three
    channels, and the result is resized with antialiased bilinear
    interpolation (differentiable, so gradients reach every full-resolution
    pixel).  Images already at the input size pass through untouched.
    """

    def __init__(self, input_size: tuple[int, int]) -> None:
        self.input_size = tuple(input_size)

    def __call__(self, canvas: Tensor, sizes: Sequence[Size]) -> Tensor:
        if all(tuple(s) == (3, *self.input_size) for s in sizes) and canvas.shape[1:] == (3, *self.input_size):
            return canvas
        views = []
        for row, size in zip(canvas, sizes, strict=True):
            img = crop(row, size)
            if img.shape[0] == 1:
                img = img.expand(3, -1, -1)
            if tuple(img.shape[1:]) != self.input_size:
                img = F.interpolate(img[None], size=self.input_size, mode="bilinear",
                                    align_corners=False, antialias=True)[0]
            views.append(img)
        return torch.stack(views)


class ResizeCropView:
    """ImageNet's evaluation view: torchvision's ``Resize(resize)`` then ``CenterCrop(crop)``.

    The shorter side goes to ``resize`` (the longer one to
    ``int(resize * long / short)``, as torchvision computes it), with
    antialiased bilinear interpolation, then the centre ``crop`` x ``crop``
    square is taken (its corner rounded as torchvision rounds it).  Pixels
    outside the crop's footprint get no gradient: the search leaves them as
    they were.  ``crop <= resize``, so the crop always fits.
    """

    def __init__(self, resize: int, crop: int) -> None:
        if not 1 <= crop <= resize:
            raise ValueError(f"resize-crop needs 1 <= crop <= resize, got resize={resize}, crop={crop}")
        self.resize, self.crop = int(resize), int(crop)
        self.input_size = (self.crop, self.crop)

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        short, long = min(height, width), max(height, width)
        new_long = int(self.resize * long / short)
        return (self.resize, new_long) if height <= width else (new_long, self.resize)

    def crop_box(self, height: int, width: int) -> tuple[int, int]:
        """(top, left) of the crop in the resized image."""
        rh, rw = self.resized_size(height, width)
        return round((rh - self.crop) / 2.0), round((rw - self.crop) / 2.0)  # banker's, as torchvision

    def __call__(self, canvas: Tensor, sizes: Sequence[Size]) -> Tensor:
        views = []
        for row, size in zip(canvas, sizes, strict=True):
            img = crop(row, size)
            if img.shape[0] == 1:
                img = img.expand(3, -1, -1)
            height, width = img.shape[-2:]
            resized = self.resized_size(height, width)
            if resized != (height, width):
                img = F.interpolate(img[None], size=resized, mode="bilinear",
                                    align_corners=False, antialias=True)[0]
            top, left = self.crop_box(height, width)
            views.append(img[:, top:top + self.crop, left:left + self.crop])
        return torch.stack(views)


def check_view(spec: Mapping[str, Any], input_size: Sequence[int]) -> None:
    """ValueError unless `spec` is a view this module implements and fits the model's
    (C, H, W) input size."""
    kind = spec.get("kind") if isinstance(spec, Mapping) else None
    if kind not in VIEW_KINDS:
        raise ValueError(f"unknown view {spec!r}; kinds: {list(VIEW_KINDS)}")
    allowed = {"kind"} if kind == RESIZE else {"kind", "resize", "crop"}
    if set(spec) - allowed:
        raise ValueError(f"view {kind!r} takes only {sorted(allowed)}, got {sorted(spec)}")
    if kind == RESIZE_CROP:
        resize, crop_side = spec.get("resize"), spec.get("crop")
        if not (_is_int(resize) and _is_int(crop_side)):
            raise ValueError(f"view {kind!r} needs integer 'resize' and 'crop', got {dict(spec)}")
        if not 1 <= int(crop_side) <= int(resize) <= 8192:  # type: ignore[arg-type]
            raise ValueError(f"view {kind!r} needs 1 <= crop <= resize <= 8192, got {dict(spec)}")
        if tuple(input_size[-2:]) != (crop_side, crop_side):
            raise ValueError(f"view crops {crop_side}x{crop_side} but the model takes "
                             f"{input_size[-2]}x{input_size[-1]}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not a size


def make_view(spec: Mapping[str, Any] | None, input_size: Sequence[int]) -> ResizeView | ResizeCropView:
    """The view a checkpoint names (None: the whole-image resize) for its (C, H, W) input size."""
    spec = dict(spec or DEFAULT_VIEW)
    check_view(spec, input_size)
    if spec["kind"] == RESIZE_CROP:
        return ResizeCropView(spec["resize"], spec["crop"])
    return ResizeView(tuple(input_size[-2:]))  # type: ignore[arg-type]


def describe_view(spec: Mapping[str, Any] | None, input_size: Sequence[int]) -> str:
    """One line a person reads: what part of the upload the classifier sees, and how."""
    spec = dict(spec or DEFAULT_VIEW)
    if spec["kind"] == RESIZE_CROP:
        side = spec["crop"]
        return f"shorter side resized to {spec['resize']}, centre {side}x{side} crop"
    return "whole image resized to " + "x".join(str(s) for s in input_size[-2:])


def map_rows(fn: Callable[[Tensor], Tensor], rows: Tensor, sizes: Sequence[Size]) -> Tensor:
    """Apply `fn` to each image's own region of a canvas batch; padding stays zero."""
    out = torch.zeros_like(rows)
    for i, size in enumerate(sizes):
        region = tuple(slice(0, s) for s in size)
        out[i][region] = fn(rows[i][region])
    return out


def ball_point(center: Tensor, size: tuple[int, ...], radius: float, norm: Norm,
               generator: torch.Generator, surface: bool = False) -> Tensor:
    """A random point of the ball (or, for L2, its sphere) around one canvas image,
    drawn on the image's own region; the padding stays as it is."""
    region = tuple(slice(0, s) for s in size)
    out = center.clone()
    own = center[region]
    if surface:
        d = torch.randn(own.shape, generator=generator, device=own.device, dtype=own.dtype)
        out[region] = own + d * (radius / d.norm())
    else:
        out[region] = random_in_ball(own[None], radius, norm, generator)[0]
    return out
