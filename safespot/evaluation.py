"""The paper's table protocol (SPEC section 6), as a computation without I/O.

For each method (``none``, ``s-fgsm``, ``s-pgd``, ``s-full``) the image that
would be published is built from each test image (8-bit, inside the
budget), then:

- clean accuracy: the classifier's prediction on it against the true label;
- adversarial accuracy: 20-step untargeted PGD, step eps/4, random start,
  against the true label, run on that image (an iterate that is ever
  misclassified counts as a success, never weaker than the last iterate);
- safe-spot rate: images correct *and* adversarially correct after the
  method, over images correctly classified originally.

The attack has its own seed, independent of the search's verification.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from safespot.attacks import pgd
from safespot.baselines import s_fgsm, s_pgd
from safespot.config import SearchConfig
from safespot.losses import Classifier, predict_logits
from safespot.search import Progress, find_safe_spots

METHODS = ("none", "s-fgsm", "s-pgd", "s-full")
EVAL_SEED = 20_240_607  # the evaluation attack's random starts; unrelated to search seeds

# An extra attack to cross-check with: (model, x, y) -> bool tensor, True where the attack succeeded.
Attack = Callable[[Classifier, Tensor, Tensor], Tensor]


@dataclass
class MethodReport:
    clean_acc: float
    adv_acc: float
    safe_spot_rate: float | None = None
    grad_evals_per_image: float = 0.0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"clean_acc": self.clean_acc, "adv_acc": self.adv_acc}
        if self.safe_spot_rate is not None:
            d.update(safe_spot_rate=self.safe_spot_rate,
                     grad_evals_per_image=self.grad_evals_per_image, seconds=self.seconds)
        return d | self.extra


def evaluation_attack(model: Classifier, x: Tensor, y: Tensor, config: SearchConfig,
                      batch_size: int = 250, seed: int = EVAL_SEED) -> Tensor:
    """PGD-20 (step eps/4, random start) against the true labels; True where it succeeded."""
    gen = torch.Generator(device=x.device)
    gen.manual_seed(seed)
    hits = [pgd(model, xb, yb, norm=config.norm, eps=config.eps, steps=20, generator=gen).success
            for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True)]
    return torch.cat(hits)


def evaluate_methods(
    model: Classifier,
    x: Tensor,
    y: Tensor,
    config: SearchConfig,
    methods: Sequence[str] = METHODS,
    cross_check: dict[str, Attack] | None = None,
    progress: Callable[[str], Progress] | None = None,
) -> dict[str, MethodReport]:
    """Run the protocol on test images x (N, C, H, W, 8-bit values) with true labels y.

    `cross_check` maps names to stronger attacks run on the S-Full outputs
    (and the originals); `progress(method)` returns a callback for the search.
    """
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    correct_before = predict_logits(model, x).argmax(1) == y
    reports: dict[str, MethodReport] = {}
    for method in methods:
        started = time.perf_counter()
        extra: dict[str, Any] = {}
        res = None
        if method == "none":
            x_pub, evals = x, 0
        elif method == "s-fgsm":
            b = s_fgsm(model, x, config)
            x_pub, evals = b.x_safe, b.grad_evals
        elif method == "s-pgd":
            b = s_pgd(model, x, config)
            x_pub, evals = b.x_safe, b.grad_evals
        else:
            res = find_safe_spots(model, x, config, progress=progress("s-full") if progress else None)
            x_pub, evals = res.x_safe, res.grad_evals
            extra = {"found_rate": _mean(res.found[correct_before]),
                     "safe_at_start_rate": _mean(res.safe_at_start[correct_before]),
                     "outer_steps_mean": float(res.outer_steps.float().mean())}
        seconds = time.perf_counter() - started
        correct = predict_logits(model, x_pub).argmax(1) == y
        robust = correct & ~evaluation_attack(model, x_pub, y, config)
        report = MethodReport(clean_acc=_mean(correct), adv_acc=_mean(robust))
        if method != "none":
            report.safe_spot_rate = _mean(robust[correct_before])
            report.grad_evals_per_image = evals / len(x)
            report.seconds = round(seconds, 2)
        if method == "s-full" and res is not None:
            extra["found_and_held_rate"] = _mean((robust & res.found)[correct_before])
            extra["found_but_broken"] = int((res.found & correct_before & ~robust).sum())
        for name, attack in (cross_check or {}).items():
            if method in ("none", "s-full"):
                extra[f"adv_acc_{name}"] = _mean(correct & ~attack(model, x_pub, y))
        report.extra = extra
        reports[method] = report
    return reports


def _mean(mask: Tensor) -> float:
    return round(float(mask.float().mean()), 4) if mask.numel() else float("nan")


def certify_before_after(
    model: Classifier,
    x: Tensor,
    y: Tensor,
    config: SearchConfig,
    sigma: float,
    samples: int = 5,
    n0: int = 100,
    num: int = 1000,
    alpha: float = 0.001,
    radii: Sequence[float] = (0.0, 0.25, 0.5, 0.75),
    seed: int = EVAL_SEED,
) -> dict[str, Any]:
    """Certified robustness of the smoothed classifier on originals and on safe spots.

    The search runs against the smoothed soft classifier (M = `samples` noise
    draws per pass, randomized PGD inside); CERTIFY (Cohen et al.) then
    certifies both the originals and the safe spots with n0 / num samples.
    Reports certified accuracy (correct and radius >= r) per radius and the
    mean radius of correct, non-abstained images, before and after.
    """
    from safespot.smoothing import SmoothedSoftClassifier, certify

    gen = torch.Generator(device=x.device)
    gen.manual_seed(seed)
    smoothed = SmoothedSoftClassifier(model, sigma=sigma, samples=samples, generator=gen)  # type: ignore[arg-type]
    started = time.perf_counter()
    res = find_safe_spots(smoothed, x, config)
    search_s = time.perf_counter() - started
    out: dict[str, Any] = {"sigma": sigma, "samples": samples, "n0": n0, "n": num, "alpha": alpha,
                           "images": len(x), "grad_evals_per_image": res.grad_evals / len(x),
                           "search_seconds": round(search_s, 1),
                           "found_rate": _mean(res.found)}
    for name, images in (("original", x), ("safe_spot", res.x_safe)):
        cert = certify(model, images, sigma, n0=n0, num=num, alpha=alpha, generator=gen)  # type: ignore[arg-type]
        correct = cert.prediction == y
        out[name] = {f"certified_acc@{r:g}": _mean(correct & (cert.radius >= r)) for r in radii}
        out[name]["mean_radius_correct"] = (round(float(cert.radius[correct].mean()), 4)
                                            if bool(correct.any()) else 0.0)
        out[name]["abstain_rate"] = _mean(cert.prediction < 0)
    return out
