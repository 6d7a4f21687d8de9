"""Certified radii before and after safe spots, one image at a time.

The smoothing table (docs/results.md) certifies the hard smoothed classifier
g (Cohen et al., 2019) on an original x_o and on the safe spot that S-Full
found against the smoothed soft classifier G, and attacks G empirically
(randomized PGD, the paper's "empirical" row).  With n = 100,000 noise
draws per certificate a CPU spends about a minute per image, so the work is
cut per image: :func:`certify_image` depends only on the image, its index
and the settings (its random stream is seeded from them), so a run stopped
half-way and resumed gives the same lines as one uninterrupted run.
:func:`summarize` turns the lines into the table.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from safespot.attacks import pgd
from safespot.config import SearchConfig
from safespot.search import find_safe_spots
from safespot.smoothing import ABSTAIN, SmoothedSoftClassifier, certify

RADII = (0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class CertifySettings:
    """Everything a line depends on besides the image; a resumed run must match it."""

    sigma: float = 0.25
    samples: int = 5  # M noise draws per pass of the search and of the empirical attack
    n0: int = 100
    num: int = 100_000
    alpha: float = 0.001
    attack_eps: float = 0.5  # L2 budget of the empirical randomized-PGD row
    attack_steps: int = 20
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def certify_image(model: nn.Module, x: Tensor, y: int, index: int, config: SearchConfig,
                  settings: CertifySettings) -> dict[str, Any]:
    """One line of the table for image `index` (x: (C, H, W) on the 8-bit grid, y: its label).

    The search runs against G with its predicted label, as the service would;
    both points are then certified and attacked against the true label.
    """
    started = time.perf_counter()
    gen = torch.Generator(device=x.device).manual_seed(settings.seed * 1_000_003 + index)
    smoothed = SmoothedSoftClassifier(model, sigma=settings.sigma, samples=settings.samples, generator=gen)
    res = find_safe_spots(smoothed, x[None], config)
    line: dict[str, Any] = {"index": index, "label": y, "found": bool(res.found[0]),
                            "passes": int(res.grad_evals_per_image[0])}
    labels = torch.tensor([y], device=x.device)
    for name, point in (("original", x[None]), ("safe_spot", res.x_safe)):
        cert = certify(model, point, settings.sigma, n0=settings.n0, num=settings.num,
                       alpha=settings.alpha, generator=gen)
        broken = pgd(smoothed, point, labels, norm="l2", eps=settings.attack_eps,
                     steps=settings.attack_steps, generator=gen).success
        with torch.no_grad():
            clean = int(smoothed(point).argmax(dim=1)[0])
        line[name] = {"prediction": int(cert.prediction[0]), "radius": round(float(cert.radius[0]), 6),
                      "p_lower": round(float(cert.p_lower[0]), 6), "smoothed_prediction": clean,
                      "empirical_robust": clean == y and not bool(broken[0])}
    line["seconds"] = round(time.perf_counter() - started, 2)
    return line


def summarize(lines: Iterable[Mapping[str, Any]], radii: Sequence[float] = RADII) -> dict[str, Any]:
    """Certified accuracy (correct and radius >= r) per radius, mean radius of the correct,
    abstention and the empirical robust accuracy, for the originals and the safe spots."""
    rows = list(lines)
    out: dict[str, Any] = {"images": len(rows)}
    if not rows:
        return out
    for name in ("original", "safe_spot"):
        correct = [r[name]["prediction"] == r["label"] for r in rows]
        radius = [r[name]["radius"] for r in rows]
        part: dict[str, Any] = {f"certified_acc@{t:g}": _share(c and rad >= t for c, rad in zip(correct, radius, strict=True))
                                for t in (0.0, *radii)}
        kept = [rad for c, rad in zip(correct, radius, strict=True) if c]
        part["mean_radius_correct"] = round(sum(kept) / len(kept), 4) if kept else 0.0
        part["abstain_rate"] = _share(r[name]["prediction"] == ABSTAIN for r in rows)
        part["empirical_robust_acc"] = _share(r[name]["empirical_robust"] for r in rows)
        out[name] = part
    out["found_rate"] = _share(r["found"] for r in rows)
    out["passes_per_image"] = round(sum(r["passes"] for r in rows) / len(rows), 1)
    out["seconds_per_image"] = round(sum(r["seconds"] for r in rows) / len(rows), 1)
    return out


def _share(flags: Iterable[bool]) -> float:
    values = list(flags)
    return round(sum(values) / len(values), 4) if values else float("nan")
