"""Threat models: budgets, projections and the 8-bit pixel grid.

Images are float tensors in pixel space [0, 1], shape (N, ...) with the batch
first.  Budgets are in pixel units (8/255 for L-inf, 0.5 for L2), never in
normalised units: normalisation belongs inside the model.

A budget may be a float (same for every image) or a tensor of shape (N,)
(one per image), so that images with different budgets share a batch.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Norm = Literal["linf", "l2"]
NORMS: tuple[Norm, ...] = ("linf", "l2")

PIXEL_LEVELS = 255  # 8-bit images: values k / 255, k = 0..255
_GRID_TOLERANCE = 1e-3  # in units of one 8-bit level; float32 ToTensor() is well within it
_TINY = 1e-12  # guards divisions by a zero norm


def check_norm(norm: str) -> Norm:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return norm


def per_sample(value: float | Tensor, x: Tensor) -> Tensor:
    """A budget as a tensor of shape (N, 1, 1, ...) broadcastable against x."""
    v = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    if v.ndim == 0:
        v = v.expand(x.shape[0])
    return v.reshape(-1, *([1] * (x.ndim - 1)))


def flat_norm(d: Tensor, norm: Norm) -> Tensor:
    """Per-sample norm of d (N, ...) -> (N,)."""
    flat = d.flatten(1)
    if norm == "linf":
        return flat.abs().amax(dim=1)
    return flat.norm(p=2, dim=1)


def project(x: Tensor, center: Tensor, radius: float | Tensor, norm: Norm) -> Tensor:
    """Project x onto the ball of `radius` around `center` (no [0,1] clipping)."""
    r = per_sample(radius, x)
    d = x - center
    if norm == "linf":
        return center + torch.maximum(torch.minimum(d, r), -r)
    length = per_sample(flat_norm(d, "l2"), x)
    scale = torch.clamp(r / (length + _TINY), max=1.0)
    return center + d * scale


def project_box(x: Tensor, center: Tensor, radius: float | Tensor, norm: Norm) -> Tensor:
    """Project onto the ball around `center`, then clip to the [0,1] image box.

    For L-inf this is the exact projection onto the intersection; for L2 it is
    the usual PGD approximation (clipping can only shrink the distance, so the
    result stays inside the ball).
    """
    return project(x, center, radius, norm).clamp_(0.0, 1.0)


def steepest_direction(grad: Tensor, norm: Norm) -> Tensor:
    """Unit-size steepest-ascent direction: sign(g) for L-inf, g/||g||_2 for L2."""
    if norm == "linf":
        return grad.sign()
    return grad / (per_sample(flat_norm(grad, "l2"), grad) + _TINY)


def random_in_ball(
    center: Tensor, radius: float | Tensor, norm: Norm, generator: torch.Generator | None = None
) -> Tensor:
    """A uniform random point of the ball around `center` (not clipped).

    L-inf: uniform in the cube.  L2: uniform in the ball (direction from a
    Gaussian, radius r * U^(1/d)).
    """
    r = per_sample(radius, center)
    if norm == "linf":
        u = torch.rand(center.shape, generator=generator, device=center.device, dtype=center.dtype)
        return center + (2 * u - 1) * r
    g = torch.randn(center.shape, generator=generator, device=center.device, dtype=center.dtype)
    g = g / (per_sample(flat_norm(g, "l2"), g) + _TINY)
    dims = center[0].numel()
    u = torch.rand(
        (center.shape[0],), generator=generator, device=center.device, dtype=center.dtype
    )
    return center + g * r * per_sample(u ** (1.0 / dims), center)


def on_pixel_grid(x: Tensor) -> Tensor:
    """Per sample: are all values of x on the 8-bit grid k/255 within [0,1]? -> (N,) bool."""
    scaled = x * PIXEL_LEVELS
    off = (scaled - scaled.round()).abs().flatten(1).amax(dim=1)
    inside = (x >= 0).flatten(1).all(dim=1) & (x <= 1).flatten(1).all(dim=1)
    return (off <= _GRID_TOLERANCE) & inside


def snap_to_grid(x: Tensor) -> Tensor:
    """Round to the nearest 8-bit value (for inputs known to be 8-bit images)."""
    return (x * PIXEL_LEVELS).round().div_(PIXEL_LEVELS).clamp_(0.0, 1.0)


def quantize_toward(x: Tensor, center: Tensor) -> Tensor:
    """Round x to 8-bit pixel values while keeping it inside the budget.

    `center` must be on the 8-bit grid (a decoded image is).  Each value is
    rounded to whichever neighbouring grid value lies closer to `center`
    (`floor` above it, `ceil` below it), so every coordinate of the
    perturbation shrinks in magnitude: the result is never farther from
    `center` than x in any Lp norm, and it stays in [0,1].  Rounding to the
    nearest value instead could push an L2 perturbation past its budget.
    The one exception is float noise: a value within `_GRID_TOLERANCE` of a
    grid value is taken to be that value (so k/255 in float32 stays k/255),
    which may move it away from `center` by at most that tolerance.
    """
    levels = x * PIXEL_LEVELS
    anchor = snap_to_grid(center) * PIXEL_LEVELS
    down = torch.floor(levels + _GRID_TOLERANCE)
    up = torch.ceil(levels - _GRID_TOLERANCE)
    rounded = torch.where(levels >= anchor, down, up)
    return rounded.clamp_(0, PIXEL_LEVELS).div_(PIXEL_LEVELS)


def psnr(x: Tensor, reference: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB per sample (inf for identical images)."""
    mse = (x - reference).flatten(1).pow(2).mean(dim=1)
    return 10 * torch.log10(1.0 / mse)
