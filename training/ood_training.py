"""Auxiliary outliers for the trainer: the OOD terms of the paper's objective (docs/ood.md).

``outlier_loss(path, cfg, gamma=, lam=)`` returns an :data:`training.trainer.ExtraLoss`
whose terms the trainer adds to each step's cross-entropy:

    gamma * KL(uniform || softmax f(x~)) - lam * min(CE(f(x~_a*), c(x~)), cap)

(:func:`safespot.ood.outlier_loss`).  ``lam = 0`` is Outlier Exposure (the OE
baseline); ``gamma = 0``, ``lam = 0`` adds nothing.

Outliers: the array ``x_outlier_train`` of the given ``.npz`` (uint8 NHWC),
minus a fixed validation part (:func:`outlier_split`) kept for choosing mu
and the threshold (``safespot ood-calibrate``).  The OOD *test* sets are
never read here.  Each step draws its batch from a generator seeded by
(seed, step, rank), so a resumed run sees the same outliers, and applies the
trainer's augmentation (random crop, flip).  x~_a* is built the way the
training images of the same epoch are attacked (:func:`safespot.ood.outlier_recipe`
of the recipe in force, so a curriculum's cheap warm-up stays cheap).

c(x~) and the attack are computed with the model in eval mode (they must not
touch BatchNorm statistics); the outliers and x~_a* are then forwarded in
train mode in the same batch as the training images, as Outlier Exposure
does, so both terms see the normalisation the cross-entropy trains.  (Scoring
them in eval mode, as this module did until 2026-12-07, let the network
flatten its eval-mode outputs, in-distribution ones included: the old `ood`
and `oe` lost their robustness that way; docs/ood.md.)  The running
statistics then average training images and outliers, the ones the model is
scored with.  The parameters (gamma, lambda, split, batch) are exposed as
``.params``; the trainer writes them into the checkpoint's ``ood`` metadata.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from safespot.ood import (
    default_ce_cap,
    last_linear,
    outlier_inputs,
    outlier_recipe,
    score_outlier_logits,
)
from safespot.training import Recipe
from training.data import DataError, holdout_split, load_dataset, load_images, to_tensor
from training.ood_sets import OUTLIER_KEY, OUTLIER_SPLIT_SEED, OUTLIER_VAL
from training.trainer import random_crop_flip  # the trainer's own


def outlier_split(n: int, val: int = OUTLIER_VAL, seed: int = OUTLIER_SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Fixed (train, validation) indices of an outlier set of size n."""
    if not 0 <= val < n:
        raise DataError(f"cannot hold out {val} of {n} outliers")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[val:]), np.sort(order[:val])


def outlier_loss(outliers_path: str | os.PathLike[str], cfg: Any, *, gamma: float, lam: float,
                 batch_size: int | None = None, val: int = OUTLIER_VAL,
                 split_seed: int = OUTLIER_SPLIT_SEED, ce_cap: float | str | None = "log-k") -> Any:
    """An ExtraLoss adding the outlier terms to the training run of `cfg` (a TrainConfig).

    Args:
        batch_size: outliers per step (default: half the training batch, to keep
            CPU cost down; Outlier Exposure used twice the batch on GPUs).
        val: outliers held out for calibration; ``split_seed`` fixes which.
        ce_cap: bound on each outlier's adversarial cross-entropy: ``"log-k"``
            (log of the class count, the default), a number, or None for the
            paper's unbounded term.
    """
    if gamma < 0 or lam < 0:
        raise ValueError("gamma and lambda are weights: give non-negative values")
    x_all = load_images(outliers_path, OUTLIER_KEY)
    train_idx, _ = outlier_split(len(x_all), val, split_seed)
    recipe_at = _recipe_schedule(cfg)
    bs = int(batch_size or max(1, cfg.batch_size // 2))
    fixed_cap = None if ce_cap is None or ce_cap == "log-k" else float(ce_cap)
    rank = int(os.environ.get("RANK", "0"))
    seed = int(cfg.seed)
    augment = bool(getattr(cfg, "augment", True))

    def extra(model: nn.Module, step: int) -> tuple[Tensor, Callable[[Tensor], tuple[Tensor, dict[str, float]]]]:
        device = next(model.parameters()).device
        rng = np.random.default_rng((seed, step, rank, 0x0D))
        batch = np.sort(rng.choice(train_idx, size=min(bs, len(train_idx)), replace=False))
        gen = torch.Generator(device=device)
        gen.manual_seed(int(rng.integers(2**62)))
        x = to_tensor(x_all[batch], device)
        if augment:
            x = random_crop_flip(x, gen)
        cap = default_ce_cap(last_linear(model).out_features) if ce_cap == "log-k" else fixed_cap
        inputs, labels = outlier_inputs(model, x, recipe_at(step), lam=lam, generator=gen)
        return inputs, partial(score_outlier_logits, labels=labels, gamma=gamma, lam=lam, ce_cap=cap)

    extra.params = {  # type: ignore[attr-defined]
        "gamma": gamma, "lambda": lam,
        "training": {"outliers": Path(outliers_path).name, "key": OUTLIER_KEY,
                     "train_outliers": len(train_idx), "val_outliers": val, "split_seed": split_seed,
                     "batch_size": bs, "ce_cap": "log K" if ce_cap == "log-k" else fixed_cap,
                     "augment": augment, "batchnorm": "train mode, in the training images' batch",
                     "attack": outlier_recipe(cfg.recipe).to_dict() if lam else None},
    }
    if lam and getattr(cfg, "warmup", None) is not None and cfg.warmup_epochs > 0:
        extra.params["training"]["warmup_attack"] = outlier_recipe(cfg.warmup).to_dict()  # type: ignore[attr-defined]
    extra.recipe_at = recipe_at  # type: ignore[attr-defined]
    return extra


def _recipe_schedule(cfg: Any) -> Callable[[int], Recipe]:
    """The training recipe in force at a global step: outliers are attacked the way the
    training images of that epoch are (cheaply during a curriculum's warm-up)."""
    if getattr(cfg, "warmup", None) is None or cfg.warmup_epochs <= 0:
        return lambda step: cfg.recipe
    # The trainer's own schedule: `global step = epoch * steps_per_epoch + step`.
    n = len(load_dataset(cfg.data, "train", cfg.data_dir))
    train_idx, _ = holdout_split(n, cfg.holdout, cfg.seed, cfg.limit)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    steps_per_epoch = max(1, len(train_idx) // world // cfg.batch_size)
    return lambda step: cfg.recipe_for(step // steps_per_epoch)
