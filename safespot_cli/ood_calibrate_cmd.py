"""`safespot ood-calibrate`: choose mu and the OOD threshold on validation data, store them
in the checkpoint."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from safespot_cli import common
from safespot_cli.errors import UsageError, usage_errors

HELP = """Choose mu of the OOD score D(x) = mu*MSP(x) + (1-mu)*MSP(x_a*) and the threshold that
keeps 95% of in-distribution images unflagged, on a validation split carved from
the TRAINING data, never from the OOD test sets:

  in-distribution: the training images the trainer held out (the checkpoint
                   records the data set, the seed and the holdout count), or
                   --val-data NPZ for a checkpoint that does not record them;
  outliers:        the validation part of x_outlier_train in --outliers (the
                   part the outlier loss never trained on).

mu maximises the validation AUROC over 0, 0.05, ..., 1 (ties: lower FPR at 95%
TPR, then larger mu), unless --mu fixes it.  The result goes into the
checkpoint's `ood` metadata (mu, threshold, tpr, val_auroc, chosen_on, gamma,
lambda, search), which the service uses for `ood_flag`.  The file is re-saved
(its sha256 changes), in place unless --out.

Choosing gamma and lambda needs trained models, so it is a procedure, not an
option: train short candidate runs that differ only in --ood-gamma/--ood-lambda
(same recipe, seed, --limit and --holdout, so all share one validation split),
run this command on each with the same search (e.g. --preset fast --n-in 500
--n-out 500 --out CANDIDATE-cal.safetensors), and keep the pair with the best
val_auroc (then lower val_fpr95) whose held-out clean and PGD accuracy
(metrics.holdout in the checkpoint) stay within about 2 points of the lambda=0
run.  Train the final model with that pair and calibrate it with the preset
the service will use.

examples:
  safespot ood-calibrate --model runs/ood/model.safetensors --outliers data/tinyimagenet32.npz
  safespot ood-calibrate --model ood.safetensors --outliers tiny.npz --preset fast --out ood-fast.safetensors"""


def register(sub: Any) -> None:
    p = common.add_command(sub, "ood-calibrate", "choose the OOD score's mu and threshold on validation data",
                           HELP, run)
    common.add_model_args(p)
    p.add_argument("--outliers", required=True, help="npz with x_outlier_train (its validation part is used)")
    common.add_option(p, "--data-dir", help="where the training set lives (default: $SAFESPOT_DATA_DIR)")
    p.add_argument("--val-data", default=None,
                   help="in-distribution validation images (.npz with x) instead of the trainer's holdout")
    p.add_argument("--n-in", type=int, default=1000, help="in-distribution validation images (at most)")
    p.add_argument("--n-out", type=int, default=1000, help="validation outliers (at most)")
    p.add_argument("--tpr", type=float, default=0.95, help="in-distribution true-positive rate to keep")
    p.add_argument("--mu", type=float, default=None, help="fix mu instead of choosing it")
    p.add_argument("--gamma", type=float, default=None, help="record gamma (if the checkpoint does not)")
    p.add_argument("--lambda", dest="lam", type=float, default=None, help="record lambda (likewise)")
    common.add_recorded_search_args(p)
    p.add_argument("--out", default=None, help="write the calibrated checkpoint here (default: in place)")
    common.add_option(p, "--json")


def heldout_images(info: Any, data_dir: str | None, n: int) -> tuple[np.ndarray, str]:
    """Up to n training images the trainer held out (never trained on) for this checkpoint."""
    from training.data import load_dataset
    from training.trainer import (
        holdout_split,  # the trainer's own split: the single source of truth
    )

    config = info.training.get("config") or {}
    holdout = int(info.data.get("holdout") or 0)
    if not config or holdout <= 0:
        raise UsageError("the checkpoint records no held-out training images (trained elsewhere?); "
                         "give --val-data NPZ with in-distribution images it never trained on")
    data = load_dataset(config.get("data", "cifar10"), "train", data_dir or None)
    if "images" in info.data and int(info.data["images"]) != len(data):
        raise UsageError(f"the training set found has {len(data)} images, the checkpoint was trained on "
                         f"{info.data['images']}: point --data-dir at the same data")
    _, held = holdout_split(len(data), holdout, int(config.get("seed", 0)), info.data.get("limit"))
    held = held[:n]
    return data.x[held], (f"{info.data.get('source', config.get('data'))}: {len(held)} of the {holdout} "
                          f"training images the trainer held out (seed {config.get('seed', 0)})")


def recorded_weight(info: Any, key: str, given: float | None) -> float | None:
    """gamma or lambda: what training recorded, else what the user gives; never a contradiction."""
    recorded = info.ood.get(key)
    if recorded is not None and given is not None and float(recorded) != given:
        raise UsageError(f"the checkpoint was trained with {key}={recorded}, not {given}")
    return recorded if recorded is not None else given


def run(args: argparse.Namespace) -> int:
    from models.checkpoint import save_checkpoint
    from safespot.ood import safespot_score, threshold_for_tpr
    from safespot.ood_eval import choose_mu, ood_metrics, safespot_parts
    from training.data import DataError, load_dataset, load_images, strided, to_tensor
    from training.ood_training import OUTLIER_KEY, OUTLIER_SPLIT_SEED, OUTLIER_VAL, outlier_split

    if not 0 < args.tpr <= 1:
        raise UsageError("--tpr must lie in (0, 1]")
    if args.mu is not None and not 0 <= args.mu <= 1:
        raise UsageError("--mu must lie in [0, 1]")
    loaded, device = common.open_model(args)
    info = loaded.info
    trained = info.ood.get("training", {})
    gamma, lam = recorded_weight(info, "gamma", args.gamma), recorded_weight(info, "lambda", args.lam)
    with usage_errors(DataError):
        if args.val_data:
            val = load_dataset(args.val_data, "train", args.data_dir)
            x_in, in_desc = strided(val.x, args.n_in), f"{Path(args.val_data).name}: {min(args.n_in, len(val))} images (given)"
        else:
            x_in, in_desc = heldout_images(info, args.data_dir, args.n_in)
        outliers = load_images(args.outliers, OUTLIER_KEY)
        n_val = int(trained.get("val_outliers", OUTLIER_VAL))
        seed = int(trained.get("split_seed", OUTLIER_SPLIT_SEED))
        _, val_idx = outlier_split(len(outliers), n_val, seed)
        x_out = strided(outliers[val_idx], args.n_out)
    out_desc = (f"{Path(args.outliers).name}: {len(x_out)} of the {n_val} validation outliers of "
                f"x_outlier_train (split seed {seed}; never trained on)")

    cfg, search = common.recorded_search_config(args, info)

    def parts(x: np.ndarray, desc: str) -> Any:
        with common.progress_bar(len(x), desc) as update:
            return safespot_parts(loaded.model, to_tensor(x, device), cfg, update)

    (msp_in, adv_in, pass_in), (msp_out, adv_out, pass_out) = parts(x_in, "validation in"), parts(x_out, "validation out")
    mu, sweep = choose_mu(msp_in, adv_in, msp_out, adv_out) if args.mu is None else (args.mu, [])
    d_in, d_out = safespot_score(msp_in, adv_in, mu), safespot_score(msp_out, adv_out, mu)
    threshold = threshold_for_tpr(d_in, args.tpr)
    metrics = ood_metrics(d_in, d_out)
    calibration = {
        "mu": mu, "threshold": threshold, "tpr": float((d_in >= threshold).double().mean()),
        "target_tpr": args.tpr, "val_fpr": float((d_out >= threshold).double().mean()),
        "val_auroc": metrics["auroc"], "val_aupr": metrics["aupr"], "val_fpr95": metrics["fpr95"],
        "chosen_on": {"in_distribution": in_desc, "outliers": out_desc,
                      "criterion": ("max validation AUROC over mu in 0..1 step 0.05" if args.mu is None
                                    else "mu given (--mu)")},
        "gamma": gamma, "lambda": lam, "search": search,
        "passes_per_image": {"in": round(float(pass_in.double().mean()), 1),
                             "out": round(float(pass_out.double().mean()), 1)},
    }
    info.ood = dict(info.ood) | calibration
    out = Path(args.out) if args.out else loaded.path
    sha = save_checkpoint(loaded.model, info, out)
    print(f"mu={mu:g} threshold={threshold:.6f} (flag when D < threshold) tpr={calibration['tpr']:.4f} "
          f"val_auroc={metrics['auroc']:.4f} val_fpr95={metrics['fpr95']:.4f}", file=sys.stderr)
    print(f"{out} sha256 {sha}")
    if args.json_out:
        common.write_json(args.json_out, {
            "model": {"path": str(out), "sha256": sha, "previous_sha256": loaded.sha256},
            "ood": info.ood, "mu_sweep": sweep, "scores": {"in": d_in.tolist(), "out": d_out.tolist()}})
    return 0
