"""`safespot ood-eval`: out-of-distribution detection, our score against the baselines."""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from safespot_cli import common
from safespot_cli.errors import UsageError, usage_errors

HELP = """Score a fixed, class-balanced slice of the in-distribution test images (--data: by
default the data set the checkpoint's domain names, cifar10's test split or
tinyimagenet's val split; --n images at a fixed stride) and several OOD sets
with each method, and report AUROC, AUPR (in-distribution positive) and the
false-positive rate at 95% true-positive rate.  Every score is "higher =
in-distribution".

methods:
  safespot     D(x) = mu*MSP(x) + (1-mu)*MSP(x_a*), from the same safe-spot search
               the filter runs (mu: the checkpoint's calibrated value, else 0.5)
  msp          maximum softmax probability of --model (or --baseline-model)
  energy       logsumexp of the logits (negative free energy), same model
  mahalanobis  tied-covariance Gaussians (Ledoit-Wolf) on the channel means of the
               ReLU activations at up to 7 depths plus the penultimate features,
               standardised scores averaged (--mahalanobis-layers last: the
               penultimate features only), fitted on --fit-n training images
               (no input preprocessing; default: the --data set's train split), same model
  oe           MSP of an Outlier-Exposure-trained model (--oe-model); reported
               as missing without it
  flag         the score the checkpoint's calibrated OOD flag uses (`safespot
               ood-calibrate`), as the service computes it: its stored Mahalanobis
               detector (no refit) or D(x) with its mu; the report adds the flag
               at its stored threshold: the share of in-distribution images it
               keeps (TPR) and of each OOD set it lets through (FPR) and flags

OOD sets: tinyimagenet (x_ood_test of tinyimagenet32.npz), fashion-mnist (Debian's
dataset-fashion-mnist, test images padded to 32x32, three channels), gaussian
(N(0.5, 0.25^2) clipped) and uniform noise (both 8-bit, fixed seed), plus any
--ood-set NAME=PATH.npz (array x, uint8 NHWC).  A built-in set whose files are
absent is skipped with the reason in the report, and so is tinyimagenet for a
model of Tiny ImageNet's classes (its images are in-distribution there).
`safespot data nonphoto` writes textures, text, screenshots and held-out photos
to pass as --ood-set (docs/ood.md).  The search of the safespot
score (--preset, --norm, --eps, --delta) defaults to what `safespot
ood-calibrate` recorded in the checkpoint, else to its threat model.

examples:
  safespot ood-eval --model models/zoo/ood.safetensors --oe-model models/zoo/oe.safetensors \\
      --n 1000 --json ood.json --plot ood.png
  safespot ood-eval --model ood --methods msp,energy,mahalanobis --n 2000
  safespot ood-eval --model default --methods msp,energy --ood-set texture=data/nonphoto_texture.npz
  safespot ood-eval --model default-cal.safetensors --methods flag --ood-set text=data/nonphoto_text.npz"""


def register(sub: Any) -> None:
    p = common.add_command(sub, "ood-eval", "out-of-distribution detection metrics (AUROC, AUPR, FPR95)",
                           HELP, run)
    common.add_model_args(p)
    p.set_defaults(model="ood")
    p.add_argument("--oe-model", default=None, help="checkpoint of the Outlier Exposure baseline")
    p.add_argument("--baseline-model", default=None,
                   help="score msp/energy/mahalanobis with this model instead of --model")
    p.add_argument("--data", default=None,
                   help="in-distribution: 'cifar10', 'tinyimagenet' or an .npz with x, y "
                        "(default: the checkpoint's domain when it names one of those, else cifar10)")
    common.add_option(p, "--data-dir")
    p.add_argument("--split", default="test", help="cifar10: test or train; tinyimagenet: any but train reads val")
    p.add_argument("--n", type=int, default=1000, help="in-distribution images, at a fixed stride")
    p.add_argument("--n-ood", type=int, default=None, help="images per OOD set, at a fixed stride (default: --n)")
    p.add_argument("--sets", default="tinyimagenet,fashion-mnist,gaussian,uniform", help="built-in OOD sets to use")
    p.add_argument("--ood-set", action="append", default=[], metavar="NAME=PATH.npz",
                   help="an extra OOD set (array x, uint8 NHWC); repeatable")
    p.add_argument("--tinyimagenet", default=None, help="default: DATA_DIR/tinyimagenet32.npz")
    p.add_argument("--fashion-mnist", default=None,
                   help="folder with the gzipped IDX files (default: Debian's dataset-fashion-mnist)")
    p.add_argument("--methods", default="msp,oe,energy,mahalanobis,safespot")
    p.add_argument("--fit-data", default=None,
                   help="Mahalanobis fit images: 'cifar10', 'tinyimagenet' (train split) or .npz "
                        "(default: --data when it names a set, else cifar10)")
    p.add_argument("--fit-n", type=int, default=5000)
    p.add_argument("--mahalanobis-layers", choices=("all", "last"), default="all",
                   help="Mahalanobis features: a layer ensemble (default) or the penultimate layer")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="ROUNDS",
                   help="bootstrap rounds for 95%% intervals of every metric and of each baseline's "
                        "paired difference from safespot (0: none)")
    common.add_recorded_search_args(p)
    common.add_option(p, "--json")
    p.add_argument("--plot", default=None, metavar="PNG", help="histograms of the in-distribution and OOD scores")


def fit_mahalanobis(args: argparse.Namespace, model: Any, device: Any) -> tuple[Any, str]:
    import torch

    from safespot import ood
    from training.data import load_dataset, strided_indices, to_tensor

    data = load_dataset(args.fit_data, "train", args.data_dir)
    if (data.y < 0).any():
        raise UsageError("the Mahalanobis fit needs labelled images (--fit-data)")
    idx = strided_indices(len(data), args.fit_n)
    x, y = to_tensor(data.x[idx], device), torch.from_numpy(data.y[idx])
    det: Any
    with usage_errors(ValueError, prefix=f"Mahalanobis fit on {args.fit_data}: "):
        if args.mahalanobis_layers == "all":
            layers = ood.layer_features(model, x)[1]
            det, what = ood.LayerwiseMahalanobis.fit(layers, y), f"{len(layers)} layers (ensemble)"
        else:
            det, what = ood.MahalanobisDetector.fit(ood.logits_and_features(model, x)[1], y), "penultimate layer"
    return det, (f"{data.provenance.get('source', args.fit_data)} (train), {len(idx)} images, fixed stride; "
                 f"{what}, Ledoit-Wolf covariance")


def extra_sets(specs: list[str]) -> dict[str, Path]:
    """--ood-set NAME=PATH.npz, each name once."""
    extra: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not (sep and name and path) or name in extra:
            raise UsageError(f"--ood-set expects NAME=PATH.npz, each NAME once; got {spec!r}")
        extra[name] = Path(path)
    return extra


def run(args: argparse.Namespace) -> int:
    import torch

    from models.ood_detector import flag_score
    from safespot.ood_eval import METHODS, OodScorer, Scored, bootstrap_intervals, ood_metrics
    from training.data import (
        NAMED_DATA_SETS,
        DataError,
        default_data_dir,
        load_dataset,
        strided_indices,
        to_tensor,
    )
    from training.ood_sets import FASHION_MNIST_DIR, in_distribution_sets, load_ood_sets
    from worker.results import DEFAULT_OOD_MU  # the service's mu when a checkpoint records none

    started = time.time()
    extra = extra_sets(args.ood_set)  # fail on a typo before any work
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods or set(methods) - set(METHODS):
        raise UsageError(f"--methods takes {','.join(METHODS)}")
    loaded, device = common.open_model(args)
    info = loaded.info
    size = (int(info.input_size[1]), int(info.input_size[2]))
    args.data = args.data or (info.domain if info.domain in NAMED_DATA_SETS else "cifar10")
    args.fit_data = args.fit_data or (args.data if args.data in NAMED_DATA_SETS else "cifar10")
    baseline, oe = (None if path is None else common.load_model(path, device)
                    for path in (args.baseline_model, args.oe_model))
    missing = {}
    if "oe" in methods and oe is None:
        missing["oe"] = "no --oe-model given: Outlier Exposure needs its own trained checkpoint"
    threshold = info.ood.get("threshold")
    if "flag" in methods and threshold is None:
        missing["flag"] = "the checkpoint has no calibrated OOD flag (safespot ood-calibrate)"
    stored = loaded.ood_detector
    base = baseline or loaded
    recorded = info.ood.get("search")
    cfg, search = common.recorded_search_config(args, info)
    mu = float(info.ood.get("mu", DEFAULT_OOD_MU))
    mu_source = "checkpoint (ood-calibrate)" if "mu" in info.ood else f"default {DEFAULT_OOD_MU} (not calibrated)"
    if "safespot" in methods and recorded and recorded != search:
        print(f"warning: the checkpoint was calibrated with search {recorded}, scoring with {search}",
              file=sys.stderr)

    tinyimagenet = Path(args.tinyimagenet or Path(args.data_dir or default_data_dir()) / "tinyimagenet32.npz")
    with usage_errors(DataError):
        data = load_dataset(args.data, args.split, args.data_dir)
        maha, maha_fit = (fit_mahalanobis(args, base.model, device) if "mahalanobis" in methods
                          else (None, None))
        names = [s.strip() for s in args.sets.split(",") if s.strip()]
        overlap = in_distribution_sets(names, {args.data, info.domain})
        sets, skipped = load_ood_sets([n for n in names if n not in overlap], extra, size,
                                      args.n_ood or args.n, tinyimagenet=tinyimagenet,
                                      fashion_dir=Path(args.fashion_mnist or FASHION_MNIST_DIR))
        skipped = overlap | skipped
    for name, why in skipped.items():
        print(f"skipping OOD set {name}: {why}", file=sys.stderr)
    if not sets:
        raise UsageError("no OOD set to evaluate")

    scorer = OodScorer([m for m in methods if m not in missing], loaded.model, cfg, mu, base.model,
                       None if oe is None else oe.model, maha, stored,
                       int(info.ood["detector"]["max_layers"]) if stored is not None else 8)
    searches = "safespot" in methods or ("flag" in methods and "flag" not in missing and stored is None)

    def score(x_u8: np.ndarray, name: str) -> Scored:
        if not searches:
            return scorer(to_tensor(x_u8, device))
        with common.progress_bar(len(x_u8), f"safespot {name}") as update:
            return scorer(to_tensor(x_u8, device), update)

    split = "val" if args.data == "tinyimagenet" and args.split != "train" else args.split  # load_dataset's
    idx = strided_indices(len(data), args.n)
    scored_in = score(data.x[idx], "in-distribution")
    results: dict[str, dict[str, dict[str, float]]] = {}
    intervals: dict[str, dict[str, Any]] = {}
    details: dict[str, Any] = {}
    all_scores = {"in-distribution": scored_in.scores}
    for s in sets:
        scored = score(s.x, s.name)
        all_scores[s.name] = scored.scores
        results[s.name] = {m: ood_metrics(scored_in.scores[m], scored.scores[m]) for m in scored.scores}
        if args.bootstrap:
            intervals[s.name] = set_intervals(scored_in.scores, scored.scores, args.bootstrap, bootstrap_intervals)
        details[s.name] = {"source": s.source, "n": len(s.x),
                           "score_mean": {m: float(v.mean()) for m, v in scored.scores.items()}}
        if scored.passes is not None:
            details[s.name]["safespot_passes_per_image"] = round(scored.passes, 1)

    def model_ref(ck: Any, name: str) -> dict[str, Any]:
        return common.model_ref(ck, name, recipe=ck.info.recipe.get("name"), ood=ck.info.ood)

    report: dict[str, Any] = {
        "model": model_ref(loaded, args.model),
        "in_distribution": (f"{args.data} {split} ({data.provenance.get('note', data.provenance.get('source', 'as given'))}), "
                            f"n={len(idx)}, stride {len(data) / len(idx):g} from 0"),
        "sets": results,
        "intervals": {"level": 0.95, "rounds": args.bootstrap, "method": "percentile bootstrap, in- and "
                      "OOD scores resampled separately (seed 0); safespot_minus: paired differences "
                      "on the same resampled images", "sets": intervals} if args.bootstrap else None,
        "set_details": details,
        "in_distribution_score_mean": {m: float(v.mean()) for m, v in scored_in.scores.items()},
        "methods_model": {m: (args.oe_model if m == "oe" else
                              args.model if m in ("safespot", "flag") else (args.baseline_model or args.model))
                          for m in methods if m not in missing},
        "flag": (flag_report(all_scores, flag_score(info.ood), float(threshold))
                 if "flag" in methods and "flag" not in missing else None),
        "baseline_model": None if baseline is None else model_ref(baseline, args.baseline_model),
        "oe_model": None if oe is None else model_ref(oe, args.oe_model),
        "missing": missing, "skipped": skipped,
        "safespot": {"mu": mu, "mu_source": mu_source, "search": search,
                     "config": cfg.to_dict(), "in_distribution_passes_per_image":
                     None if scored_in.passes is None else round(scored_in.passes, 1)}
        if "safespot" in methods else None,
        "mahalanobis_fit": maha_fit,
        "device": str(device), "torch_threads": torch.get_num_threads(),
        "seconds": round(time.time() - started, 1),
    }
    print(markdown_table(report, methods))
    if args.json_out:
        common.write_json(args.json_out, report)
    if args.plot:
        plot_scores(all_scores, "safespot" if "safespot" in methods else methods[0], Path(args.plot), report,
                    Path(args.data).stem)
    return 0


def set_intervals(scores_in: dict[str, np.ndarray], scores_out: dict[str, np.ndarray], rounds: int,
                  bootstrap: Any) -> dict[str, Any]:
    """One OOD set's 95% intervals per method, and safespot minus each other method (paired)."""
    out: dict[str, Any] = {m: bootstrap(scores_in[m], scores_out[m], rounds=rounds) for m in scores_out}
    if "safespot" in scores_out:
        out["safespot_minus"] = {
            m: bootstrap(scores_in["safespot"], scores_out["safespot"], rounds=rounds,
                         paired_with=(scores_in[m], scores_out[m]))
            for m in scores_out if m != "safespot"}
    return out


def markdown_table(report: dict[str, Any], methods: list[str]) -> str:
    sets, metrics = report["sets"], ("auroc", "aupr", "fpr95")
    rows = dict(sets)
    report = {**report, "sets": rows}
    if len(sets) > 1:
        rows["average"] = {m: {k: float(np.mean([per[m][k] for per in sets.values()])) for k in metrics}
                           for m in methods if all(m in per for per in sets.values())}
    lines = [f"model {report['model']['name']} ({report['model']['sha256'][:12]}); in-distribution: "
             f"{report['in_distribution']}", ""]
    for metric, label in zip(metrics, ("AUROC (%)", "AUPR-in (%)", "FPR at 95% TPR (%), lower is better"),
                             strict=True):
        lines += [f"{label}:", "", "| OOD set | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(cell(report, name, m, metric) for m in methods) + " |"
                  for name in rows]
        lines.append("")
    flag = report.get("flag")
    if flag:
        lines += [f"The stored flag ({flag['score']}, flagged when the score < {flag['threshold']:.6g}):", "",
                  "| set | flagged (%) |", "|---|---|",
                  f"| in-distribution (1 - TPR) | {(1 - flag['tpr']) * 100:.2f} |"]
        lines += [f"| {name} (1 - FPR) | {(1 - fpr) * 100:.2f} |" for name, fpr in flag["fpr"].items()]
        lines.append("")
    lines += [f"- {name}: {why}" for name, why in {**report["missing"], **report["skipped"]}.items()]
    return "\n".join(lines).rstrip()


def flag_report(all_scores: dict[str, dict[str, np.ndarray]], score: str, threshold: float) -> dict[str, Any]:
    """The stored flag at its stored threshold (flag when score < threshold): the share of
    in-distribution images it keeps (TPR) and, per OOD set, the share it lets through (FPR)."""
    kept = {name: float((scores["flag"] >= threshold).mean()) for name, scores in all_scores.items()}
    return {"score": score, "threshold": threshold, "tpr": kept.pop("in-distribution"), "fpr": kept}


def cell(report: dict[str, Any], name: str, method: str, metric: str) -> str:
    """A metric in percent, with its 95% interval where one was computed."""
    per = report["sets"][name]
    if method not in per:
        return "missing"
    text = f"{per[method][metric] * 100:.2f}"
    ci = ((report.get("intervals") or {}).get("sets") or {}).get(name, {}).get(method)
    return text + (f" [{ci[metric][0] * 100:.1f}, {ci[metric][1] * 100:.1f}]" if ci else "")


def plot_scores(all_scores: dict[str, dict[str, np.ndarray]], method: str, path: Path,
                report: dict[str, Any], in_name: str = "in-distribution") -> None:
    """One panel per OOD set: histograms of `method`'s score, in-distribution vs that set."""
    ood_names = [n for n in all_scores if n != "in-distribution" and method in all_scores[n]]
    s_in = all_scores["in-distribution"].get(method)
    if s_in is None or not ood_names:
        raise UsageError(f"nothing to plot for {method}")
    cols = min(len(ood_names), 3)
    rows = math.ceil(len(ood_names) / cols)
    fig, axes = common.pyplot().subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, ood_names, strict=False):
        s_out = all_scores[name][method]
        lo, hi = float(min(s_in.min(), s_out.min())), float(max(s_in.max(), s_out.max()))
        bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 41)
        ax.hist(s_in, bins=bins, alpha=0.6, density=True, label=f"{in_name} (in)")
        ax.hist(s_out, bins=bins, alpha=0.6, density=True, label=f"{name} (out)")
        auroc = report["sets"][name][method]["auroc"]
        ax.set_title(f"{name}: AUROC {auroc * 100:.1f}%", fontsize=10)
        ax.set_xlabel(f"{method} score" + (" D(x)" if method == "safespot" else ""))
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(ood_names):]:
        ax.axis("off")
    fig.suptitle(f"{Path(report['model']['name']).name}: {method} score, in-distribution vs OOD", fontsize=11)
    common.save_figure(fig, path)
