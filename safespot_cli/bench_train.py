"""The trainer's speed behind `safespot bench --sections train`.

Images per second of :func:`training.trainer.train_step` (the recipe's attack
passes plus the training pass, no data loading) for each recipe, precision
(fp32, bf16 autocast) and memory layout (channels-last, NCHW).  Configurations
are measured in interleaved rounds and each keeps its median, so a shared
machine's drift hits every row alike; ratios are against the trainer's default
(fp32, channels-last) of the same recipe in the same run.
"""

from __future__ import annotations

import copy
import statistics
from typing import Any

import torch

from models.normalize import Classifier
from safespot.training import Recipe
from safespot_cli.bench_search import calls_per_s
from training.trainer import train_step, use_layout

# The recipes we train with: the warm-up of the shipped models, cifar10's
# safe-spot-aware epochs (a 5-step PGD attack, a quarter of each batch from x_s*)
# the photo model's PGD-2 adversarial epochs at L-inf 4/255, and TRADES with the same two steps.
TRAIN_RECIPES = {
    "adv-fast": Recipe("adv-fast"),
    "s-fgsm-adv-pgd5": Recipe("s-fgsm-adv", attack="pgd", attack_steps=5, attack_step=0.35, safe_fraction=0.25),
    "adv-pgd2": Recipe("adv-pgd", eps=4 / 255, attack_steps=2, attack_step=0.5),
    "trades2": Recipe("trades", eps=4 / 255, attack_steps=2, attack_step=0.5),
}


def measure_training(model: Classifier, images: torch.Tensor, labels: torch.Tensor, recipes: list[str],
                     limit: float | None = None, rounds: int = 3, seconds: float = 3.0) -> dict[str, Any]:
    """Training-step throughput per (recipe, precision, layout); `limit` in passes/s."""
    unknown = sorted(set(recipes) - set(TRAIN_RECIPES))
    if unknown:
        raise ValueError(f"unknown training recipes {unknown}; choose from {sorted(TRAIN_RECIPES)}")
    configs = [(r, p, cl) for r in recipes for p in ("fp32", "bf16") for cl in (True, False)]
    runners = {c: _Runner(model, images, labels, TRAIN_RECIPES[c[0]], c[1], c[2]) for c in configs}
    samples: dict[tuple[str, str, bool], list[float]] = {c: [] for c in configs}
    for _ in range(rounds):
        for c in configs:
            samples[c].append(runners[c].images_per_s(seconds))
    rows = []
    for recipe, precision, channels_last in configs:
        rate = statistics.median(samples[(recipe, precision, channels_last)])
        reference = statistics.median(samples[(recipe, "fp32", True)])
        passes = TRAIN_RECIPES[recipe].passes_per_image + TRAIN_RECIPES[recipe].training_passes
        row = {"recipe": recipe, "precision": precision, "channels_last": channels_last,
               "images_per_s": round(rate, 1), "vs_default": round(rate / reference, 3),
               "passes_per_image": passes, "passes_per_s": round(rate * passes, 1)}
        if limit:
            row["vs_fp32_limit"] = round(rate * passes / limit, 3)
        rows.append(row)
    return {"batch": len(images), "rounds": rounds, "seconds_per_sample": seconds, "rows": rows}


class _Runner:
    """A private copy of the model and its optimiser, stepping on one fixed batch."""

    def __init__(self, model: Classifier, x: torch.Tensor, y: torch.Tensor, recipe: Recipe,
                 precision: str, channels_last: bool) -> None:
        self.model = use_layout(copy.deepcopy(model), channels_last)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.x, self.y = x, y
        self.recipe, self.precision = recipe, precision
        self.gen = torch.Generator(device=x.device).manual_seed(0)
        self._step()  # warm-up: kernels, allocator, autocast caches

    def _step(self) -> None:
        train_step(self.model, self.model, self.opt, self.x, self.y, self.recipe, self.gen, self.precision)

    def images_per_s(self, seconds: float) -> float:
        return calls_per_s(self._step, self.x.device, seconds) * len(self.x)
