"""`safespot model-card`: measure a checkpoint on a test set and write its card."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from safespot_cli import common

HELP = """Measure clean and PGD-20 (step eps/4, random start) accuracy of a checkpoint on a
test set, and standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square) on a fixed
subset of it (--autoattack-n images at a stride, with PGD-20 on the same images
beside it: a gap of more than a few points suggests gradient masking); store
them in the checkpoint's metadata (metrics.test; the file and its sha256
change) and write the markdown model card next to it (NAME.md).

examples:
  safespot model-card models/zoo/cifar10.safetensors --n 10000 --autoattack-n 1000
  safespot model-card models/zoo/gaussian.safetensors --n 10000 --norm l2 --eps 0.5
  safespot model-card tiny200.safetensors --data tiny-imagenet-200/val --n 10000 --autoattack-n 1000

--data takes the same sets as `safespot eval`, photo folders included (classes
matched by name or wnid, photos seen through the checkpoint's view); the card
then records the class mapping and the view."""


def register(sub: Any) -> None:
    p = common.add_command(sub, "model-card", "measure a checkpoint and write its model card", HELP, run)
    p.add_argument("checkpoint", help="a .safetensors checkpoint")
    common.add_eval_data_args(p)
    p.add_argument("--n", type=int, default=10000)
    common.add_option(p, "--norm", default=None, help="default: the checkpoint's threat model")
    common.add_option(p, "--eps", type=float, help="default: the checkpoint's threat model")
    p.add_argument("--autoattack-n", type=int, default=1000,
                   help="images (a strided subset) judged by AutoAttack; 0 skips it")
    p.add_argument("--note", default=None, help="a note on how the training time was measured")
    common.add_option(p, "--threads")
    p.add_argument("--render-only", action="store_true", help="only regenerate the markdown")


def run(args: argparse.Namespace) -> int:
    import torch

    from models import display_name
    from models.cards import render_card
    from models.checkpoint import save_checkpoint
    from safespot import SearchConfig
    from safespot.evaluation import evaluation_attack
    from safespot.losses import predict_logits
    from safespot.yardstick import judge
    from safespot_cli.eval_data import load_eval_data
    from training.data import strided_indices, to_tensor

    if args.threads:
        torch.set_num_threads(args.threads)
    path = Path(args.checkpoint)
    loaded = common.load_model(path)
    info = loaded.info
    if args.note:
        info.training["note"] = args.note
    if not args.render_only:
        norm = args.norm or info.norm
        eps = args.eps if args.eps is not None else info.budget(norm)  # a smoothing model's: the paper's
        data = load_eval_data(args.data, "test", args.data_dir, info, args.n,
                              skip_unknown_classes=args.skip_unknown_classes)
        x, y = to_tensor(data.x), torch.from_numpy(data.y)
        n = len(data.y)
        correct = predict_logits(loaded.model, x).argmax(1) == y
        cfg = SearchConfig(norm=norm, eps=eps)
        robust = correct & ~evaluation_attack(loaded.model, x, y, cfg)
        info.metrics["test"] = {
            "data": data.name, **data.extra,
            "n": n, "clean_acc": round(float(correct.float().mean()), 4),
            "pgd20_acc": round(float(robust.float().mean()), 4),
            "attack": f"PGD-20, {norm} eps={eps:.4g}, step eps/4, random start, true labels",
            "command": "safespot " + shlex.join(sys.argv[1:]),
        }
        if args.autoattack_n > 0:
            sub = strided_indices(n, min(args.autoattack_n, n))
            verdict = judge(loaded.model, x[sub], y[sub], "autoattack", norm=norm, eps=eps)
            info.metrics["test"].update({
                "autoattack_n": len(sub), "autoattack_acc": round(float(verdict.robust.float().mean()), 4),
                "pgd20_acc_same_images": round(float(robust[sub].float().mean()), 4),
                "autoattack_survivors": verdict.survivors,
                "autoattack": "standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square; torchattacks), "
                              f"{norm} eps={eps:.4g}, true labels, seed fixed",
            })
        save_checkpoint(loaded.model, info, path, ood_detector=loaded.ood_detector)
        loaded = common.load_model(path)
        test = info.metrics["test"]
        print(f"{path.name}: clean {test['clean_acc']:.4f}, PGD-20 {test['pgd20_acc']:.4f} on {n} images"
              + (f"; AutoAttack {test['autoattack_acc']:.4f} vs PGD-20 {test['pgd20_acc_same_images']:.4f} "
                 f"on {test['autoattack_n']}" if "autoattack_acc" in test else ""))
    card = path.with_suffix(".md")
    common.atomic_write(card, render_card(loaded.info, loaded.sha256, path.name,
                                             name=display_name(path, loaded.info.name)))
    print(card)
    return 0
