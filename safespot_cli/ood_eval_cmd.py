"""`safespot ood-eval`: out-of-distribution detection, our score against the baselines."""

from __future__ import annotations

import argparse
import gzip
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from safespot_cli.common import add_model_args, open_model, write_json
from safespot_cli.errors import UsageError

METHODS = ("msp", "oe", "energy", "mahalanobis", "safespot")
BUILTIN_SETS = ("tinyimagenet", "fashion-mnist", "gaussian", "uniform")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
FASHION_MNIST_TEST = "t10k-images-idx3-ubyte.gz"
TINY_KEY = "x_ood_test"  # never x_outlier_train: those trained the model
NOISE_SEED = 20_240_607
GAUSSIAN_MEAN, GAUSSIAN_STD = 0.5, 0.25  # Outlier Exposure's Gaussian set (N(0, 0.5) on [-1, 1]), clipped
DEFAULT_MU = 0.5  # as the service, when a checkpoint records no calibrated mu
TPR_LEVEL = 0.95

HELP = """Score a fixed, class-balanced CIFAR-10 test slice (in-distribution, --n images at
a fixed stride) and several OOD sets with each method, and report AUROC,
AUPR (in-distribution positive) and the false-positive rate at 95% true-positive
rate.  Every score is "higher = in-distribution".

methods:
  safespot     D(x) = mu*MSP(x) + (1-mu)*MSP(x_a*), from the same safe-spot search
               the filter runs (mu: the checkpoint's calibrated value, else 0.5)
  msp          maximum softmax probability of --model (or --baseline-model)
  energy       logsumexp of the logits (negative free energy), same model
  mahalanobis  tied-covariance Gaussians on the last layer's input, fitted on
               --fit-n training images (no input preprocessing), same model
  oe           MSP of an Outlier-Exposure-trained model (--oe-model); reported
               as missing without it

OOD sets: tinyimagenet (x_ood_test of tinyimagenet32.npz), fashion-mnist (Debian's
dataset-fashion-mnist, test images padded to 32x32, three channels), gaussian
(N(0.5, 0.25^2) clipped) and uniform noise (both 8-bit, fixed seed), plus any
--ood-set NAME=PATH.npz (array x, uint8 NHWC).  A built-in set whose files are
absent is skipped with the reason in the report.

examples:
  safespot ood-eval --model models/zoo/ood.safetensors --oe-model models/zoo/oe.safetensors \\
      --n 1000 --json ood.json --plot ood.png
  safespot ood-eval --model ood --methods msp,energy,mahalanobis --n 2000"""


def register(sub: Any) -> None:
    p = sub.add_parser("ood-eval", help="out-of-distribution detection metrics (AUROC, AUPR, FPR95)",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.set_defaults(model="ood")
    p.add_argument("--oe-model", default=None, help="checkpoint of the Outlier Exposure baseline")
    p.add_argument("--baseline-model", default=None,
                   help="score msp/energy/mahalanobis with this model instead of --model")
    p.add_argument("--data", default="cifar10", help="in-distribution: 'cifar10' or an .npz with x, y")
    p.add_argument("--data-dir", default=None, help="default: $SAFESPOT_DATA_DIR or ./data")
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=1000, help="in-distribution images, at a fixed stride")
    p.add_argument("--n-ood", type=int, default=None, help="images per OOD set, at a fixed stride (default: --n)")
    p.add_argument("--sets", default=",".join(BUILTIN_SETS), help="built-in OOD sets to use")
    p.add_argument("--ood-set", action="append", default=[], metavar="NAME=PATH.npz",
                   help="an extra OOD set (array x, uint8 NHWC); repeatable")
    p.add_argument("--tinyimagenet", default=None, help="default: DATA_DIR/tinyimagenet32.npz")
    p.add_argument("--fashion-mnist", default=FASHION_MNIST_DIR, help="folder with the gzipped IDX files")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--fit-data", default="cifar10", help="Mahalanobis fit images: 'cifar10' (train split) or .npz")
    p.add_argument("--fit-n", type=int, default=5000)
    add_search_args(p)
    p.add_argument("--json", dest="json_out", default=None, metavar="OUT")
    p.add_argument("--plot", default=None, metavar="PNG", help="histograms of the in-distribution and OOD scores")
    p.set_defaults(run=run)


def add_search_args(p: argparse.ArgumentParser) -> None:
    """The search whose result gives MSP(x_a*); defaults come from the checkpoint."""
    p.add_argument("--preset", default=None, choices=["standard", "fast", "paper"],
                   help="default: the preset recorded at calibration, else standard")
    p.add_argument("--norm", default=None, choices=["linf", "l2"], help="default: the model's threat model")
    p.add_argument("--eps", type=float, default=None)
    p.add_argument("--delta", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="images searched at once")
    p.add_argument("--seed", type=int, default=0)


# ------------------------------------------------------------------ helpers shared with ood-calibrate
def search_config(args: argparse.Namespace, info: Any) -> tuple[Any, str]:
    """The search config for the OOD score: CLI first, then what the checkpoint recorded."""
    from safespot import SearchConfig

    recorded = info.ood.get("search", {})
    preset = args.preset or recorded.get("preset", "standard")
    norm = args.norm or recorded.get("norm") or info.threat.get("norm", "linf")
    eps = args.eps if args.eps is not None else (recorded.get("eps") or info.threat.get("eps"))
    overrides: dict[str, Any] = {"seed": args.seed}
    delta = args.delta if args.delta is not None else recorded.get("delta")
    if delta is not None:
        overrides["delta"] = delta
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    try:
        return SearchConfig.preset(preset, norm=norm, eps=eps, **overrides), preset
    except ValueError as e:
        raise UsageError(str(e)) from e


def search_record(cfg: Any, preset: str) -> dict[str, Any]:
    return {"preset": preset, "norm": cfg.norm, "eps": cfg.eps, "delta": cfg.budget, "seed": cfg.seed}


def safespot_parts(model: Any, x: Any, cfg: Any, desc: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MSP(x), MSP(x_a*) and passes per image from the safe-spot search (labels: predictions)."""
    from tqdm import tqdm

    from safespot import find_safe_spots

    bar = tqdm(total=len(x), desc=desc or "search", unit="img", dynamic_ncols=True, file=sys.stderr,
               mininterval=2.0)

    def update(done: int, total: int) -> None:
        bar.n = done
        bar.refresh()

    res = find_safe_spots(model, x, cfg, progress=update)
    bar.close()
    return (res.msp.double().cpu().numpy(), res.msp_adv.double().cpu().numpy(),
            res.grad_evals_per_image.cpu().numpy())


def ood_metrics(scores_in: np.ndarray, scores_out: np.ndarray) -> dict[str, float]:
    """AUROC, AUPR (in-distribution positive) and FPR at 95% TPR, via scikit-learn."""
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


def read_idx_images(path: Path) -> np.ndarray:
    """Images (N, H, W) uint8 from a (gzipped) IDX3 file, as MNIST and Fashion-MNIST ship."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 16 or int.from_bytes(raw[:4], "big") != 2051:
        raise UsageError(f"{path}: not an IDX3 image file")
    n, h, w = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
    if len(raw) != 16 + n * h * w:
        raise UsageError(f"{path}: truncated IDX file")
    return np.frombuffer(raw, np.uint8, offset=16).reshape(n, h, w)


def pad_gray_to_rgb(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, h, w) grey images, zero-padded (centred) to `size`, as three equal channels."""
    n, h, w = x.shape
    top, left = (size[0] - h) // 2, (size[1] - w) // 2
    if top < 0 or left < 0:
        raise UsageError(f"cannot pad {h}x{w} images to {size[0]}x{size[1]}")
    out = np.zeros((n, *size), np.uint8)
    out[:, top:top + h, left:left + w] = x
    return np.repeat(out[..., None], 3, axis=3)


def noise_images(kind: str, n: int, size: tuple[int, int], seed: int = NOISE_SEED) -> np.ndarray:
    """8-bit noise images (N, H, W, 3): 'gaussian' N(0.5, 0.25^2) clipped, or 'uniform'."""
    rng = np.random.default_rng((seed, 0 if kind == "gaussian" else 1))
    if kind == "gaussian":
        x = np.clip(rng.normal(GAUSSIAN_MEAN, GAUSSIAN_STD, (n, *size, 3)), 0, 1)
        return np.round(x * 255).astype(np.uint8)
    return rng.integers(0, 256, (n, *size, 3), dtype=np.uint8)


def strided(x: np.ndarray, n: int) -> np.ndarray:
    from training.data import strided_indices

    return x[strided_indices(len(x), n)]


# ------------------------------------------------------------------ the command
@dataclass
class OodSet:
    name: str
    x: np.ndarray  # uint8 NHWC
    source: str


@dataclass
class Scored:
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    passes: float | None = None  # safe-spot search passes per image


def load_ood_sets(args: argparse.Namespace, size: tuple[int, int], n: int) -> tuple[list[OodSet], dict[str, str]]:
    """The requested OOD sets (strided to n) and, for absent built-in ones, why they were skipped."""
    from training.data import default_data_dir

    sets, skipped = [], {}
    wanted = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = set(wanted) - set(BUILTIN_SETS)
    if unknown:
        raise UsageError(f"--sets takes {','.join(BUILTIN_SETS)}; use --ood-set NAME=PATH.npz for others")
    for name in wanted:
        if name == "tinyimagenet":
            path = Path(args.tinyimagenet or (Path(args.data_dir) if args.data_dir else default_data_dir())
                        / "tinyimagenet32.npz")
            if not path.is_file():
                skipped[name] = f"{path} not found (give --tinyimagenet PATH or --data-dir)"
                continue
            with np.load(path, allow_pickle=False) as f:
                if TINY_KEY not in f:
                    raise UsageError(f"{path}: no array {TINY_KEY!r}")
                sets.append(OodSet(name, strided(f[TINY_KEY], n), f"{path.name}:{TINY_KEY}"))
        elif name == "fashion-mnist":
            path = Path(args.fashion_mnist) / FASHION_MNIST_TEST
            if not path.is_file():
                skipped[name] = (f"{path} not found (install Debian's dataset-fashion-mnist, "
                                 "or give --fashion-mnist DIR)")
                continue
            sets.append(OodSet(name, pad_gray_to_rgb(strided(read_idx_images(path), n), size),
                               f"Fashion-MNIST test ({path.name}), zero-padded to {size[0]}x{size[1]}, grey as RGB"))
        else:
            src = (f"N({GAUSSIAN_MEAN}, {GAUSSIAN_STD}^2) per pixel, clipped to [0,1]" if name == "gaussian"
                   else "U{0..255} per pixel") + f", 8-bit, seed {NOISE_SEED}"
            sets.append(OodSet(name, noise_images(name, n, size), src))
    for spec in args.ood_set:
        name, sep, path_s = spec.partition("=")
        if not sep or not name or not path_s:
            raise UsageError(f"--ood-set expects NAME=PATH.npz, got {spec!r}")
        path = Path(path_s)
        if not path.is_file():
            raise UsageError(f"--ood-set {name}: no file {path}")
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f:
                raise UsageError(f"{path}: expected an array 'x' (uint8 NHWC)")
            x = f["x"]
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
            raise UsageError(f"{path}: 'x' must be uint8 (N, H, W, C), got {x.dtype} {x.shape}")
        sets.append(OodSet(name, strided(np.repeat(x, 3, axis=3) if x.shape[-1] == 1 else x, n), str(path.name)))
    for s in sets:
        if s.x.shape[1:3] != size:
            raise UsageError(f"OOD set {s.name}: images are {s.x.shape[1]}x{s.x.shape[2]}, "
                             f"the model takes {size[0]}x{size[1]}")
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise UsageError(f"OOD set names must be unique: {names}")
    return sets, skipped


class Scorer:
    """Every requested method's scores for a batch of 8-bit images."""

    def __init__(self, methods: list[str], model: Any, baseline: Any, oe: Any, maha: Any,
                 cfg: Any, mu: float, device: Any) -> None:
        self.methods, self.model, self.baseline, self.oe = methods, model, baseline, oe
        self.maha, self.cfg, self.mu, self.device = maha, cfg, mu, device

    def __call__(self, x_u8: np.ndarray, name: str) -> Scored:
        from safespot import ood
        from training.data import to_tensor

        x = to_tensor(x_u8, self.device)
        out = Scored()
        if {"msp", "energy", "mahalanobis"} & set(self.methods):
            logits, feats = ood.logits_and_features(self.baseline, x)
            out.scores["msp"] = ood.msp_score(logits).double().cpu().numpy()
            out.scores["energy"] = ood.energy_score(logits).double().cpu().numpy()
            if self.maha is not None:
                out.scores["mahalanobis"] = self.maha.score(feats).cpu().numpy()
        if "oe" in self.methods and self.oe is not None:
            logits, _ = ood.logits_and_features(self.oe, x)
            out.scores["oe"] = ood.msp_score(logits).double().cpu().numpy()
        if "safespot" in self.methods:
            msp, msp_adv, passes = safespot_parts(self.model, x, self.cfg, desc=f"safespot {name}")
            out.scores["safespot"] = self.mu * msp + (1 - self.mu) * msp_adv
            out.passes = float(passes.mean())
        out.scores = {m: out.scores[m] for m in self.methods if m in out.scores}
        return out


def fit_mahalanobis(args: argparse.Namespace, model: Any, device: Any) -> tuple[Any, str]:
    import torch

    from safespot import ood
    from training.data import load_dataset, strided_indices, to_tensor

    data = load_dataset(args.fit_data, "train", args.data_dir)
    if (data.y < 0).any():
        raise UsageError("the Mahalanobis fit needs labelled images (--fit-data)")
    idx = strided_indices(len(data), args.fit_n)
    _, feats = ood.logits_and_features(model, to_tensor(data.x[idx], device))
    try:
        det = ood.MahalanobisDetector.fit(feats, torch.from_numpy(data.y[idx]))
    except ValueError as e:
        raise UsageError(f"Mahalanobis fit on {args.fit_data}: {e}") from e
    return det, f"{data.provenance.get('source', args.fit_data)} (train), {len(idx)} images, fixed stride"


def run(args: argparse.Namespace) -> int:
    import torch

    from models import load_checkpoint
    from models.errors import ModelError
    from training.data import DataError, load_dataset, strided_indices

    started = time.time()
    for spec in args.ood_set:  # fail on a typo before any work
        if not all(spec.partition("=")[::2]) or "=" not in spec:
            raise UsageError(f"--ood-set expects NAME=PATH.npz, got {spec!r}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods or set(methods) - set(METHODS):
        raise UsageError(f"--methods takes {','.join(METHODS)}")
    loaded, device = open_model(args)
    info = loaded.info
    size = (int(info.input_size[1]), int(info.input_size[2]))

    def other(path: str | None) -> Any:
        if path is None:
            return None
        try:
            return load_checkpoint(path, device)
        except ModelError as e:
            raise UsageError(str(e)) from e

    baseline, oe = other(args.baseline_model), other(args.oe_model)
    missing = {}
    if "oe" in methods and oe is None:
        missing["oe"] = "no --oe-model given: Outlier Exposure needs its own trained checkpoint"
    base = baseline or loaded
    cfg, preset = search_config(args, info)
    mu = float(info.ood.get("mu", DEFAULT_MU))
    mu_source = "checkpoint (ood-calibrate)" if "mu" in info.ood else f"default {DEFAULT_MU} (not calibrated)"
    recorded = info.ood.get("search")
    if "safespot" in methods and recorded and recorded != search_record(cfg, preset):
        print(f"warning: the checkpoint was calibrated with search {recorded}, scoring with "
              f"{search_record(cfg, preset)}", file=sys.stderr)

    try:
        data = load_dataset(args.data, args.split, args.data_dir)
        maha, maha_fit = (fit_mahalanobis(args, base.model, device) if "mahalanobis" in methods
                          else (None, None))
        n_ood = args.n_ood or args.n
        sets, skipped = load_ood_sets(args, size, n_ood)
    except DataError as e:
        raise UsageError(str(e)) from e
    for name, why in skipped.items():
        print(f"skipping OOD set {name}: {why}", file=sys.stderr)
    if not sets:
        raise UsageError("no OOD set to evaluate")

    idx = strided_indices(len(data), args.n)
    scorer = Scorer(methods, loaded.model, base.model, None if oe is None else oe.model, maha, cfg, mu, device)
    scored_in = scorer(data.x[idx], "in-distribution")
    results: dict[str, dict[str, dict[str, float]]] = {}
    details: dict[str, Any] = {}
    all_scores = {"in-distribution": scored_in.scores}
    for s in sets:
        scored = scorer(s.x, s.name)
        all_scores[s.name] = scored.scores
        results[s.name] = {m: ood_metrics(scored_in.scores[m], scored.scores[m]) for m in scored.scores}
        details[s.name] = {"source": s.source, "n": len(s.x),
                           "score_mean": {m: float(v.mean()) for m, v in scored.scores.items()}}
        if scored.passes is not None:
            details[s.name]["safespot_passes_per_image"] = round(scored.passes, 1)

    def model_ref(ck: Any, name: str) -> dict[str, Any]:
        return {"name": name, "sha256": ck.sha256, "arch": ck.info.arch, "recipe": ck.info.recipe.get("name"),
                "ood": ck.info.ood}

    report: dict[str, Any] = {
        "model": model_ref(loaded, args.model),
        "in_distribution": (f"{args.data} {args.split} ({data.provenance.get('note', data.provenance.get('source', 'as given'))}), "
                            f"n={len(idx)}, stride {len(data) / len(idx):g} from 0"),
        "sets": results,
        "set_details": details,
        "in_distribution_score_mean": {m: float(v.mean()) for m, v in scored_in.scores.items()},
        "methods_model": {m: (args.oe_model if m == "oe" else
                              args.model if m == "safespot" else (args.baseline_model or args.model))
                          for m in methods if m not in missing},
        "baseline_model": None if baseline is None else model_ref(baseline, args.baseline_model),
        "oe_model": None if oe is None else model_ref(oe, args.oe_model),
        "missing": missing, "skipped": skipped,
        "safespot": {"mu": mu, "mu_source": mu_source, "search": search_record(cfg, preset),
                     "config": cfg.to_dict(), "in_distribution_passes_per_image":
                     None if scored_in.passes is None else round(scored_in.passes, 1)}
        if "safespot" in methods else None,
        "mahalanobis_fit": maha_fit,
        "device": str(device), "torch_threads": torch.get_num_threads(),
        "seconds": round(time.time() - started, 1),
    }
    print(markdown_table(report, methods))
    if args.json_out:
        write_json(args.json_out, report)
    if args.plot:
        plot_scores(all_scores, "safespot" if "safespot" in methods else methods[0], Path(args.plot), report)
    return 0


def markdown_table(report: dict[str, Any], methods: list[str]) -> str:
    sets = report["sets"]
    lines = [f"model {report['model']['name']} ({report['model']['sha256'][:12]}); in-distribution: "
             f"{report['in_distribution']}", ""]
    for metric, label, scale in (("auroc", "AUROC (%)", 100), ("aupr", "AUPR-in (%)", 100),
                                 ("fpr95", "FPR at 95% TPR (%), lower is better", 100)):
        lines += [f"{label}:", "", "| OOD set | " + " | ".join(methods) + " |",
                  "|---" * (len(methods) + 1) + "|"]
        for name, per in sets.items():
            cells = [f"{per[m][metric] * scale:.2f}" if m in per else "missing" for m in methods]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if len(sets) > 1:
            avg = []
            for m in methods:
                vals = [per[m][metric] for per in sets.values() if m in per]
                avg.append(f"{np.mean(vals) * scale:.2f}" if len(vals) == len(sets) else "missing")
            lines.append("| average | " + " | ".join(avg) + " |")
        lines.append("")
    for name, why in {**report["missing"], **report["skipped"]}.items():
        lines.append(f"- {name}: {why}")
    return "\n".join(lines).rstrip()


def plot_scores(all_scores: dict[str, dict[str, np.ndarray]], method: str, path: Path,
                report: dict[str, Any]) -> None:
    """One panel per OOD set: histograms of `method`'s score, in-distribution vs that set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ood_names = [n for n in all_scores if n != "in-distribution" and method in all_scores[n]]
    s_in = all_scores["in-distribution"].get(method)
    if s_in is None or not ood_names:
        raise UsageError(f"nothing to plot for {method}")
    cols = min(len(ood_names), 3)
    rows = math.ceil(len(ood_names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, ood_names, strict=False):
        s_out = all_scores[name][method]
        lo, hi = float(min(s_in.min(), s_out.min())), float(max(s_in.max(), s_out.max()))
        bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 41)
        ax.hist(s_in, bins=bins, alpha=0.6, density=True, label="CIFAR-10 (in)")
        ax.hist(s_out, bins=bins, alpha=0.6, density=True, label=f"{name} (out)")
        auroc = report["sets"][name][method]["auroc"]
        ax.set_title(f"{name}: AUROC {auroc * 100:.1f}%", fontsize=10)
        ax.set_xlabel(f"{method} score" + (" D(x)" if method == "safespot" else ""))
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(ood_names):]:
        ax.axis("off")
    fig.suptitle(f"{Path(report['model']['name']).name}: {method} score, in-distribution vs OOD", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
