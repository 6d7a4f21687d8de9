"""`safespot eval`: the paper's table protocol on a data set."""

from __future__ import annotations

import argparse
import json
import time
from contextlib import ExitStack
from typing import Any

from safespot_cli import common
from safespot_cli.errors import UsageError, usage_errors

HELP = """Measure clean and adversarial accuracy of the images each method would publish
(none, s-fgsm, s-pgd, s-full), the safe-spot rate, passes per image and wall
time, on a fixed, class-balanced subset (--n images at a fixed stride).  The
yardstick attacks run on the 8-bit images each method publishes, against the
true labels: PGD-20 (the paper's: step eps/4, random start) always, and the
suites of --attack: 'autoattack' (standard AutoAttack: APGD-CE, APGD-T, FAB-T,
Square) or 'apgd' (APGD-CE + APGD-T).  For S-Full the JSON records, per
suite, the survivors after each attack and found_but_broken: images the
search's own verification called safe that the suite broke.

--data may be a folder of photos of any size (DIR/CLASS/*.JPEG, or Tiny
ImageNet's val/): class folders are matched to the checkpoint's classes by
name or wnid (unknown ones refused, or left out with --skip-unknown-classes),
each photo is decoded as an upload and passed through the checkpoint's view
to its input size, and the protocol runs on those 8-bit images; the JSON
records the class mapping and the view.

examples:
  safespot eval --model cifar10 --n 1000 --methods none,s-full --attack autoattack --json eval-linf.json
  safespot eval --model cifar10 --norm l2 --n 1000 --json eval-l2.json
  safespot eval --model cifar10 --preset paper --methods s-full --n 1000 --json paper.json
  safespot eval --model cifar10 --n 1000 --methods s-full --attack autoattack --part 2/2 --json p2.json
  safespot eval --model r50.safetensors --data imagenet/val --n 1000 --attack apgd --json r50.json"""


def register(sub: Any) -> None:
    p = common.add_command(sub, "eval", "the paper's evaluation protocol (table)", HELP, run)
    common.add_model_args(p)
    common.add_threat_args(p)
    common.add_eval_data_args(p)
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=1000, help="images, at a fixed stride over the set")
    p.add_argument("--part", default="1/1", metavar="K/M",
                   help="measure only every M-th of the --n images from the K-th, so that M processes or "
                        "machines share one table; `safespot eval-merge` joins the M reports")
    p.add_argument("--methods", default="none,s-fgsm,s-pgd,s-full")
    p.add_argument("--attack", default="pgd20",
                   help="comma-separated yardstick suites: pgd20 (always run), apgd, autoattack")
    p.add_argument("--confirm", default=None, metavar="SUITE",
                   help="S-Full counts a point as found only if this suite (apgd, autoattack) also fails "
                        "on it, else it searches on: what a stronger verification would find (slow; "
                        "its passes are not counted)")
    common.add_option(p, "--json")
    p.add_argument("--plot", default=None, metavar="PNG", help="bar chart of clean/adversarial accuracy")
    p.add_argument("--certify", action="store_true",
                   help="randomized smoothing: S-Full against the smoothed classifier, then CERTIFY "
                        "originals and safe spots (sigma from --sigma or the checkpoint)")
    p.add_argument("--sigma", type=float, default=None)
    p.add_argument("--samples", type=int, default=5, help="noise draws per pass of the smoothed search (M)")
    p.add_argument("--certify-n", type=int, default=1000, help="CERTIFY's n (Cohen et al. use 100,000)")


def run(args: argparse.Namespace) -> int:
    import torch

    from safespot.evaluation import METHODS, evaluate_methods
    from safespot.yardstick import suites_from
    from safespot_cli.eval_data import load_eval_data
    from safespot_cli.eval_parts import parse_part
    from training.data import to_tensor

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if set(methods) - set(METHODS):
        raise UsageError(f"--methods takes {','.join(METHODS)}")
    loaded, device = common.open_model(args)
    cfg = common.search_config(args, loaded.info)
    part = parse_part(args.part)
    data = load_eval_data(args.data, args.split, args.data_dir, loaded.info, args.n,
                          skip_unknown_classes=args.skip_unknown_classes, part=part)
    x = to_tensor(data.x, device)
    y = torch.from_numpy(data.y).to(device)
    n = len(data.y)
    with usage_errors(ValueError):
        suites = suites_from([a.strip() for a in args.attack.split(",") if a.strip()])
        if args.confirm is not None:
            suites_from([args.confirm])

    started = time.time()
    if args.certify:
        from safespot.evaluation import certify_before_after

        sigma = args.sigma or loaded.info.threat.get("sigma")
        if sigma is None:
            raise UsageError("--certify needs --sigma (the checkpoint records none)")
        smoothing = certify_before_after(loaded.model, x, y, cfg, float(sigma), args.samples,
                                         num=args.certify_n)
        print(json.dumps(smoothing, indent=2))
        if args.json_out:
            common.write_json(args.json_out, {"model": {"name": args.model, "sha256": loaded.sha256},
                                              "data": data.name, "n": n, "threat": {"norm": cfg.norm, "eps": cfg.eps},
                                              "preset": args.preset, "smoothing": smoothing,
                                              "seconds": round(time.time() - started, 1)})
        return 0
    with ExitStack() as bars, usage_errors(ImportError):  # ImportError: the optional yardstick extra

        def progress(method: str) -> Any:
            return bars.enter_context(common.progress_bar(n, method))

        reports = evaluate_methods(loaded.model, x, y, cfg, methods, suites, progress, confirm=args.confirm)
    out = {
        "model": common.model_ref(loaded, args.model),
        "data": data.name, **data.extra,
        "n": n, "total": data.total, "indices": f"stride {data.total / min(args.n, data.total):g} from 0",
        **({"part": {"k": part[0], "of": part[1], "n_all": min(args.n, data.total)}} if part != (1, 1) else {}),
        "threat": {"norm": cfg.norm, "eps": cfg.eps, "delta": cfg.budget},
        "preset": args.preset, "config": cfg.to_dict(), "device": str(device),
        "torch_threads": torch.get_num_threads(), "seconds": round(time.time() - started, 1),
        "methods": {m: r.to_dict() for m, r in reports.items()},
    }
    print(markdown_table(out))
    if args.json_out:
        common.write_json(args.json_out, out)
    if args.plot:
        plot_methods(out, args.plot)
    return 0


def markdown_table(report: dict[str, Any]) -> str:
    t = report["threat"]
    lines = [f"model {report['model']['name']} ({report['model']['sha256'][:12]}), {report['data']}, "
             f"n={report['n']}, {t['norm']} eps={t['eps']:.4g} delta={t['delta']:.4g}, preset {report['preset']}",
             ""]
    suites = list(next(iter(report["methods"].values()))["attacks"])
    head = ["method", "clean acc"] + [f"adv acc ({SUITE_NAMES.get(s, s)})" for s in suites]
    head += [f"safe-spot rate ({SUITE_NAMES.get(s, s)})" for s in suites] + ["passes/image", "seconds"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def pct(v: Any) -> str:
        return "-" if v is None else f"{v:.2%}"

    for name, m in report["methods"].items():
        cells = [name, pct(m["clean_acc"])] + [pct(m["attacks"][s]["adv_acc"]) for s in suites]
        cells += [pct(m["attacks"][s].get("safe_spot_rate")) for s in suites]
        cells += [f"{m.get('grad_evals_per_image', 0):.1f}", f"{m.get('seconds', 0):.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    full = report["methods"].get("s-full")
    if full:
        lines += ["", f"s-full: found {full['found']} of the correctly classified "
                      f"(rate {full['found_rate']:.2%}); found but broken: "
                  + ", ".join(f"{SUITE_NAMES.get(s, s)} {full['attacks'][s]['found_but_broken']}"
                              for s in suites)]
    return "\n".join(lines)


SUITE_NAMES = {"pgd20": "PGD-20", "apgd": "APGD-CE+T", "autoattack": "AutoAttack"}


def plot_methods(report: dict[str, Any], path: str) -> None:
    names = list(report["methods"])
    clean = [report["methods"][n]["clean_acc"] * 100 for n in names]
    suite = list(report["methods"][names[0]]["attacks"])[-1]
    adv = [report["methods"][n]["attacks"][suite]["adv_acc"] * 100 for n in names]
    fig, ax = common.pyplot().subplots(figsize=(6, 3.5))
    pos = range(len(names))
    ax.bar([p - 0.2 for p in pos], clean, 0.4, label="clean")
    ax.bar([p + 0.2 for p in pos], adv, 0.4, label=f"adversarial ({SUITE_NAMES.get(suite, suite)})")
    ax.set_xticks(list(pos), names)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    t = report["threat"]
    ax.set_title(f"{report['model']['name']}: {t['norm']} eps={t['eps']:.3g}, n={report['n']}")
    ax.legend()
    common.save_figure(fig, path)
