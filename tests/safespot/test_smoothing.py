from __future__ import annotations

import torch
from scipy.stats import norm
from torch import nn

from safespot import SearchConfig, find_safe_spots
from safespot.attacks import pgd
from safespot.smoothing import ABSTAIN, SmoothedSoftClassifier, certify, predict


class Constant(nn.Module):
    """Always the same logits: the smoothed classifier is certain of class `label`."""

    def __init__(self, label: int, classes: int = 10) -> None:
        super().__init__()
        self.logits = torch.full((classes,), -5.0)
        self.logits[label] = 5.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1) + 0 * x.flatten(1)[:, :1]


class SignOfMean(nn.Module):
    """Class 1 when the mean pixel exceeds 0.5, else class 0: noise makes it a coin flip at 0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(dim=1, keepdim=True) - 0.5
        return torch.cat([-m, m], dim=1) * 100


def test_certify_matches_the_clopper_pearson_formula_on_a_certain_model() -> None:
    x = torch.rand(2, 3, 8, 8)
    cert = certify(Constant(3), x, sigma=0.25, n0=10, num=1000, alpha=0.001)
    p_lower = 0.001 ** (1 / 1000)  # all n samples agree: the exact one-sided bound
    assert cert.prediction.tolist() == [3, 3]
    torch.testing.assert_close(cert.p_lower, torch.full((2,), p_lower, dtype=cert.p_lower.dtype))
    torch.testing.assert_close(cert.radius, torch.full((2,), 0.25 * norm.ppf(p_lower), dtype=cert.radius.dtype))


def test_predict_and_certify_abstain_on_a_coin_flip() -> None:
    x = torch.full((1, 3, 8, 8), 0.5)
    g = torch.Generator().manual_seed(0)
    assert predict(SignOfMean(), x, sigma=0.5, num=400, alpha=0.001, generator=g).tolist() == [ABSTAIN]
    cert = certify(SignOfMean(), x, sigma=0.5, n0=50, num=400, alpha=0.001, generator=g)
    assert cert.prediction.tolist() == [ABSTAIN] and float(cert.radius[0]) == 0.0


def test_smoothed_soft_classifier_returns_log_probabilities_and_counts_passes(tiny_model, test_images) -> None:
    smoothed = SmoothedSoftClassifier(tiny_model, sigma=0.12, samples=4, generator=torch.Generator().manual_seed(0))
    x = test_images[0][:8]
    with torch.no_grad():
        logp = smoothed(x)
    torch.testing.assert_close(logp.exp().sum(dim=1), torch.ones(8))
    assert smoothed.passes_per_call == 4
    attack = pgd(smoothed, x, logp.argmax(1), steps=3)  # randomized PGD: fresh noise each step
    assert attack.grad_evals == 4 * 4


def test_search_against_the_smoothed_classifier(tiny_model, test_images) -> None:
    smoothed = SmoothedSoftClassifier(tiny_model, sigma=0.12, samples=2, generator=torch.Generator().manual_seed(1))
    x = test_images[0][:6]
    res = find_safe_spots(smoothed, x, SearchConfig.preset("fast", norm="l2", eps=0.5, outer_steps=2))
    assert res.grad_evals % 2 == 0 and res.grad_evals > 0
    assert float((res.x_safe - x).flatten(1).norm(dim=1).max()) <= 0.5 + 1e-6


def test_certified_radii_before_and_after_the_search(tiny_model, test_images) -> None:
    from safespot.evaluation import certify_before_after

    x, y = test_images[0][:4], test_images[1][:4]
    cfg = SearchConfig.preset("fast", norm="l2", eps=0.25, outer_steps=2)
    out = certify_before_after(tiny_model, x, y, cfg, sigma=0.12, samples=2, n0=10, num=50)
    for side in ("original", "safe_spot"):
        accs = [out[side][f"certified_acc@{r:g}"] for r in (0.0, 0.25, 0.5, 0.75)]
        assert accs == sorted(accs, reverse=True)  # certified accuracy falls with the radius
        assert 0 <= out[side]["abstain_rate"] <= 1
    assert out["grad_evals_per_image"] > 0 and out["n"] == 50
