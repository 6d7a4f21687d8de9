"""Randomized smoothing (docs/method.md, "Randomized smoothing").

- :class:`SmoothedSoftClassifier`: G(x) = E_n[softmax f(x + n)], n ~ N(0, sigma^2 I),
  estimated with M fresh noise samples per call.  Its forward returns
  log G(x), so the cross-entropy every attack and the search minimise or
  maximise is exactly -log G(x)_y, and argmax gives the smoothed soft
  prediction.  PGD against it is the "randomized PGD" of the paper (fresh
  noise at every step); S-Full against it needs no other change.  A call
  costs M forward+backward passes (``passes_per_call``).
- :func:`predict` and :func:`certify`: Cohen, Rosenfeld & Kolter (2019),
  PREDICT and CERTIFY for the hard smoothed classifier g, with exact
  binomial tests (``scipy.stats.binomtest``; Clopper-Pearson bounds).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

ABSTAIN = -1


class SmoothedSoftClassifier(nn.Module):
    """log E_n[softmax f(x + n)] with `samples` Gaussian draws of std `sigma`."""

    def __init__(self, model: nn.Module, sigma: float = 0.25, samples: int = 5,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if sigma <= 0 or samples < 1:
            raise ValueError("sigma must be positive and samples at least 1")
        self.model, self.sigma, self.samples, self.generator = model, sigma, samples, generator

    @property
    def passes_per_call(self) -> int:
        return self.samples

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        repeated = x.repeat_interleave(self.samples, dim=0)
        noise = torch.randn(repeated.shape, generator=self.generator, device=x.device, dtype=x.dtype)
        probs = self.model(repeated + self.sigma * noise).softmax(dim=1)
        mean = probs.view(n, self.samples, -1).mean(dim=1)
        return mean.clamp_min(torch.finfo(mean.dtype).tiny).log()


@dataclass(frozen=True)
class Certificate:
    prediction: Tensor  # (N,) long, ABSTAIN (-1) where the test abstained
    radius: Tensor  # (N,) certified L2 radius sigma * Phi^-1(p_lower); 0 when abstaining
    p_lower: Tensor  # (N,) lower confidence bound on the top class probability


@torch.no_grad()
def sample_counts(model: nn.Module, x: Tensor, sigma: float, num: int, batch_size: int = 1000,
                  generator: torch.Generator | None = None) -> Tensor:
    """Class counts of f(x + n) over `num` noise draws, per image: (N, K) long."""
    rows = []
    for img in x:
        counts: Tensor | None = None
        remaining = num
        while remaining > 0:
            this = min(batch_size, remaining)
            batch = img.expand(this, *img.shape)
            noise = torch.randn(batch.shape, generator=generator, device=x.device, dtype=x.dtype)
            logits = model(batch + sigma * noise)
            part = torch.bincount(logits.argmax(dim=1), minlength=logits.shape[1])
            counts = part if counts is None else counts + part
            remaining -= this
        assert counts is not None
        rows.append(counts)
    return torch.stack(rows)


def predict(model: nn.Module, x: Tensor, sigma: float, num: int = 100_000, alpha: float = 0.001,
            batch_size: int = 1000, generator: torch.Generator | None = None) -> Tensor:
    """PREDICT: the smoothed class, or ABSTAIN when the top two are not separated at level alpha."""
    from scipy.stats import binomtest

    counts = sample_counts(model, x, sigma, num, batch_size, generator)
    top2 = counts.topk(2, dim=1)
    out = []
    for (c1, c2), (i1, _) in zip(top2.values.tolist(), top2.indices.tolist(), strict=True):
        significant = binomtest(c1, c1 + c2, 0.5).pvalue <= alpha
        out.append(i1 if significant else ABSTAIN)
    return torch.tensor(out, dtype=torch.long, device=x.device)


def certify(model: nn.Module, x: Tensor, sigma: float, n0: int = 100, num: int = 100_000,
            alpha: float = 0.001, batch_size: int = 1000,
            generator: torch.Generator | None = None) -> Certificate:
    """CERTIFY: guess the class with n0 samples, lower-bound its probability with n samples
    (one-sided Clopper-Pearson at level alpha) and return the radius sigma * Phi^-1(p_lower)."""
    from scipy.stats import binomtest, norm

    guess = sample_counts(model, x, sigma, n0, batch_size, generator).argmax(dim=1)
    counts = sample_counts(model, x, sigma, num, batch_size, generator)
    preds, radii, lows = [], [], []
    for c_hat, row in zip(guess.tolist(), counts, strict=True):
        n_a = int(row[c_hat])
        # A two-sided (1 - 2 alpha) interval's lower end is the one-sided (1 - alpha) bound.
        p_lower = binomtest(n_a, num).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low
        lows.append(p_lower)
        if p_lower < 0.5:
            preds.append(ABSTAIN)
            radii.append(0.0)
        else:
            preds.append(c_hat)
            radii.append(sigma * float(norm.ppf(p_lower)))
    dev = x.device
    return Certificate(torch.tensor(preds, dtype=torch.long, device=dev),
                       torch.tensor(radii, device=dev), torch.tensor(lows, device=dev))
