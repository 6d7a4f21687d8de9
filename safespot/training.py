"""Training recipes as pure functions: which input each training step sees.

The paper's training recipes.  With x a batch of training images and y its true labels:

- ``natural``: train on x.
- ``gaussian``: x + N(0, sigma^2) (for randomized smoothing; Cohen et al.).
- ``adv-pgd``: k-step PGD from a random start (Madry et al.), step eps/4.
- ``adv-fast``: one FGSM step of 1.25 eps from a random start (Wong et al., 2020).
- ``s-fgsm-adv``: a safe-spot candidate x_s* = one FGSM step of size delta
  *towards* y (the paper's text), then the adversarial example of x_s*
  (k-step PGD, or the fast FGSM-RS step) inside the eps-ball around x_s*.
- ``s-pgd-adv``: as above with x_s* from 10-step targeted PGD (step delta/4).
- ``trades``: TRADES (Zhang et al., 2019): x' from k steps that *maximise*
  KL(p(x) || p(x')) in the eps-ball, and the loss CE(f(x), y) + beta
  KL(p(x) || p(x')), so the clean prediction is fitted and kept steady
  around x rather than the label fitted at x'.

The authors' public script steps *away* from y to build x_s*; pass
``safe_direction="away"`` to reproduce it.  Extra loss terms (the OOD
outlier terms) come from :mod:`safespot.ood`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from safespot.attacks import fgsm, pgd
from safespot.threat import Norm, check_norm, project_box, steepest_direction

RECIPES = ("natural", "gaussian", "adv-pgd", "adv-fast", "s-fgsm-adv", "s-pgd-adv", "trades")
FAST_STEP = 1.25  # Wong et al.: FGSM-RS step = 1.25 eps
TRADES_START = 0.001  # Zhang et al.: the KL attack starts at x + 0.001 N(0, 1) (KL's gradient is 0 at x)


@dataclass(frozen=True)
class Recipe:
    name: str = "s-fgsm-adv"
    norm: Norm = "linf"
    eps: float = 8 / 255
    delta: float | None = None  # safe-spot step budget; None: eps
    attack: Literal["pgd", "fast"] = "fast"  # how x_a* is built from x_s* (or x)
    attack_steps: int = 10  # k for PGD attacks (paper: 10, step eps/4)
    attack_step: float = 0.25  # PGD step as a fraction of eps (the paper: 1/4)
    safe_steps: int = 10  # s-pgd-adv: targeted PGD steps towards y
    safe_direction: Literal["towards", "away"] = "towards"
    # s-*-adv: the share of each batch attacked from its safe-spot candidate; the rest is
    # attacked from the image itself (plain adversarial training), which keeps the
    # robustness *at* the image that the safe-spot objective alone gives up.
    safe_fraction: float = 1.0
    sigma: float = 0.25  # gaussian
    beta: float = 6.0  # trades: weight of the KL term (Zhang et al.: 6 on CIFAR-10)

    def __post_init__(self) -> None:
        if not 0.0 <= self.safe_fraction <= 1.0:
            raise ValueError("safe_fraction must be in [0, 1]")
        if self.name not in RECIPES:
            raise ValueError(f"unknown recipe {self.name!r}; choose one of {RECIPES}")
        check_norm(self.norm)
        if self.delta is None:
            object.__setattr__(self, "delta", self.eps)

    @property
    def budget(self) -> float:
        return float(self.delta)  # type: ignore[arg-type]

    @property
    def robust(self) -> bool:
        return self.name not in ("natural", "gaussian")

    @property
    def fast_attack(self) -> bool:
        """x_a* from one FGSM-RS step (else k-step PGD)."""
        return self.name == "adv-fast" or (self.name.startswith("s-") and self.attack == "fast")

    @property
    def passes_per_image(self) -> float:
        """Input-gradient passes per training image before the training pass (on average:
        only the `safe_fraction` share of a batch gets the safe-spot passes)."""
        if not self.robust:
            return 0.0
        safe = {"s-fgsm-adv": 1, "s-pgd-adv": self.safe_steps}.get(self.name, 0) * self.safe_fraction
        return safe + (1 if self.fast_attack else self.attack_steps)

    @property
    def training_passes(self) -> int:
        """Forward+backward passes per training image in the training step itself (TRADES: x and x')."""
        return 2 if self.name == "trades" else 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def safe_spot_candidate(model: nn.Module, x: Tensor, y: Tensor, recipe: Recipe,
                        generator: torch.Generator | None = None) -> Tensor:
    """x_s*: a cheap safe-spot candidate, a descent step (or steps) on CE(., y)."""
    towards = recipe.safe_direction == "towards"
    if recipe.name == "s-fgsm-adv":
        return fgsm(model, x, y, norm=recipe.norm, eps=recipe.budget, targeted=towards)
    return pgd(model, x, y, norm=recipe.norm, eps=recipe.budget, alpha=recipe.budget / 4,
               steps=recipe.safe_steps, random_start=False, targeted=towards,
               stop_on_success=False, generator=generator).x_adv


def training_inputs(model: nn.Module, x: Tensor, y: Tensor, recipe: Recipe,
                    generator: torch.Generator | None = None) -> Tensor:
    """The images the training step of `recipe` feeds to the model (no grad attached).

    `model` should be in eval mode here (attacks must not update BatchNorm
    statistics); the caller switches back to train mode for the step.
    """
    if recipe.name == "natural":
        return x
    if recipe.name == "gaussian":
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x + recipe.sigma * noise
    if recipe.name == "trades":
        return trades_adversary(model, x, recipe, generator)
    start = x
    if recipe.name in ("s-fgsm-adv", "s-pgd-adv"):
        k = round(recipe.safe_fraction * x.shape[0])
        if k > 0:
            start = torch.cat([safe_spot_candidate(model, x[:k], y[:k], recipe, generator), x[k:]])
    if recipe.fast_attack:
        return fgsm(model, start, y, norm=recipe.norm, eps=recipe.eps,
                    alpha=FAST_STEP * recipe.eps, random_start=True, generator=generator)
    return pgd(model, start, y, norm=recipe.norm, eps=recipe.eps, alpha=recipe.attack_step * recipe.eps,
               steps=recipe.attack_steps, random_start=True, stop_on_success=False,
               generator=generator).x_adv


def trades_adversary(model: nn.Module, x: Tensor, recipe: Recipe,
                     generator: torch.Generator | None = None) -> Tensor:
    """TRADES' x': `attack_steps` steepest-ascent steps on KL(p(x) || p(x')) inside the eps-ball."""
    with torch.no_grad():
        p_clean = F.softmax(model(x).float(), dim=1)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    x_adv = project_box(x + TRADES_START * noise, x, recipe.eps, recipe.norm)
    for _ in range(recipe.attack_steps):
        x_adv.requires_grad_(True)
        kl = F.kl_div(F.log_softmax(model(x_adv).float(), dim=1), p_clean, reduction="sum")
        (grad,) = torch.autograd.grad(kl, x_adv)
        step = recipe.attack_step * recipe.eps * steepest_direction(grad, recipe.norm)
        x_adv = project_box(x_adv.detach() + step, x, recipe.eps, recipe.norm)
    return x_adv.detach()


def training_batch(x: Tensor, x_train: Tensor, recipe: Recipe) -> Tensor:
    """What the training pass forwards: the recipe's inputs, and for TRADES the clean images first."""
    return torch.cat([x, x_train]) if recipe.name == "trades" else x_train


def training_loss(logits: Tensor, y: Tensor, recipe: Recipe) -> tuple[Tensor, Tensor]:
    """(loss, logits of the recipe's inputs) from the logits of :func:`training_batch`.

    TRADES: CE on the clean half plus beta times the batch-mean KL from the
    clean to the adversarial prediction; the others: CE on their inputs.
    """
    if recipe.name != "trades":
        return F.cross_entropy(logits, y), logits
    clean, adv = logits.float().chunk(2)
    kl = F.kl_div(F.log_softmax(adv, dim=1), F.softmax(clean, dim=1), reduction="batchmean")
    return F.cross_entropy(clean, y) + recipe.beta * kl, adv
