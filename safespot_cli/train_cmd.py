"""`safespot train`: the training sidecar from the command line."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from safespot_cli import common
from worker.protocol import RECIPES

HELP = """Train a classifier with a (safe-spot-aware) adversarial recipe and write a
self-describing safetensors checkpoint.  Resumes automatically when RUN_DIR
holds a previous run's state.  For several processes or GPUs use torchrun:
  torchrun --nproc-per-node 2 -m safespot_cli.main train ...

examples:
  safespot train --recipe s-fgsm-adv --epochs 15 --out models/zoo/cifar10.safetensors
  safespot train --recipe natural --epochs 10 --run-dir runs/natural
  safespot train --recipe gaussian --sigma 0.25 --epochs 10
  safespot train --recipe adv-pgd --norm l2 --eps 0.5 --data /data/my_imagefolder
  safespot train --recipe trades --beta 6 --attack-steps 2 --attack-step 0.5 --eps 0.01568627"""


def register(sub: Any) -> None:
    p = common.add_command(sub, "train", "train a checkpoint (the training sidecar)", HELP, run)
    p.add_argument("--recipe", default="s-fgsm-adv", choices=RECIPES)
    common.add_option(p, "--norm")
    p.add_argument("--eps", type=float, default=None, help="attack budget in pixel units (default 8/255 L-inf, 0.5 L2)")
    p.add_argument("--delta", type=float, default=None, help="safe-spot step budget (default: eps)")
    p.add_argument("--attack", default="fast", choices=["fast", "pgd"], help="how s-*-adv attack the candidate")
    p.add_argument("--attack-steps", type=int, default=10)
    p.add_argument("--attack-step", type=float, default=0.25, help="PGD step as a fraction of eps")
    p.add_argument("--warmup-recipe", default=None, choices=RECIPES,
                   help="recipe of the first --warmup-epochs epochs (a curriculum)")
    p.add_argument("--warmup-epochs", type=int, default=0)
    p.add_argument("--init-from", default=None, help="fine-tune: start from this checkpoint's weights")
    p.add_argument("--safe-direction", default="towards", choices=["towards", "away"],
                   help="'away' reproduces the authors' public script")
    p.add_argument("--safe-fraction", type=float, default=1.0,
                   help="s-*-adv: share of each batch attacked from its safe-spot candidate "
                        "(the rest from the image itself)")
    p.add_argument("--sigma", type=float, default=0.25, help="noise level of the gaussian recipe")
    p.add_argument("--beta", type=float, default=6.0, help="trades: weight of the KL term")
    p.add_argument("--arch", default="cifar_cnn", help="cifar_cnn, preact_resnet18, wide_resnet, resnet50")
    p.add_argument("--width", type=int, default=None, help="cifar_cnn width")
    p.add_argument("--data", default="cifar10", help="'cifar10' (from --data-dir), an .npz file or an image folder")
    common.add_option(p, "--data-dir")
    p.add_argument("--limit", type=int, default=None, help="train on this many images only")
    p.add_argument("--holdout", type=int, default=1000)
    p.add_argument("--eval-pgd", type=int, default=500)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.15, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--lr-rise", type=float, default=0.4, help="share of the steps rising to the peak")
    common.add_option(p, "--seed")
    p.add_argument("--run-dir", default="runs/train")
    p.add_argument("--out", default=None, help="checkpoint path (default RUN_DIR/model.safetensors)")
    p.add_argument("--name", default="")
    p.add_argument("--domain", default=None,
                   help="what the images are, for vetting (default: the named set's, e.g. cifar10)")
    p.add_argument("--view", default=None, metavar="resize|resize-crop[:RESIZE]",
                   help="how an upload becomes the input (default: the whole image resized)")
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--keep", default="best", choices=["best", "last"],
                   help="the checkpoint's weights: the final recipe's epoch with the best held-out score "
                        "(PGD-20 for robust recipes), or the last epoch; a finished run re-run with "
                        "another --keep only rewrites the checkpoint")
    common.add_option(p, "--threads")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="bf16: autocast the attack and training passes (about 2x on CPUs with "
                        "AVX512-BF16/AMX and on recent GPUs, many times slower where bf16 is "
                        "emulated); auto: bf16 only where native; held-out check and weights stay fp32")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels-last convolutions (the default; faster with mkldnn on CPU)")
    p.add_argument("--outliers", default=None,
                   help="npz with auxiliary outliers (x_outlier_train) for the OOD terms")
    p.add_argument("--ood-gamma", type=float, default=0.5)
    p.add_argument("--ood-lambda", type=float, default=0.1)
    p.add_argument("--quiet", action="store_true")


def config_from_args(args: argparse.Namespace) -> Any:
    import dataclasses

    from models.formats import PAPER_EPS
    from safespot.training import Recipe
    from training.trainer import TrainConfig

    eps = args.eps if args.eps is not None else PAPER_EPS[args.norm]
    attack = dict(norm=args.norm, eps=eps, delta=args.delta, attack=args.attack,
                  attack_steps=args.attack_steps, attack_step=args.attack_step,
                  safe_direction=args.safe_direction, safe_fraction=args.safe_fraction, sigma=args.sigma,
                  beta=args.beta)
    # The options named like TrainConfig's fields are those fields; the rest are built here.
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    return TrainConfig(**given | {
        "recipe": Recipe(name=args.recipe, **attack),
        "warmup": Recipe(name=args.warmup_recipe, **attack) if args.warmup_recipe else None,
        "arch_args": {"width": args.width} if args.width else {},
        "out": args.out or f"{args.run_dir}/model.safetensors",
        "command": "safespot " + shlex.join(sys.argv[1:])})


def run(args: argparse.Namespace) -> int:
    from training.trainer import train

    if args.view:  # its syntax now, not after the data set is loaded (the size comes from the data)
        common.parse_view(args.view, args.arch, (3, 32, 32))
    cfg = config_from_args(args)
    extra = None
    if args.outliers:
        from training.ood_training import outlier_loss

        extra = outlier_loss(args.outliers, cfg, gamma=args.ood_gamma, lam=args.ood_lambda)
    path = train(cfg, extra_loss=extra, quiet=args.quiet)
    print(path)
    return 0
