"""Fast gradient sign method (Goodfellow et al., 2015), optionally with a random
start (Wong et al., 2020), L-inf and L2 (the L2 step follows g/||g||_2)."""

from __future__ import annotations

import torch
from torch import Tensor

from safespot.losses import Classifier, evaluate
from safespot.threat import (
    Norm,
    check_norm,
    per_sample,
    project_box,
    random_in_ball,
    steepest_direction,
)


def fgsm(
    model: Classifier,
    x: Tensor,
    y: Tensor,
    *,
    norm: Norm = "linf",
    eps: float | Tensor = 8 / 255,
    alpha: float | Tensor | None = None,
    random_start: bool = False,
    targeted: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One gradient step of size `alpha` (default eps) from x, or from a random
    point of the eps-ball when `random_start` (Wong et al. use alpha = 1.25 eps),
    projected back onto the eps-ball around x and [0, 1].

    Untargeted steps increase the cross-entropy of y; targeted steps decrease
    it (towards y).  Costs one forward+backward pass.  Returns x_adv like x.
    """
    norm = check_norm(norm)
    step = eps if alpha is None else alpha
    start = x.detach()
    if random_start:
        start = project_box(random_in_ball(start, eps, norm, generator), x, eps, norm)
    grad = evaluate(model, start, y).grad
    sign = -1.0 if targeted else 1.0
    moved = start + sign * per_sample(step, x) * steepest_direction(grad, norm)
    return project_box(moved, x, eps, norm).detach()
