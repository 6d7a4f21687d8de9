"""Search settings: one frozen dataclass and its named presets.

Budgets are in pixel units on [0, 1] images; `delta` (the defender's budget)
defaults to `eps` (the adversary's), as in the paper.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from models.formats import PAPER_EPS  # torch-free: the API defaults training budgets from it too
from safespot.threat import Norm, check_norm

Optimizer = Literal["pgd", "rmsprop-tanh", "sgd"]
Init = Literal["original", "random", "sphere"]
Keep = Literal["best", "last"]
InnerLoss = Literal["ce", "margin"]
Precision = Literal["fp32", "bf16"]

PRESETS = ("paper", "standard", "fast")


@dataclass(frozen=True)
class SearchConfig:
    """Settings of the safe-spot search (S-Full; docs/method.md, docs/verification.md).

    The search minimises, over x_s in the delta-ball around the original x_o,
    the cross-entropy of the predicted label after an inner PGD attack of
    budget eps from x_s; the outer gradient is the first-order one (the
    gradient at the inner attack's last point, masked where [0,1] clipping
    froze a pixel).
    """

    norm: Norm = "linf"
    eps: float = PAPER_EPS["linf"]
    delta: float | None = None  # None: equal to eps
    # Outer minimisation (over x_s).
    outer_steps: int = 20  # K: the most outer iterations per image
    optimizer: Optimizer = "pgd"  # pgd: sign (L-inf) / normalised (L2) steps
    lr: float | None = None  # beta; None: delta/2 for pgd (measured: fewer passes than delta/4)
    init: Init = "original"  # original: x_o; random: uniform in the ball; sphere: on its surface
    keep: Keep = "best"  # best: the iterate with the lowest inner adversarial loss
    # Inner maximisation (the adversary the search plans against).
    inner_steps: int = 10  # T
    inner_step: float | None = None  # alpha; None: eps/4
    inner_starts: int = 1  # N random starts, their losses averaged
    inner_loss: InnerLoss = "ce"  # ce, or margin: best other logit - logit[label] (builds margin)
    candidate_margin: float = 0.0  # x_s is a candidate only if no inner iterate came this close
    # Verification: independent attacks on the 8-bit output decide "found".  First a
    # cheap untargeted PGD filter on the cross-entropy, then one targeted margin attack
    # (logit[target] - logit[label], steps eps/2 -> eps/4 -> eps/8) per most likely
    # other class, each from a fresh random start of the verification's own stream.
    # The candidate holds only if no iterate of any run is misclassified or comes
    # within `verify_margin` (a logit margin) of it.
    early_exit: bool = True  # verify candidates during the search, stop once one holds
    verify_steps: int = 20
    verify_restarts: int = 1
    verify_step: float | None = None  # None: eps/4
    verify_targets: int = 3  # targeted runs, toward the top other classes (0: the filter only)
    verify_target_steps: int = 20
    verify_margin: float = 0.2
    # Execution.
    batch_size: int = 64  # images searched at once; finished ones are replaced at once
    seed: int = 0
    # bf16: the passes of search and verification run under bf16 autocast (CPUs with
    # bf16 instructions, GPUs); losses, margins and the 8-bit answer stay float32.
    # The answer is judged by float32 attackers (docs/performance.md has the measurement).
    precision: Precision = "fp32"

    def __post_init__(self) -> None:
        check_norm(self.norm)
        if self.delta is None:
            object.__setattr__(self, "delta", self.eps)
        for name in ("eps", "delta"):
            if not 0 < float(getattr(self, name)) <= _MAX_BUDGET[self.norm]:
                raise ValueError(f"{name} out of range for {self.norm}: {getattr(self, name)}")
        for name in ("outer_steps", "inner_steps", "inner_starts", "verify_steps",
                     "verify_restarts", "verify_targets", "verify_target_steps", "batch_size"):
            if int(getattr(self, name)) < (0 if name in ("outer_steps", "verify_targets") else 1):
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("verify_margin", "candidate_margin"):
            if not float(getattr(self, name)) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.optimizer not in ("pgd", "rmsprop-tanh", "sgd"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}")
        if self.inner_loss not in ("ce", "margin"):
            raise ValueError(f"unknown inner_loss {self.inner_loss!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"unknown precision {self.precision!r}; choose fp32 or bf16")
        if self.optimizer == "rmsprop-tanh" and self.norm != "linf":
            raise ValueError("rmsprop-tanh parameterises the L-inf box; use pgd or sgd for L2")

    # Resolved step sizes (the fields may be None).
    @property
    def budget(self) -> float:
        return float(self.delta)  # type: ignore[arg-type]

    @property
    def outer_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return {"pgd": self.budget / 2, "rmsprop-tanh": 0.1, "sgd": 0.001}[self.optimizer]

    @property
    def inner_alpha(self) -> float:
        return self.eps / 4 if self.inner_step is None else self.inner_step

    @property
    def verify_alpha(self) -> float:
        return self.eps / 4 if self.verify_step is None else self.verify_step

    def target_alpha(self, t: int | Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
        """Step size of the targeted verification runs at step t: eps/2, eps/4, eps/8 in thirds.

        A large first step crosses the ball quickly, the small last ones settle on
        the boundary of the target region (the role of APGD's step-size halving).
        """
        third = torch.div(torch.as_tensor(t) * 3, self.verify_target_steps, rounding_mode="floor").clamp(max=2)
        return self.eps * 0.5 ** (1 + third).to(dtype)

    @property
    def verify_runs(self) -> int:
        """Attack runs a candidate must survive: the filter's restarts, then one per target."""
        return self.verify_restarts + self.verify_targets

    @property
    def verify_passes(self) -> int:
        """Forward+backward passes of one complete verification (fewer when it breaks early)."""
        return (self.verify_steps + 1) * self.verify_restarts + (self.verify_target_steps + 1) * self.verify_targets

    def verification(self) -> dict[str, Any]:
        """What "found" was verified against, for results and reports."""
        steps = "eps/4" if self.verify_step is None else f"{self.verify_alpha:.4g}"
        runs: list[dict[str, Any]] = [{
            "attack": "pgd", "loss": "ce", "targeted": False, "steps": self.verify_steps,
            "restarts": self.verify_restarts, "step": steps, "random_start": True}]
        if self.verify_targets:
            runs.append({"attack": "pgd", "loss": "margin", "targeted": True,
                         "targets": f"top-{self.verify_targets} other classes",
                         "steps": self.verify_target_steps, "restarts": 1,
                         "step": "eps/2, eps/4, eps/8 (thirds)", "random_start": True})
        restarts = f"{self.verify_restarts} restart" + ("s" if self.verify_restarts != 1 else "")
        summary = f"pgd-{self.verify_steps} ({self.norm}, eps {self.eps:.4g}), {restarts}, step {steps}, random start"
        if self.verify_targets:
            summary += (f"; then targeted margin pgd-{self.verify_target_steps} toward each of the top "
                        f"{self.verify_targets} other classes, steps eps/2..eps/8, random starts")
        if self.verify_margin:
            summary += f"; margin at least {self.verify_margin:g} at every iterate"
        return {"norm": self.norm, "eps": self.eps, "on": "8-bit output", "runs": runs,
                "min_margin": self.verify_margin, "passes": self.verify_passes,
                "random_stream": "independent of the search's", "summary": summary}

    @property
    def passes_per_outer_step(self) -> int:
        return self.inner_starts * (self.inner_steps + 1)

    def replace(self, **changes: Any) -> SearchConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def preset(
        cls, name: str = "standard", *, norm: Norm = "linf", eps: float | None = None,
        **overrides: Any,
    ) -> SearchConfig:
        """A named preset for a threat model.

        - ``paper``: the authors' settings, for parity: 100 outer x (20+1)
          inner passes, fixed; L-inf tanh + RMSprop (lr 0.1) from a random
          point of the ball; L2 plain gradient descent (lr 0.001) from the
          delta-sphere; last iterate; verified once at the end.
        - ``standard`` (default): start at the original, verify it, then
          sign/normalised PGD steps of delta/2 with a 10-step inner attack;
          an iterate the inner attack left at least 0.5 (logit margin) from a
          wrong label is a candidate and is verified, and the image stops as
          soon as one holds.  At most 30 outer steps.
        - ``fast``: as standard with a 5-step inner attack and at most 8 outer
          steps, for low latency.

        Every preset verifies the same way (the class defaults: a CE PGD-20
        filter, then targeted margin PGD-20 toward each of the top 3 other
        classes, margin at least 0.2 at every iterate), so "found" means the
        same thing whichever preset ran; ``paper`` verifies its last iterate
        once and otherwise stays the authors' replica.
        """
        norm = check_norm(norm)
        eps = PAPER_EPS[norm] if eps is None else float(eps)
        if name == "paper":
            base: dict[str, Any] = dict(
                outer_steps=100, inner_steps=20, inner_starts=1, early_exit=False, keep="last"
            )
            if norm == "linf":
                base.update(optimizer="rmsprop-tanh", lr=0.1, init="random")
            else:
                base.update(optimizer="sgd", lr=0.001, init="sphere")
        elif name == "standard":
            base = dict(outer_steps=30, inner_steps=10, optimizer="pgd", init="original",
                        candidate_margin=0.5)
        elif name == "fast":
            base = dict(outer_steps=8, inner_steps=5, optimizer="pgd", init="original",
                        candidate_margin=0.5)
        else:
            raise ValueError(f"unknown preset {name!r}; choose one of {PRESETS}")
        base.update(overrides)
        return cls(norm=norm, eps=eps, **base)


_MAX_BUDGET = {"linf": 1.0, "l2": 64.0}
