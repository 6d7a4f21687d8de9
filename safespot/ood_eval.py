"""Evaluating out-of-distribution detection: each method's score of a batch, the
metrics that compare in-distribution with OOD scores, and the choice of mu.

Every score is "higher = in-distribution" (docs/ood.md):

- ``safespot``: D(x) = mu*MSP(x) + (1-mu)*MSP(x_a*) from the safe-spot search;
- ``msp``, ``energy``: the maximum softmax probability and the negative free
  energy of a baseline model's logits;
- ``mahalanobis``: a fitted :class:`safespot.ood.LayerwiseMahalanobis` on the
  baseline's layers (or :class:`~safespot.ood.MahalanobisDetector` on its
  penultimate features alone);
- ``oe``: the MSP of an Outlier-Exposure-trained model;
- ``flag``: the score the checkpoint's calibrated OOD flag uses, as the service
  computes it: its stored :class:`safespot.ood.LayerwiseMahalanobis` (no refit),
  else D(x) with its mu.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from safespot import ood
from safespot.config import SearchConfig

METHODS = ("msp", "oe", "energy", "mahalanobis", "safespot", "flag")
TPR_LEVEL = 0.95
MU_GRID = tuple(round(i / 20, 2) for i in range(21))  # 0, 0.05, ..., 1


def ood_metrics(scores_in: Any, scores_out: Any) -> dict[str, float]:
    """AUROC, AUPR (in-distribution positive) and the false-positive rate at 95% true-positive rate."""
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    s_in, s_out = np.asarray(scores_in, np.float64), np.asarray(scores_out, np.float64)
    if not (np.isfinite(s_in).all() and np.isfinite(s_out).all()):
        raise ValueError("scores must be finite")
    y = np.r_[np.ones(len(s_in)), np.zeros(len(s_out))]
    s = np.r_[s_in, s_out]
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    fpr95 = float(fpr[np.searchsorted(tpr, TPR_LEVEL, side="left")])
    return {"auroc": float(roc_auc_score(y, s)), "aupr": float(average_precision_score(y, s)),
            "fpr95": fpr95}


def bootstrap_intervals(scores_in: Any, scores_out: Any, *, rounds: int = 1000, seed: int = 0,
                        level: float = 0.95, paired_with: tuple[Any, Any] | None = None) -> dict[str, list[float]]:
    """Percentile bootstrap intervals of :func:`ood_metrics` (in- and OOD scores resampled
    separately, with replacement, `rounds` times from a fixed seed).

    With ``paired_with=(other_in, other_out)`` (another method's scores of the same images)
    the interval is of the *difference* this minus other, on the same resampled images: the
    comparison that says whether one method is better, which two overlapping separate
    intervals cannot.
    """
    s_in, s_out = np.asarray(scores_in, np.float64), np.asarray(scores_out, np.float64)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {"auroc": [], "aupr": [], "fpr95": []}
    for _ in range(rounds):
        i, o = rng.integers(0, len(s_in), len(s_in)), rng.integers(0, len(s_out), len(s_out))
        m = ood_metrics(s_in[i], s_out[o])
        if paired_with is not None:
            other = ood_metrics(np.asarray(paired_with[0], np.float64)[i], np.asarray(paired_with[1], np.float64)[o])
            m = {k: m[k] - other[k] for k in m}
        for k, v in m.items():
            draws[k].append(v)
    tail = (1 - level) / 2 * 100
    return {k: [float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))] for k, v in draws.items()}


def safespot_parts(model: nn.Module, x: Tensor, cfg: SearchConfig,
                   progress: Callable[[int, int], None] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """MSP(x), MSP(x_a*) (float64, CPU) and the passes per image of the safe-spot search."""
    from safespot import find_safe_spots

    res = find_safe_spots(model, x, cfg, progress=progress)
    return res.msp.double().cpu(), res.msp_adv.double().cpu(), res.grad_evals_per_image.cpu()


def choose_mu(msp_in: Tensor, adv_in: Tensor, msp_out: Tensor, adv_out: Tensor,
              grid: tuple[float, ...] = MU_GRID) -> tuple[float, list[dict[str, float]]]:
    """The mu with the best AUROC (ties: lower FPR95, then larger mu), and the whole sweep."""
    sweep = []
    for mu in grid:
        m = ood_metrics(ood.safespot_score(msp_in, adv_in, mu), ood.safespot_score(msp_out, adv_out, mu))
        sweep.append({"mu": mu, **{k: round(v, 6) for k, v in m.items()}})
    best = max(sweep, key=lambda r: (r["auroc"], -r["fpr95"], r["mu"]))
    return float(best["mu"]), sweep


@dataclass
class Scored:
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # by method, float64
    passes: float | None = None  # safe-spot search passes per image


@dataclass
class OodScorer:
    """Every requested method's scores of a batch; a method without its model is left out."""

    methods: list[str]
    model: nn.Module  # the safe-spot score's
    cfg: SearchConfig
    mu: float
    baseline: nn.Module  # msp, energy, mahalanobis
    oe: nn.Module | None = None
    maha: ood.MahalanobisDetector | ood.LayerwiseMahalanobis | None = None
    stored: ood.LayerwiseMahalanobis | None = None  # the flag's detector (None: the flag uses D(x))
    stored_layers: int = 8  # the max_layers it was fitted with

    @torch.no_grad()
    def _logit_scores(self, x: Tensor, out: dict[str, Tensor]) -> None:
        if {"msp", "energy", "mahalanobis"} & set(self.methods):
            if isinstance(self.maha, ood.LayerwiseMahalanobis):
                logits, layers = ood.layer_features(self.baseline, x)
                out["mahalanobis"] = self.maha.score(layers)
            else:
                logits, feats = ood.logits_and_features(self.baseline, x)
                if self.maha is not None:
                    out["mahalanobis"] = self.maha.score(feats)
            out["msp"], out["energy"] = ood.msp_score(logits), ood.energy_score(logits)
        if "oe" in self.methods and self.oe is not None:
            out["oe"] = ood.msp_score(ood.logits_and_features(self.oe, x)[0])

    def __call__(self, x: Tensor, progress: Callable[[int, int], None] | None = None) -> Scored:
        scores: dict[str, Tensor] = {}
        self._logit_scores(x, scores)
        passes = None
        flag = "flag" in self.methods
        if flag and self.stored is not None:
            scores["flag"] = self.stored.score(ood.layer_features(self.model, x, max_layers=self.stored_layers)[1])
        if "safespot" in self.methods or (flag and self.stored is None):
            msp, msp_adv, per_image = safespot_parts(self.model, x, self.cfg, progress)
            scores["safespot"] = ood.safespot_score(msp, msp_adv, self.mu)
            passes = float(per_image.double().mean())
            if flag and self.stored is None:
                scores["flag"] = scores["safespot"]
        return Scored({m: scores[m].double().cpu().numpy() for m in self.methods if m in scores}, passes)
