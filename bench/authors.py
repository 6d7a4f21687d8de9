"""The authors' own code beside ours, on our model, judged by the same yardstick.

    python -m bench authors --checkout PATH [--model cifar10] [--n 100] [--suite apgd] [--json OUT]

PATH is a checkout of github:snu-mllab/preemptive-robustification.  We run
it, we never ship it.  Their code calls ``.cuda()`` everywhere; inside
:func:`cpu_only` that call returns the object unchanged, so it runs on the
CPU.  Their L-inf defence runs with ``configs/cifar10_linf.yaml``'s settings
(100 RMSprop steps at lr 0.1 on a tanh reparametrisation, PGD-20 inner attack
with step 2/255 and one random start, last iterate, no early exit: 2,100
passes per image) against the model's own predictions, as their
``robustify.py`` does.  Its output is rounded to 8 bits like ours, then all
three (theirs, our ``paper`` and ``standard`` presets) are judged on the same
images with PGD-20 and the chosen suite, true labels.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

EPS = 8 / 255
AUTHORS_PASSES_PER_IMAGE = 100 * (20 + 1)  # 100 outer steps of (PGD-20 + one outer gradient)


@contextlib.contextmanager
def cpu_only() -> Iterator[None]:
    """Make ``Tensor.cuda`` and ``Module.cuda`` no-ops for the authors' code."""
    saved = torch.Tensor.cuda, nn.Module.cuda

    def stay(self: Any, *args: Any, **kwargs: Any) -> Any:
        return self

    torch.Tensor.cuda, nn.Module.cuda = stay, stay  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda, nn.Module.cuda = saved  # type: ignore[method-assign]


def authors_defence(checkout: Path) -> Any:
    """Their PreemptRobustLinf class, imported from the checkout."""
    if not (checkout / "defenses" / "preempt_robust_linf.py").is_file():
        raise SystemExit(f"{checkout} is not a checkout of snu-mllab/preemptive-robustification")
    sys.path.insert(0, str(checkout))
    try:
        return importlib.import_module("defenses").PreemptRobustLinf
    finally:
        sys.path.remove(str(checkout))


def run_authors(defence_cls: Any, model: nn.Module, x: Tensor, chunk: int = 50,
                seed: int = 0) -> Tensor:
    """Their robustify loop over chunks of x; returns the 8-bit safe spots."""
    torch.manual_seed(seed)
    out = []
    with cpu_only():
        for part in x.split(chunk):
            with torch.no_grad():
                preds = model(part).argmax(1)
            defence = defence_cls(model=model, attack_type="PGDAttackLinf", epsilon=EPS,
                                  step_size=2 / 255, num_steps=20, random_starts=1, delta=EPS,
                                  lr=0.1, hessian=False)
            with contextlib.redirect_stdout(io.StringIO()):  # one print per step
                defence.initialize(part, preds, rec=False)
                for _ in range(100):
                    defence.update()
            out.append(defence.get_robust_img().detach())
    # 8-bit like every published image, and inside the budget after rounding (in grey levels,
    # so the bounds are exact).
    levels, original = torch.round(torch.cat(out) * 255), torch.round(x * 255)
    budget = round(EPS * 255)
    levels = torch.minimum(torch.maximum(levels, original - budget), original + budget)
    return levels.clamp(0, 255) / 255


def judged(model: nn.Module, x_orig: Tensor, x_pub: Tensor, y: Tensor, suites: list[str]) -> dict[str, Any]:
    from safespot.yardstick import judge

    with torch.no_grad():
        correct_before = model(x_orig).argmax(1) == y
    out: dict[str, Any] = {}
    for suite in suites:
        verdict = judge(model, x_pub, y, suite, norm="linf", eps=EPS)
        out[suite] = verdict.summary() | {
            "adv_acc": round(float(verdict.robust.float().mean()), 4),
            "safe_spot_rate": round(float(verdict.robust[correct_before].float().mean()), 4)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench authors", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkout", type=Path, required=True)
    p.add_argument("--model", default="cifar10")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--suite", default="apgd", choices=["apgd", "autoattack"])
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", dest="json_out", type=Path, default=None)
    args = p.parse_args(argv)

    from models import load_checkpoint
    from safespot import SearchConfig, find_safe_spots
    from training.data import load_dataset, strided_indices, to_tensor

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_checkpoint(args.model, torch.device("cpu"))
    data = load_dataset("cifar10", "test", args.data_dir)
    idx = strided_indices(len(data), args.n)
    x, y = to_tensor(data.x[idx]), torch.from_numpy(data.y[idx])
    suites = ["pgd20", args.suite]
    rows: dict[str, Any] = {}

    started = time.perf_counter()
    x_auth = run_authors(authors_defence(args.checkout), loaded.model, x)
    rows["authors"] = {"passes_per_image": AUTHORS_PASSES_PER_IMAGE,
                       "seconds": round(time.perf_counter() - started, 1),
                       "attacks": judged(loaded.model, x, x_auth, y, suites)}
    for preset in ("paper", "standard"):
        started = time.perf_counter()
        res = find_safe_spots(loaded.model, x, SearchConfig.preset(preset))
        rows[preset] = {"passes_per_image": round(res.grad_evals / len(x), 1),
                        "seconds": round(time.perf_counter() - started, 1),
                        "found": int(res.found.sum()),
                        "attacks": judged(loaded.model, x, res.x_safe, y, suites)}
    report = {"model": {"name": args.model, "sha256": loaded.sha256}, "n": len(idx),
              "data": "JPEG-derived CIFAR-10 test images at a fixed stride",
              "threat": {"norm": "linf", "eps": EPS}, "methods": rows}
    print(json.dumps(report, indent=2))
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    return 0
