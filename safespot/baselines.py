"""The paper's cheap safe-spot baselines (docs/method.md).

- S-FGSM: one targeted FGSM step of size delta towards the predicted label.
- S-PGD: 20-step targeted PGD (step delta/4) towards the predicted label
  inside the delta-ball.

Both return 8-bit images inside the budget, like the full search, so that
all methods are judged on what a service would publish.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from safespot.attacks import fgsm, pgd
from safespot.config import SearchConfig
from safespot.losses import Classifier, passes_per_call, predict_logits
from safespot.threat import quantize_toward


@dataclass(frozen=True)
class BaselineResult:
    x_safe: Tensor  # like x, on the 8-bit grid, inside the delta-ball
    labels: Tensor  # (N,) the labels stepped towards
    grad_evals: int  # forward+backward passes in total


def s_fgsm(model: Classifier, x: Tensor, config: SearchConfig, labels: Tensor | None = None) -> BaselineResult:
    y = _labels(model, x, labels)
    moved = fgsm(model, x, y, norm=config.norm, eps=config.budget, targeted=True)
    return BaselineResult(quantize_toward(moved, x), y, x.shape[0] * passes_per_call(model))


def s_pgd(model: Classifier, x: Tensor, config: SearchConfig, labels: Tensor | None = None,
          steps: int = 20) -> BaselineResult:
    y = _labels(model, x, labels)
    res = pgd(model, x, y, norm=config.norm, eps=config.budget, alpha=config.budget / 4, steps=steps,
              random_start=False, targeted=True, stop_on_success=False)
    # The final scoring pass of `pgd` is not needed for a descent: `steps` passes per image.
    return BaselineResult(quantize_toward(res.x_adv, x), y, x.shape[0] * steps * passes_per_call(model))


def _labels(model: Classifier, x: Tensor, labels: Tensor | None) -> Tensor:
    return predict_logits(model, x).argmax(dim=1) if labels is None else labels
