"""`safespot ood-calibrate`: choose the OOD flag's score and threshold on validation data,
store them in the checkpoint (with ``--score mahalanobis``, the fitted detector too)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from safespot_cli import common
from safespot_cli.errors import UsageError, usage_errors

HELP = """Calibrate the service's OOD flag: the score it uses and the threshold that keeps
95% (--tpr) of in-distribution images unflagged, on a validation split carved
from the TRAINING data, never from the OOD test sets.

scores (--score):
  msp          (default) D(x) = mu*MSP(x) + (1-mu)*MSP(x_a*) from the filter's own
               safe-spot search; mu is chosen here too (below)
  mahalanobis  layer-wise Mahalanobis: class means and one Ledoit-Wolf covariance
               per layer (channel means of the ReLU outputs at up to 7 depths plus
               the penultimate features), fitted on --fit-n images the trainer
               TRAINED on (a fixed stride of the training set the checkpoint
               records, or --fit-data); the score is the mean of the layers'
               standardised scores.  The detector is stored in the checkpoint as
               plain tensors; the service scores each upload as the model reads it
               (one forward pass, no search).  For models whose softmax is more
               confident on non-photos than on photos (the photo model: docs/ood.md)

validation data (both scores):
  in-distribution: the training images the trainer held out (the checkpoint
                   records the data set, the seed and the holdout count), or
                   --val-data NPZ for a checkpoint that does not record them;
  outliers:        the validation part of x_outlier_train in --outliers (the
                   part the outlier loss never trained on).

With msp, mu maximises the validation AUROC over 0, 0.05, ..., 1 (ties: lower
FPR at 95% TPR, then larger mu), unless --mu fixes it.  The outliers never move
the threshold: it is the largest that keeps --tpr of the in-distribution
validation images unflagged; they give val_auroc and val_fpr (and pick mu).
The result goes into the checkpoint's `ood` metadata (msp: mu, threshold, tpr,
val_auroc, chosen_on, gamma, lambda, search; mahalanobis: score, threshold, tpr,
val_auroc, chosen_on, fit, detector), which the service uses for `ood_flag`;
a new calibration replaces the other score's.  The file is re-saved (its sha256
changes), in place unless --out.

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
  safespot ood-calibrate --model ood.safetensors --outliers tiny.npz --preset fast --out ood-fast.safetensors
  safespot ood-calibrate --model default --score mahalanobis --outliers data/nonphoto/nonphoto_outliers.npz \\
      --train-data data/tinyimagenet_train.npz --out default-cal.safetensors"""


def register(sub: Any) -> None:
    p = common.add_command(sub, "ood-calibrate", "choose the OOD score's mu and threshold on validation data",
                           HELP, run)
    common.add_model_args(p)
    p.add_argument("--score", choices=("msp", "mahalanobis"), default="msp",
                   help="the flag's score: D(x) from the search's MSP (default) or the layer-wise "
                        "Mahalanobis detector, stored in the checkpoint")
    p.add_argument("--outliers", required=True, help="npz with x_outlier_train (its validation part is used)")
    common.add_option(p, "--data-dir", help="where the training set lives (default: $SAFESPOT_DATA_DIR)")
    p.add_argument("--train-data", default=None,
                   help="the checkpoint's training set where it lives now ('cifar10', 'tinyimagenet' or "
                        ".npz; the same images: the holdout and the fit are indices into it; default: "
                        "the one the checkpoint records)")
    p.add_argument("--fit-data", default=None,
                   help="mahalanobis: labelled images to fit on (.npz with x, y) instead of the "
                        "training images the checkpoint records")
    p.add_argument("--fit-n", type=int, default=5000, help="mahalanobis: fit images, at a fixed stride")
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


def training_set(info: Any, data_dir: str | None, train_data: str | None = None) -> tuple[Any, np.ndarray, np.ndarray]:
    """The training set the checkpoint records (or `train_data`, the same images elsewhere) and
    the trainer's (trained-on, held-out) indices into it."""
    from training.data import holdout_split, load_dataset  # the trainer's own split

    config = info.training.get("config") or {}
    if not config:
        raise UsageError("the checkpoint records no training set (trained elsewhere?); give --val-data NPZ "
                         "with in-distribution images it never trained on (and, for mahalanobis, --fit-data)")
    data = load_dataset(train_data or config.get("data", "cifar10"), "train", data_dir or None)
    if "images" in info.data and int(info.data["images"]) != len(data):
        raise UsageError(f"the training set found has {len(data)} images, the checkpoint was trained on "
                         f"{info.data['images']}: point --data-dir or --train-data at the same data")
    trained, held = holdout_split(len(data), int(info.data.get("holdout") or 0), int(config.get("seed", 0)),
                                  info.data.get("limit"))
    return data, trained, held


def heldout_images(info: Any, data_dir: str | None, n: int, train_data: str | None = None) -> tuple[np.ndarray, str]:
    """Up to n training images the trainer held out (never trained on) for this checkpoint."""
    holdout = int(info.data.get("holdout") or 0)
    if not info.training.get("config") or holdout <= 0:
        raise UsageError("the checkpoint records no held-out training images (trained elsewhere?); "
                         "give --val-data NPZ with in-distribution images it never trained on")
    data, _, held = training_set(info, data_dir, train_data)
    held = held[:n]
    seed = info.training["config"].get("seed", 0)
    return data.x[held], (f"{info.data.get('source', info.training['config'].get('data'))}: {len(held)} of the "
                          f"{holdout} training images the trainer held out (seed {seed})")


def fit_images(args: argparse.Namespace, info: Any) -> tuple[np.ndarray, np.ndarray, str]:
    """The Mahalanobis fit: --fit-n labelled images at a fixed stride of those the trainer trained
    on (never its holdout), or of --fit-data."""
    from training.data import load_dataset, strided_indices

    if args.fit_data:
        data = load_dataset(args.fit_data, "train", args.data_dir)
        idx = strided_indices(len(data), args.fit_n)
        desc = f"{Path(args.fit_data).name}: {len(idx)} of its {len(data)} images (given), fixed stride"
    else:
        data, trained, _ = training_set(info, args.data_dir, args.train_data)
        trained = np.sort(trained)  # in file order: a fixed stride of a class-sorted set is class-balanced
        idx = trained[strided_indices(len(trained), args.fit_n)]
        desc = (f"{info.data.get('source', data.provenance.get('source'))}: {len(idx)} of the {len(trained)} "
                f"training images the trainer trained on, fixed stride")
    y = data.y[idx]
    if (y < 0).any() or int(y.max()) + 1 != info.num_classes or len(np.unique(y)) != info.num_classes:
        raise UsageError(f"the Mahalanobis fit needs labelled images of all {info.num_classes} classes "
                         f"(labels 0..{info.num_classes - 1}); {desc} has {len(np.unique(y))}")
    return data.x[idx], y, desc


def recorded_weight(info: Any, key: str, given: float | None) -> float | None:
    """gamma or lambda: what training recorded, else what the user gives; never a contradiction."""
    recorded = info.ood.get(key)
    if recorded is not None and given is not None and float(recorded) != given:
        raise UsageError(f"the checkpoint was trained with {key}={recorded}, not {given}")
    return recorded if recorded is not None else given


# The keys one score's calibration writes that the other's must not leave behind (training's
# gamma, lambda and outlier split stay: they describe the weights, not the flag).
SAFESPOT_KEYS = ("mu", "search", "passes_per_image")
MAHALANOBIS_KEYS = ("score", "fit", "detector")


def validation_sets(args: argparse.Namespace, info: Any) -> tuple[np.ndarray, str, np.ndarray, str]:
    """(in-distribution images, their description, outliers, theirs): the trainer's holdout or
    --val-data, and the validation part of --outliers' x_outlier_train."""
    from training.data import DataError, load_dataset, load_images, strided
    from training.ood_training import OUTLIER_KEY, OUTLIER_SPLIT_SEED, OUTLIER_VAL, outlier_split

    trained = info.ood.get("training", {})
    with usage_errors(DataError):
        if args.val_data:
            val = load_dataset(args.val_data, "train", args.data_dir)
            x_in, in_desc = strided(val.x, args.n_in), f"{Path(args.val_data).name}: {min(args.n_in, len(val))} images (given)"
        else:
            x_in, in_desc = heldout_images(info, args.data_dir, args.n_in, args.train_data)
        outliers = load_images(args.outliers, OUTLIER_KEY)
        n_val = int(trained.get("val_outliers", OUTLIER_VAL))
        seed = int(trained.get("split_seed", OUTLIER_SPLIT_SEED))
        _, val_idx = outlier_split(len(outliers), n_val, seed)
        x_out = strided(outliers[val_idx], args.n_out)
    out_desc = (f"{Path(args.outliers).name}: {len(x_out)} of the {n_val} validation outliers of "
                f"x_outlier_train (split seed {seed}; never trained on)")
    return x_in, in_desc, x_out, out_desc


def threshold_report(s_in: Any, s_out: Any, tpr: float) -> dict[str, Any]:
    """The threshold keeping `tpr` of the in-distribution scores, and what it does on both sets."""
    from safespot.ood import threshold_for_tpr
    from safespot.ood_eval import ood_metrics

    threshold = threshold_for_tpr(s_in, tpr)
    metrics = ood_metrics(s_in, s_out)
    return {"threshold": threshold, "tpr": float((s_in >= threshold).double().mean()), "target_tpr": tpr,
            "val_fpr": float((s_out >= threshold).double().mean()), "val_auroc": metrics["auroc"],
            "val_aupr": metrics["aupr"], "val_fpr95": metrics["fpr95"]}


def calibrate_msp(args: argparse.Namespace, loaded: Any, device: Any, x_in: np.ndarray,
                  x_out: np.ndarray) -> tuple[dict[str, Any], dict[str, Any]]:
    """mu and the threshold of D(x): (the `ood` entries, what --json adds)."""
    from safespot.ood import safespot_score
    from safespot.ood_eval import choose_mu, safespot_parts
    from training.data import to_tensor

    info = loaded.info
    gamma, lam = recorded_weight(info, "gamma", args.gamma), recorded_weight(info, "lambda", args.lam)
    cfg, search = common.recorded_search_config(args, info)

    def parts(x: np.ndarray, desc: str) -> Any:
        with common.progress_bar(len(x), desc) as update:
            return safespot_parts(loaded.model, to_tensor(x, device), cfg, update)

    (msp_in, adv_in, pass_in), (msp_out, adv_out, pass_out) = parts(x_in, "validation in"), parts(x_out, "validation out")
    mu, sweep = choose_mu(msp_in, adv_in, msp_out, adv_out) if args.mu is None else (args.mu, [])
    d_in, d_out = safespot_score(msp_in, adv_in, mu), safespot_score(msp_out, adv_out, mu)
    calibration = {
        "mu": mu, **threshold_report(d_in, d_out, args.tpr),
        "criterion": ("max validation AUROC over mu in 0..1 step 0.05" if args.mu is None else "mu given (--mu)"),
        "gamma": gamma, "lambda": lam, "search": search,
        "passes_per_image": {"in": round(float(pass_in.double().mean()), 1),
                             "out": round(float(pass_out.double().mean()), 1)},
    }
    return calibration, {"mu_sweep": sweep, "scores": {"in": d_in.tolist(), "out": d_out.tolist()}}


def calibrate_mahalanobis(args: argparse.Namespace, loaded: Any, device: Any, x_in: np.ndarray,
                          x_out: np.ndarray) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """Fit the layer-wise detector on training images, then its threshold: (the `ood` entries,
    what --json adds, the detector)."""
    import torch

    from models.ood_detector import (
        DEFAULT_MAX_LAYERS,
        MAHALANOBIS_SCORE,
        describe_detector,
        detector_score,
    )
    from safespot.ood import LayerwiseMahalanobis, layer_features
    from training.data import DataError, to_tensor

    info = loaded.info
    with usage_errors(DataError):
        x_fit, y_fit, fit_desc = fit_images(args, info)
    print(f"fitting on {fit_desc}", file=sys.stderr)
    layers = layer_features(loaded.model, to_tensor(x_fit, device), max_layers=DEFAULT_MAX_LAYERS)[1]
    with usage_errors(ValueError, prefix="Mahalanobis fit: "):
        detector = LayerwiseMahalanobis.fit(layers, torch.from_numpy(y_fit))
    s_in, s_out = (detector_score(loaded.model, detector, to_tensor(x, device), DEFAULT_MAX_LAYERS)
                   for x in (x_in, x_out))
    calibration = {
        "score": MAHALANOBIS_SCORE, **threshold_report(s_in, s_out, args.tpr),
        "criterion": "the largest threshold keeping --tpr of the in-distribution validation images unflagged",
        "fit": {"images": fit_desc, "n": len(y_fit), "covariance": "Ledoit-Wolf, one tied covariance per layer",
                "features": (f"channel means of the ReLU outputs at up to {DEFAULT_MAX_LAYERS - 1} depths, then "
                             "the penultimate features; each layer's score standardised on the fit images, "
                             "the mean of the layers' scores")},
        "detector": describe_detector(detector, DEFAULT_MAX_LAYERS),
    }
    return calibration, {"scores": {"in": s_in.tolist(), "out": s_out.tolist()}}, detector


def run(args: argparse.Namespace) -> int:
    from models.checkpoint import save_checkpoint
    from models.errors import CheckpointError

    if not 0 < args.tpr <= 1:
        raise UsageError("--tpr must lie in (0, 1]")
    if args.mu is not None and not 0 <= args.mu <= 1:
        raise UsageError("--mu must lie in [0, 1]")
    if args.fit_n < 2:
        raise UsageError("--fit-n must be at least 2")
    loaded, device = common.open_model(args)
    info = loaded.info
    x_in, in_desc, x_out, out_desc = validation_sets(args, info)
    detector = None
    if args.score == "mahalanobis":
        calibration, extra, detector = calibrate_mahalanobis(args, loaded, device, x_in, x_out)
        kept = {k: v for k, v in info.ood.items() if k not in SAFESPOT_KEYS}
    else:
        calibration, extra = calibrate_msp(args, loaded, device, x_in, x_out)
        kept = {k: v for k, v in info.ood.items() if k not in MAHALANOBIS_KEYS}
    calibration["chosen_on"] = {"in_distribution": in_desc, "outliers": out_desc,
                                "criterion": calibration.pop("criterion")}
    info.ood = kept | calibration
    out = Path(args.out) if args.out else loaded.path
    with usage_errors(CheckpointError):
        sha = save_checkpoint(loaded.model, info, out, ood_detector=detector)
    print(("" if detector is None else f"score={calibration['score']} ")
          + ("" if detector is not None else f"mu={calibration['mu']:g} ")
          + f"threshold={calibration['threshold']:.6f} (flag when the score < threshold) "
          f"tpr={calibration['tpr']:.4f} val_auroc={calibration['val_auroc']:.4f} "
          f"val_fpr={calibration['val_fpr']:.4f} val_fpr95={calibration['val_fpr95']:.4f}", file=sys.stderr)
    print(f"{out} sha256 {sha}")
    if args.json_out:
        common.write_json(args.json_out, {
            "model": {"path": str(out), "sha256": sha, "previous_sha256": loaded.sha256},
            "ood": info.ood, **extra})
    return 0
