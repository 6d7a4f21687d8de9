"""Out-of-distribution detection with safe spots (docs/ood.md), and its baselines.

Every score here is an *in-distribution* score: higher means "looks like the
training distribution", low means OOD.  Metrics then treat in-distribution
as the positive class (AUROC, AUPR-in, FPR at 95% TPR).

Scores, for logits f(x) (N, K):

- ``safespot_score``: the paper's D(x) = mu * MSP(x) + (1 - mu) * MSP(x_a*),
  where x_a* is the verification attack's worst point on the safe spot the
  search found for x (``SearchResult.msp`` and ``.msp_adv``);
- ``msp_score``: max softmax probability (Hendrycks & Gimpel, 2017); the
  Outlier Exposure baseline is this score on an OE-trained model;
- ``energy_score``: T * logsumexp(f(x) / T), the negative free energy (Liu et
  al., 2020), so that low energy (in-distribution) gives a high score;
- ``MahalanobisDetector``: minus the smallest squared Mahalanobis distance of
  one layer's features to the class means under one tied covariance (Lee et
  al., 2018), Ledoit-Wolf shrinkage; ``LayerwiseMahalanobis`` averages it
  over layers (their feature ensemble with equal weights: the learned
  weights and the input preprocessing need OOD validation data).

Training (the outlier part of the paper's objective), for outliers x~:

    gamma * KL(uniform || softmax f(x~))  -  lambda * CE(f(x~_a*), c(x~))

with c(x~) the model's prediction on x~ and x~_a* the adversarial example of
x~'s cheap safe-spot candidate, built exactly as the safe-spot-aware training
recipes build it for training images (:func:`safespot.training.training_inputs`:
a targeted step towards c(x~), then the recipe's attack): outliers should get
low confidence *and* no safe spot.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from safespot.training import Recipe, training_inputs

# ------------------------------------------------------------------ scores


def msp_score(logits: Tensor) -> Tensor:
    """Maximum softmax probability (N,) in [1/K, 1]."""
    return logits.softmax(dim=1).amax(dim=1)


def energy_score(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Negative free energy T * logsumexp(f / T) (N,): high in-distribution, low OOD."""
    return temperature * torch.logsumexp(logits / temperature, dim=1)


def safespot_score(msp: Tensor, msp_adv: Tensor, mu: float) -> Tensor:
    """D(x) = mu * MSP(x) + (1 - mu) * MSP(x_a*), in [1/K, 1]; low means OOD."""
    if not 0.0 <= mu <= 1.0:
        raise ValueError(f"mu must lie in [0, 1], got {mu}")
    return mu * msp + (1.0 - mu) * msp_adv


def threshold_for_tpr(scores_in: Tensor, tpr: float = 0.95) -> float:
    """The largest threshold t with at least `tpr` of in-distribution scores >= t.

    The service flags ``score < t``; ties only raise the true-positive rate.
    """
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must lie in (0, 1], got {tpr}")
    s = scores_in.detach().flatten().double().sort().values
    if s.numel() == 0:
        raise ValueError("need at least one in-distribution score")
    # At most floor((1 - tpr) * n) scores may fall below the threshold.
    k = math.floor((1.0 - tpr) * s.numel() + 1e-9)
    return float(s[min(k, s.numel() - 1)])


# ------------------------------------------------------- penultimate features


def last_linear(model: nn.Module) -> nn.Linear:
    """The classification layer: the last ``nn.Linear`` registered in `model`.

    True of every architecture in :mod:`models.architectures` (cifar_cnn's
    ``classifier[-1]``, PreAct-ResNet's ``linear``, WRN's and ResNet-50's ``fc``).
    """
    found = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to read features from")
    return found[-1]


@contextmanager
def capture_features(model: nn.Module) -> Iterator[list[Tensor]]:
    """Collect the input of the last Linear layer (the penultimate features) of each forward.

    Yields a list that receives one detached (N, D) tensor per call of the model.
    """
    store: list[Tensor] = []

    def hook(_module: nn.Module, inputs: tuple[Tensor, ...], _output: Tensor) -> None:
        store.append(inputs[0].detach().flatten(1))

    handle = last_linear(model).register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


@torch.no_grad()
def logits_and_features(model: nn.Module, x: Tensor, batch_size: int = 500) -> tuple[Tensor, Tensor]:
    """Logits (N, K) and penultimate features (N, D) in one pass, chunked, without a graph."""
    logits = []
    with capture_features(model) as feats:
        for chunk in x.split(batch_size):
            logits.append(model(chunk))
    return torch.cat(logits), torch.cat(feats)


@torch.no_grad()
def layer_features(model: nn.Module, x: Tensor, batch_size: int = 500,
                   max_layers: int = 8) -> tuple[Tensor, list[Tensor]]:
    """Logits (N, K) and features per layer: the channel means of ReLU outputs (N, C)
    at up to ``max_layers - 1`` evenly spaced depths, then the penultimate features.

    Measured on the shipped CIFAR-10 models: the penultimate features alone put
    Gaussian noise *closer* to the class means than test images (AUROC 0.19 on
    `cifar10`), every earlier layer separates it (0.99+).
    """
    calls: list[Tensor] = []

    def hook(_module: nn.Module, _inputs: tuple[Tensor, ...], output: Tensor) -> None:
        if output.ndim == 4:  # a convolutional activation: (N, C, H, W) -> (N, C)
            calls.append(output.detach().mean(dim=(2, 3)))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    logits, per_chunk = [], []
    try:
        with capture_features(model) as penultimate:
            for chunk in x.split(batch_size):
                calls.clear()
                logits.append(model(chunk))
                per_chunk.append(list(calls))
    finally:
        for h in handles:
            h.remove()
    depth = len(per_chunk[0]) if per_chunk else 0
    keep = sorted({round(i * (depth - 1) / max(1, max_layers - 2)) for i in range(max_layers - 1)}) if depth else []
    layers = [torch.cat([c[i] for c in per_chunk]) for i in keep if i < depth]
    return torch.cat(logits), [*layers, torch.cat(penultimate)]


# --------------------------------------------------------------- Mahalanobis


@dataclass(frozen=True)
class MahalanobisDetector:
    """Class-conditional Gaussians with a tied covariance on penultimate features.

    score(z) = - min_k (z - m_k)^T P (z - m_k), with m_k the class means and P
    the (pseudo-)inverse of the shared covariance; computed in float64.
    """

    means: Tensor  # (K, D)
    precision: Tensor  # (D, D)

    @classmethod
    def fit(cls, features: Tensor, labels: Tensor, shrinkage: str = "ledoit-wolf",
            ridge: float = 1e-6) -> MahalanobisDetector:
        """Fit on in-distribution features (N, D) with labels 0..K-1 (all present).

        The tied covariance of penultimate features is ill-conditioned (ReLU
        features are often low-rank, and D approaches N per class), so by
        default it is shrunk towards a scaled identity with the Ledoit-Wolf
        estimate of the shrinkage (scikit-learn's).  ``shrinkage="ridge"``
        adds `ridge` times the mean variance instead (the older behaviour).
        """
        z = features.detach().double()
        y = labels.detach().long().to(z.device)
        classes = int(y.max()) + 1 if y.numel() else 0
        counts = torch.bincount(y, minlength=classes)
        if classes < 2 or bool((counts == 0).any()):
            raise ValueError(f"need samples of every class 0..K-1 (K >= 2); got counts {counts.tolist()}")
        means = torch.zeros(classes, z.shape[1], dtype=z.dtype, device=z.device)
        means.index_add_(0, y, z)
        means /= counts[:, None].to(z.dtype)
        centered = z - means[y]
        if shrinkage == "ledoit-wolf":
            from sklearn.covariance import LedoitWolf

            fitted = LedoitWolf(assume_centered=True).fit(centered.cpu().numpy())
            return cls(means, torch.from_numpy(fitted.precision_).to(z))
        if shrinkage != "ridge":
            raise ValueError(f"unknown shrinkage {shrinkage!r}; choose ledoit-wolf or ridge")
        cov = centered.T @ centered / z.shape[0]
        cov += torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device) * (
            ridge * float(cov.diagonal().mean().clamp_min(1e-12)))
        return cls(means, torch.linalg.pinv(cov, hermitian=True))

    def distances(self, features: Tensor) -> Tensor:
        """Squared Mahalanobis distances (N, K) to every class mean."""
        z = features.detach().to(self.means)
        d = z[:, None, :] - self.means[None]  # (N, K, D)
        return torch.einsum("nkd,de,nke->nk", d, self.precision, d)

    def score(self, features: Tensor) -> Tensor:
        """In-distribution score (N,): minus the distance to the closest class mean."""
        return -self.distances(features).amin(dim=1)


@dataclass(frozen=True)
class LayerwiseMahalanobis:
    """One :class:`MahalanobisDetector` per layer of :func:`layer_features`; the score is
    the mean of the layers' scores, each standardised by its fit images' scores (so that
    no layer dominates by its dimension)."""

    layers: tuple[MahalanobisDetector, ...]
    loc: Tensor  # (L,) mean score of the fit images per layer
    scale: Tensor  # (L,) their standard deviation

    @classmethod
    def fit(cls, layer_feats: list[Tensor], labels: Tensor, shrinkage: str = "ledoit-wolf") -> LayerwiseMahalanobis:
        layers = tuple(MahalanobisDetector.fit(f, labels, shrinkage=shrinkage) for f in layer_feats)
        fitted = torch.stack([d.score(f) for d, f in zip(layers, layer_feats, strict=True)], dim=1)
        return cls(layers, fitted.mean(dim=0), fitted.std(dim=0).clamp_min(1e-12))

    def layer_scores(self, layer_feats: list[Tensor]) -> Tensor:
        """Standardised scores (N, L), one column per layer."""
        raw = torch.stack([d.score(f) for d, f in zip(self.layers, layer_feats, strict=True)], dim=1)
        return (raw - self.loc) / self.scale

    def score(self, layer_feats: list[Tensor]) -> Tensor:
        return self.layer_scores(layer_feats).mean(dim=1)


# ------------------------------------------------------ outlier training terms


def kl_to_uniform(logits: Tensor) -> Tensor:
    """KL(uniform || softmax(logits)) per sample (N,): 0 exactly for uniform predictions.

    Equals the Outlier Exposure loss (cross-entropy to the uniform label) minus log K.
    """
    k = logits.shape[1]
    return -math.log(k) - logits.log_softmax(dim=1).mean(dim=1)


def default_ce_cap(num_classes: int) -> float:
    """log K: the adversarial cross-entropy of an outlier whose attacked point is no
    more confident in c(x~) than a uniform guess."""
    return math.log(num_classes)


def outlier_recipe(recipe: Recipe) -> Recipe:
    """How outliers' x~_a* are built under `recipe`: its own construction for the
    safe-spot-aware recipes, else S-FGSM followed by the recipe's kind of attack
    (PGD for adv-pgd, the fast FGSM-RS step otherwise) at the recipe's budget."""
    if recipe.name in ("s-fgsm-adv", "s-pgd-adv"):
        return recipe
    return Recipe(name="s-fgsm-adv", norm=recipe.norm, eps=recipe.eps, delta=recipe.delta,
                  attack="pgd" if recipe.name == "adv-pgd" else "fast",
                  attack_steps=recipe.attack_steps, attack_step=recipe.attack_step,
                  safe_direction=recipe.safe_direction)


def outlier_terms(logits_out: Tensor, logits_adv: Tensor | None, labels: Tensor | None,
                  gamma: float, lam: float, ce_cap: float | None = None) -> tuple[Tensor, dict[str, float]]:
    """gamma * mean KL(uniform || softmax f(x~)) - lam * mean CE(f(x~_a*), c(x~)).

    `ce_cap` bounds each outlier's adversarial cross-entropy (``min(CE, cap)``):
    once an outlier's attacked point gives c(x~) less than ``exp(-cap)``, the
    term stops pushing.  The paper's term is unbounded (``ce_cap=None``);
    maximising it without bound rewards *confident wrong* predictions at x~_a*,
    which raise MSP(x~_a*) and so work against the score D, and can diverge.
    Returns the scalar loss and floats for logging.
    """
    kl = kl_to_uniform(logits_out)
    loss = gamma * kl.mean()
    logs = {"ood_kl": float(kl.detach().mean())}
    if lam != 0.0:
        if logits_adv is None or labels is None:
            raise ValueError("the safe-spot term needs the attacked outliers' logits and labels")
        ce = F.cross_entropy(logits_adv, labels, reduction="none")
        capped = ce if ce_cap is None else ce.clamp(max=ce_cap)
        loss = loss - lam * capped.mean()
        logs |= {"ood_adv_ce": float(ce.detach().mean()),
                 "ood_safe": float((logits_adv.detach().argmax(1) == labels).float().mean())}
    return loss, logs


def outlier_inputs(model: nn.Module, x_out: Tensor, recipe: Recipe, *, lam: float,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor | None]:
    """What the outlier terms feed to the training pass: ``(inputs, labels)``.

    `x_out` (N, C, H, W) in [0,1].  With ``lam == 0`` (Outlier Exposure) the
    inputs are the outliers themselves and labels None; otherwise the outliers
    followed by their attacked points x~_a* (2N images) and the labels c(x~)
    the attack moves away from.  Both run with the model in eval mode (they
    must not update BatchNorm statistics); its mode is restored after.  The
    inputs are then forwarded *in train mode, in the same batch as the
    training images*, and :func:`outlier_terms` scores their logits: terms
    scored in eval mode while the cross-entropy trains in train mode let the
    network flatten its eval-mode outputs, which the training loss never sees
    (measured in docs/ood.md: clean accuracy fell by 20 points in 20 steps).
    """
    if lam == 0.0:
        return x_out, None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            labels = model(x_out).argmax(dim=1)
        x_adv = training_inputs(model, x_out, labels, outlier_recipe(recipe), generator).detach()
    finally:
        model.train(was_training)
    return torch.cat([x_out, x_adv]), labels


def score_outlier_logits(logits: Tensor, labels: Tensor | None, gamma: float, lam: float,
                         ce_cap: float | None = None) -> tuple[Tensor, dict[str, float]]:
    """:func:`outlier_terms` on the logits of :func:`outlier_inputs`' inputs (outliers, then
    their attacked points when `labels` is given)."""
    n = len(logits) if labels is None else len(labels)
    return outlier_terms(logits[:n], logits[n:] if labels is not None else None, labels, gamma, lam, ce_cap)


def outlier_loss(model: nn.Module, x_out: Tensor, recipe: Recipe, *, gamma: float, lam: float,
                 ce_cap: float | None = None,
                 generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
    """The outlier part of the paper's training objective for a batch of outliers, on its own.

    :func:`outlier_inputs` then one forward of `model` in whatever mode it is
    in, and :func:`outlier_terms`.  The trainer does not call this: it forwards
    the outlier inputs in the training images' batch (training/ood_training.py).
    Costs one forward+backward pass when ``lam == 0`` (Outlier Exposure), plus
    the recipe's attack passes and a second one otherwise.
    """
    inputs, labels = outlier_inputs(model, x_out, recipe, lam=lam, generator=generator)
    return score_outlier_logits(model(inputs), labels, gamma, lam, ce_cap)
