"""Update rules of the outer minimisation over the safe spot x_s.

- ``pgd``: projected steepest descent, x_s <- Proj(x_s - beta * dir(g)) with
  dir = sign for L-inf and g/||g||_2 for L2 (the paper's Algorithm 1).
- ``sgd``: projected plain gradient descent, x_s <- Proj(x_s - beta * g) (the
  authors' L2 code).
- ``rmsprop-tanh``: the authors' L-inf code.  x_s = lo + (hi - lo)(tanh w + 1)/2
  with lo/hi the L-inf ball clipped to [0,1], so every w is feasible; w is
  optimised with RMSprop (PyTorch's defaults: alpha 0.99, eps 1e-8).

Proj is the projection onto B_delta(x_o) ∩ [0,1].  Optimiser state is kept
per image (rows), so images can join and leave the batch at any time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from safespot.canvas import cat_rows
from safespot.config import SearchConfig
from safespot.threat import project_box, steepest_direction

RMSPROP_ALPHA = 0.99
RMSPROP_EPS = 1e-8
_ATANH_LIMIT = 1 - 1e-6  # keeps atanh finite for points on the box faces


@dataclass
class OuterState:
    """Per-image optimiser state (empty for the stateless rules)."""

    w: Tensor | None = None  # tanh parameter
    square_avg: Tensor | None = None
    lo: Tensor | None = None
    hi: Tensor | None = None

    def select(self, idx: Tensor) -> OuterState:
        return OuterState(*(None if t is None else t.index_select(0, idx) for t in self._all()))

    def cat(self, other: OuterState) -> OuterState:
        return OuterState(*(None if a is None or b is None else cat_rows(a, b)
                            for a, b in zip(self._all(), other._all(), strict=True)))

    def _all(self) -> tuple[Tensor | None, ...]:
        return (self.w, self.square_avg, self.lo, self.hi)


def init_outer(cfg: SearchConfig, x_o: Tensor, x_s: Tensor) -> OuterState:
    """Optimiser state for images x_o starting at x_s."""
    if cfg.optimizer != "rmsprop-tanh":
        return OuterState()
    lo = (x_o - cfg.budget).clamp(min=0.0)
    hi = (x_o + cfg.budget).clamp(max=1.0)
    unit = (2 * (x_s - lo) / (hi - lo) - 1).clamp(-_ATANH_LIMIT, _ATANH_LIMIT)
    return OuterState(w=torch.atanh(unit), square_avg=torch.zeros_like(x_s), lo=lo, hi=hi)


def tanh_to_box(w: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    return lo + (hi - lo) * (torch.tanh(w) + 1) / 2


def outer_step(
    cfg: SearchConfig, state: OuterState, idx: Tensor, x_s: Tensor, x_o: Tensor, grad: Tensor
) -> Tensor:
    """One descent step for the images at rows `idx`; returns their new x_s.

    `grad` is the (first-order) gradient of the adversarial loss w.r.t. x_s.
    Rows of `state` at idx are updated in place.
    """
    lr = cfg.outer_lr
    if cfg.optimizer == "pgd":
        return project_box(x_s - lr * steepest_direction(grad, cfg.norm), x_o, cfg.budget, cfg.norm)
    if cfg.optimizer == "sgd":
        return project_box(x_s - lr * grad, x_o, cfg.budget, cfg.norm)
    assert state.w is not None and state.square_avg is not None
    assert state.lo is not None and state.hi is not None
    w, lo, hi = state.w[idx], state.lo[idx], state.hi[idx]
    grad_w = grad * (hi - lo) / 2 * (1 - torch.tanh(w) ** 2)
    sq = state.square_avg[idx] * RMSPROP_ALPHA + (1 - RMSPROP_ALPHA) * grad_w**2
    w = w - lr * grad_w / (sq.sqrt() + RMSPROP_EPS)
    state.w[idx], state.square_avg[idx] = w, sq
    return tanh_to_box(w, lo, hi)
