"""Projected gradient descent (Madry et al., 2018), L-inf and L2, with restarts.

Untargeted PGD maximises the cross-entropy of the true label y; targeted PGD
minimises the cross-entropy of a target label (the safe-spot baselines step
*towards* the predicted label this way).  Steps are taken in pixel space and
projected onto the eps-ball around the clean image and onto [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from safespot.losses import Classifier, evaluate, passes_per_call
from safespot.threat import (
    Norm,
    check_norm,
    per_sample,
    project_box,
    random_in_ball,
    steepest_direction,
)


@dataclass(frozen=True)
class AttackResult:
    x_adv: Tensor  # like x, in [0, 1], inside the eps-ball around x
    success: Tensor  # (N,) bool: untargeted: prediction != y; targeted: prediction == target
    loss: Tensor  # (N,) cross-entropy at x_adv against the attacked label
    grad_evals: int  # forward+backward passes spent (per image, all restarts)


def pgd(
    model: Classifier,
    x: Tensor,
    y: Tensor,
    *,
    norm: Norm = "linf",
    eps: float | Tensor = 8 / 255,
    alpha: float | Tensor | None = None,
    steps: int = 20,
    random_start: bool = True,
    restarts: int = 1,
    targeted: bool = False,
    stop_on_success: bool = True,
    generator: torch.Generator | None = None,
) -> AttackResult:
    """Run PGD from each image of x (N, C, H, W) against labels y (N,).

    Args:
        eps: budget in pixel units, a float or a (N,) tensor.
        alpha: step size; default eps/4 (the paper's evaluation protocol).
        restarts: independent random starts; per image the strongest is kept
            (a successful one first, then the one with the worst loss).
        stop_on_success: untargeted only: an image whose iterate is already
            misclassified keeps that iterate (an attack that once succeeded
            counts as successful, which is never weaker than reading only the
            last iterate).
        generator: source of the random starts.

    Each step costs one forward+backward pass; a final pass scores the last
    iterate, so one restart costs `steps + 1` passes.
    """
    norm = check_norm(norm)
    step = eps / 4 if alpha is None else alpha
    sign = -1.0 if targeted else 1.0
    freeze = stop_on_success and not targeted
    best_x = x.detach().clone()
    best_loss = torch.full((x.shape[0],), -torch.inf, device=x.device, dtype=x.dtype)
    best_success = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)

    for _ in range(restarts):
        x_adv = x.detach().clone()
        if random_start:
            x_adv = project_box(random_in_ball(x, eps, norm, generator), x, eps, norm)
        done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for t in range(steps + 1):
            ev = evaluate(model, x_adv, y)
            hit = ev.pred == y if targeted else ev.pred != y
            if freeze:
                done |= hit
            if t == steps or (freeze and bool(done.all())):
                break
            moved = project_box(
                x_adv + sign * per_sample(step, x) * steepest_direction(ev.grad, norm), x, eps, norm
            )
            keep = done.view(-1, *([1] * (x.ndim - 1)))
            x_adv = torch.where(keep, x_adv, moved)
        # Keep this restart where it is stronger: success first, then a worse loss for the label.
        score = ev.loss * sign
        better = (hit & ~best_success) | ((hit == best_success) & (score > best_loss))
        best_x[better] = x_adv[better]
        best_loss = torch.where(better, score, best_loss)
        best_success |= hit
    return AttackResult(
        best_x, best_success, best_loss * sign, restarts * (steps + 1) * passes_per_call(model)
    )

