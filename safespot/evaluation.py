"""The paper's table protocol, judged by a yardstick the search never sees (no I/O).

For each method (``none``, ``s-fgsm``, ``s-pgd``, ``s-full``) the image that
would be published is built from each test image (8-bit, inside the
budget), then:

- clean accuracy: the classifier's prediction on it against the true label;
- adversarial accuracy under each attack suite of :mod:`safespot.yardstick`
  (the paper's PGD-20 always; AutoAttack when asked), run on that image
  against the true label;
- safe-spot rate: images correct *and* adversarially correct after the
  method, over images correctly classified originally;
- for S-Full, ``found_but_broken``: images the search's own verification
  called safe that the suite broke (the claim "found" failing).

Per image outcomes are kept as strings of ``0``/``1`` (``per_image``: correct
before, found; each suite's ``held``), so that a report on n images at a
fixed stride also answers for any sub-stride of them (for example the 500
images at stride 20 inside the 1,000 at stride 10).

The attacks have their own seeds, independent of the search's verification.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from safespot.baselines import s_fgsm, s_pgd
from safespot.config import SearchConfig
from safespot.losses import Classifier, predict_logits
from safespot.search import Progress, find_safe_spots
from safespot.yardstick import EVAL_SEED, SUITES, confirmer, judge, suites_from

METHODS = ("none", "s-fgsm", "s-pgd", "s-full")


@dataclass
class MethodReport:
    clean_acc: float
    adv_acc: float  # under PGD-20, the paper's attack
    safe_spot_rate: float | None = None
    grad_evals_per_image: float = 0.0
    seconds: float = 0.0
    attacks: dict[str, dict[str, Any]] = field(default_factory=dict)  # per suite
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"clean_acc": self.clean_acc, "adv_acc": self.adv_acc}
        if self.safe_spot_rate is not None:
            d.update(safe_spot_rate=self.safe_spot_rate,
                     grad_evals_per_image=self.grad_evals_per_image, seconds=self.seconds)
        return d | {"attacks": self.attacks} | self.extra


def evaluation_attack(model: Classifier, x: Tensor, y: Tensor, config: SearchConfig,
                      batch_size: int = 250, seed: int = EVAL_SEED) -> Tensor:
    """PGD-20 (step eps/4, random start) against the true labels; True where it succeeded."""
    verdict = judge(model, x, y, "pgd20", norm=config.norm, eps=config.eps, seed=seed,
                    batch_size=batch_size)
    return verdict.correct & ~verdict.robust


def evaluate_methods(
    model: Classifier,
    x: Tensor,
    y: Tensor,
    config: SearchConfig,
    methods: Sequence[str] = METHODS,
    attacks: Sequence[str] = ("pgd20",),
    progress: Callable[[str], Progress] | None = None,
    confirm: str | None = None,
) -> dict[str, MethodReport]:
    """Run the protocol on test images x (N, C, H, W, 8-bit values) with true labels y.

    `attacks` names the yardstick suites (PGD-20 is always run: the paper's
    figure); `progress(method)` returns a callback for the search; `confirm`
    names a suite S-Full's points must also survive before they count as
    found (own random stream; for measuring what the model allows).
    """
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    suites = suites_from(["pgd20", *attacks])
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
            check = confirmer(model, confirm, norm=config.norm, eps=config.eps) if confirm else None
            res = find_safe_spots(model, x, config, progress=progress("s-full") if progress else None,
                                  confirm=check)
            x_pub, evals = res.x_safe, res.grad_evals
            found = res.found & correct_before
            extra = {"found_rate": _mean(res.found[correct_before]), "found": int(found.sum()),
                     "safe_at_start_rate": _mean(res.safe_at_start[correct_before]),
                     "outer_steps_mean": float(res.outer_steps.float().mean()),
                     "verification": config.verification(), "per_image": {"found": bits(res.found)}}
            if confirm:
                extra["confirm"] = {"suite": confirm, "attacks": list(SUITES[confirm]),
                                    "random_stream": "its own, not the yardstick's",
                                    "passes": "not counted in grad_evals_per_image"}
        seconds = time.perf_counter() - started
        per_suite: dict[str, dict[str, Any]] = {}
        correct = torch.zeros_like(y, dtype=torch.bool)
        for suite in suites:
            verdict = judge(model, x_pub, y, suite, norm=config.norm, eps=config.eps)
            correct = verdict.correct  # the same classification in every suite
            entry = verdict.summary() | {"adv_acc": _mean(verdict.robust), "held": bits(verdict.robust)}
            if method != "none":
                entry["safe_spot_rate"] = _mean(verdict.robust[correct_before])
            if res is not None:
                entry["found_but_broken"] = int((res.found & correct_before & ~verdict.robust).sum())
                entry["found_and_held_rate"] = _mean((res.found & verdict.robust)[correct_before])
            per_suite[suite] = entry
        if method != "none":
            extra["per_image"] = {"correct_before": bits(correct_before)} | extra.get("per_image", {})
        report = MethodReport(clean_acc=_mean(correct), adv_acc=per_suite["pgd20"]["adv_acc"],
                              attacks=per_suite, extra=extra)
        if method != "none":
            report.safe_spot_rate = per_suite["pgd20"]["safe_spot_rate"]
            report.grad_evals_per_image = evals / len(x)
            report.seconds = round(seconds, 2)
        reports[method] = report
    return reports


def bits(mask: Tensor) -> str:
    """A boolean vector as a compact string of 0/1, one character per image."""
    return "".join("1" if v else "0" for v in mask.tolist())


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
