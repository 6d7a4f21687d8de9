"""The yardstick: attacks the search never sees, run to judge what it publishes.

A robustness figure holds only under an attack the method was not fitted to.
Suites (each attack runs on the images every earlier one failed to break,
as AutoAttack does, so the per-attack survivor counts add up):

- ``pgd20``: the paper's protocol, 20-step untargeted PGD on the
  cross-entropy, step eps/4, one random start;
- ``apgd``: the white-box pair of AutoAttack, APGD-CE then APGD-T;
- ``autoattack``: the standard AutoAttack suite (Croce and Hein, 2020; the
  RobustBench standard): APGD-CE (100 steps), APGD-T (DLR loss, 100 steps,
  9 target classes), FAB-T (100 steps, 9 targets), Square (5,000 queries),
  torchattacks' implementations with the settings of the reference code.

All attack the true labels, start from the given images (the 8-bit outputs)
and use fixed seeds.  torchattacks is imported only when a suite needs it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from safespot.attacks import pgd
from safespot.losses import Classifier, predict_logits
from safespot.threat import Norm, check_norm

EVAL_SEED = 20_240_607  # the evaluation attacks' random streams; unrelated to search seeds
CONFIRM_SEED = EVAL_SEED + 1  # a search's extra check (confirmer): never the yardstick's own draws
SUITES: dict[str, tuple[str, ...]] = {
    "pgd20": ("pgd20",),
    "apgd": ("apgd-ce", "apgd-t"),
    "autoattack": ("apgd-ce", "apgd-t", "fab-t", "square"),
}
AUTOATTACK_TARGETS = 9  # target classes of APGD-T and FAB-T in the standard suite
# (model, x, y) -> bool (N,), True where the attack found a misclassified point.
Breaker = Callable[[Classifier, Tensor, Tensor], Tensor]


@dataclass
class Verdict:
    """One suite's judgement of a batch of images."""

    suite: str
    correct: Tensor  # (N,) bool: classified as the true label
    robust: Tensor  # (N,) bool: correct and no attack of the suite broke it
    survivors: dict[str, int] = field(default_factory=dict)  # robust images after each attack
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"suite": self.suite, "attacks": list(SUITES[self.suite]),
                "survivors": dict(self.survivors), "seconds": round(self.seconds, 1)}


def judge(model: Classifier, x: Tensor, y: Tensor, suite: str, *, norm: Norm, eps: float,
          seed: int = EVAL_SEED, batch_size: int = 250,
          targets: int = AUTOATTACK_TARGETS) -> Verdict:
    """Run a suite on x (N, C, H, W) in [0,1] against the true labels y (`targets`: how many
    of the most likely other classes the targeted attacks try; the standard suite tries 9)."""
    if suite not in SUITES:
        raise ValueError(f"unknown attack suite {suite!r}; choose from {sorted(SUITES)}")
    norm = check_norm(norm)
    started = time.perf_counter()
    logits = predict_logits(model, x)
    correct = logits.argmax(1) == y
    robust = correct.clone()
    survivors = {}
    for name in SUITES[suite]:
        attack = breaker(name, norm, eps, seed, classes=logits.shape[1], targets=targets)
        idx = robust.nonzero().flatten()
        for chunk in idx.split(batch_size):
            broken = attack(model, x[chunk], y[chunk])
            robust[chunk[broken]] = False
        survivors[name] = int(robust.sum())
    return Verdict(suite, correct, robust, survivors, time.perf_counter() - started)


def confirmer(model: Classifier, suite: str, *, norm: Norm, eps: float,
              seed: int = CONFIRM_SEED) -> Callable[[Tensor, Tensor], Tensor]:
    """A suite as the search's extra check (``find_safe_spots(confirm=...)``): True where an
    8-bit point held against its label.  Its random stream is not the yardstick's, so a
    point found this way is still judged by attacks it never saw."""
    if suite not in SUITES:
        raise ValueError(f"unknown attack suite {suite!r}; choose from {sorted(SUITES)}")

    def confirm(x: Tensor, y: Tensor) -> Tensor:
        return judge(model, x, y, suite, norm=norm, eps=eps, seed=seed).robust

    return confirm


def breaker(name: str, norm: Norm, eps: float, seed: int = EVAL_SEED, classes: int = 10,
            targets: int = AUTOATTACK_TARGETS) -> Breaker:
    """One attack of a suite, as a function returning where it succeeded (`classes`: the
    model's number of classes, which caps the targeted attacks' target count `targets`)."""
    if name == "pgd20":
        def run_pgd(model: Classifier, x: Tensor, y: Tensor) -> Tensor:
            gen = torch.Generator(device=x.device).manual_seed(seed)
            return pgd(model, x, y, norm=norm, eps=eps, steps=20, generator=gen).success
        return run_pgd
    return _torchattacks_breaker(name, norm, eps, seed, classes, targets)


def _torchattacks_breaker(name: str, norm: Norm, eps: float, seed: int, classes: int,
                          targets: int) -> Breaker:
    try:
        import torchattacks
    except ImportError as e:  # an optional extra: say how to get it
        raise ImportError("the apgd and autoattack suites need torchattacks: "
                          "pip install 'safespot[eval]' (torchattacks==3.5.1)") from e

    ta_norm = "Linf" if norm == "linf" else "L2"
    targets = max(1, min(targets, classes - 1))

    def run(model: Classifier, x: Tensor, y: Tensor) -> Tensor:
        net = _as_module(model, x)
        if name == "apgd-ce":
            atk: Any = torchattacks.APGD(net, norm=ta_norm, eps=eps, steps=100, n_restarts=1,
                                        loss="ce", seed=seed)
        elif name == "apgd-t":
            atk = torchattacks.APGDT(net, norm=ta_norm, eps=eps, steps=100, n_restarts=1,
                                     n_classes=classes, seed=seed)
            atk.n_target_classes = targets
        elif name == "fab-t":
            atk = torchattacks.FAB(net, norm=ta_norm, eps=eps, steps=100, n_restarts=1,
                                   multi_targeted=True, n_classes=classes, seed=seed)
            atk.n_target_classes = targets
        elif name == "square":
            atk = torchattacks.Square(net, norm=ta_norm, eps=eps, n_queries=5000, n_restarts=1,
                                      seed=seed)
        else:
            raise ValueError(f"unknown attack {name!r}")
        atk.set_device(x.device)
        adv = atk(x, y)
        inside = _inside(adv, x, eps, norm)
        with torch.no_grad():
            return (predict_logits(model, adv).argmax(1) != y) & inside

    return run


def _inside(adv: Tensor, x: Tensor, eps: float, norm: Norm) -> Tensor:
    """Only a point inside the threat model counts (a guard against any attack's slack)."""
    d = (adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    return (size <= eps * (1 + 1e-4) + 1e-6) & (adv >= 0).flatten(1).all(1) & (adv <= 1).flatten(1).all(1)


class _Wrapped(nn.Module):
    """torchattacks wants an nn.Module with parameters; any classifier callable becomes one."""

    def __init__(self, fn: Classifier, like: Tensor) -> None:
        super().__init__()
        self.fn = fn
        self.anchor = nn.Parameter(torch.zeros((), device=like.device), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


def _as_module(model: Classifier, like: Tensor) -> nn.Module:
    if isinstance(model, nn.Module) and any(True for _ in model.parameters()):
        return model
    return _Wrapped(model, like).eval()


def suites_from(names: Sequence[str]) -> list[str]:
    """Validate a list of suite names (the first is the headline one)."""
    unknown = [n for n in names if n not in SUITES]
    if unknown or not names:
        raise ValueError(f"attack suites are {', '.join(SUITES)}; got {', '.join(names) or 'none'}")
    return list(dict.fromkeys(names))
