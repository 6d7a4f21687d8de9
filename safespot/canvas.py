"""Canvas batches: images of different sizes searched together.

Image i of a canvas batch fills ``canvas[i, :C, :H, :W]`` for its own size
(C, H, W); the rest is zero padding that the classifier's view never reads,
so its gradient is zero and it never moves.  The classifier sees each image
through a *view*: crop, grey to RGB, and a differentiable antialiased resize
to the model's input size, while the perturbation lives at full resolution.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

Size = tuple[int, ...]


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


def map_rows(fn: Callable[[Tensor], Tensor], rows: Tensor, sizes: Sequence[Size]) -> Tensor:
    """Apply `fn` to each image's own region of a canvas batch; padding stays zero."""
    out = torch.zeros_like(rows)
    for i, size in enumerate(sizes):
        region = tuple(slice(0, s) for s in size)
        out[i][region] = fn(rows[i][region])
    return out
