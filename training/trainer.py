"""The training sidecar: produces self-describing, safe-spot-aware checkpoints.

One process by default; under ``torchrun`` it trains with
DistributedDataParallel (gloo on CPU, NCCL on GPUs), each rank taking its
shard of every epoch.  A run directory holds:

- ``state.pt``: the resumable state (weights, optimiser, schedule position,
  random state, best score), written atomically every ``save_every`` steps
  and at each epoch end; read back with ``weights_only=True``;
- ``log.jsonl``: one JSON line per epoch (loss, clean and PGD accuracy on a
  fixed held-out slice, throughput, seconds);
- the final checkpoint (``--out``): the epoch with the best held-out PGD
  accuracy for robust recipes (guards against catastrophic overfitting of
  fast adversarial training), the last epoch otherwise or with ``keep="last"``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.checkpoint import ModelInfo, build_model, save_checkpoint
from models.hardware import PRECISION_SETTINGS, resolve_precision
from models.importers import view_from_spec
from models.normalize import CIFAR10_MEAN, CIFAR10_STD, Classifier
from safespot.attacks import pgd
from safespot.training import Recipe, training_batch, training_inputs, training_loss
from training.data import NAMED_DATA_SETS, ImageSet, holdout_split, load_dataset, to_tensor
from training.progress import Report, RunProgress

# An extra term with its own inputs (the OOD outliers): (model in eval mode, global step) -> (inputs
# forwarded in the training images' train-mode batch, their logits -> (loss, logs)).
ExtraLoss = Callable[[nn.Module, int], tuple[Tensor, Callable[[Tensor], tuple[Tensor, dict[str, float]]]]]


@dataclass
class TrainConfig:
    recipe: Recipe = field(default_factory=Recipe)
    # Optional curriculum: the first `warmup_epochs` use `warmup` (e.g. plain adversarial
    # training), the rest `recipe` (e.g. safe-spot-aware fine-tuning).
    warmup: Recipe | None = None
    warmup_epochs: int = 0
    init_from: str | None = None  # start from this checkpoint's weights (fine-tuning)
    arch: str = "cifar_cnn"
    arch_args: dict[str, Any] = field(default_factory=dict)
    data: str = "cifar10"
    data_dir: str | None = None
    limit: int | None = None  # train on the first `limit` images of the (shuffled) set
    holdout: int = 1000  # fixed held-out training images (never trained on)
    eval_pgd: int = 500  # of them, how many get the PGD-20 check each epoch
    epochs: int = 15
    batch_size: int = 128
    lr: float = 0.15  # peak of the one-cycle schedule
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_rise: float = 0.4  # fraction of steps spent rising to the peak learning rate
    augment: bool = True
    seed: int = 0
    run_dir: str = "runs/train"
    out: str = "runs/train/model.safetensors"
    name: str = ""
    domain: str | None = None  # what the images are, for vetting; None: the named set's (cifar10, ...)
    view: str | None = None  # "resize" | "resize-crop[:RESIZE]"; None: the whole image resized
    save_every: int = 100  # steps between resumable snapshots
    # The checkpoint's epoch: "best" held-out score of the final recipe, or "last" (where the one-cycle schedule ends).
    keep: str = "best"
    threads: int | None = None
    # Speed: bf16 autocast for the attack and training passes (AVX512-BF16/AMX CPUs, Ampere+ GPUs; no loss
    # scaling); held-out check and saved weights stay float32.  "auto": bf16 only where native (emulated bf16 is
    # many times slower).  Channels-last is build_model's layout; False: NCHW.  Both in docs/performance.md.
    precision: str = "fp32"  # "auto", "fp32" or "bf16"
    channels_last: bool = True
    command: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["recipe"] = self.recipe.to_dict()
        d["warmup"] = None if self.warmup is None else self.warmup.to_dict()
        return d

    def __post_init__(self) -> None:
        if self.precision not in PRECISION_SETTINGS:
            raise ValueError(f"precision must be one of {PRECISION_SETTINGS}, got {self.precision!r}")
        if self.keep not in ("best", "last"):
            raise ValueError(f"keep must be 'best' or 'last', got {self.keep!r}")

    def recipe_for(self, epoch: int) -> Recipe:
        if self.warmup is not None and epoch < self.warmup_epochs:
            return self.warmup
        return self.recipe


def train(cfg: TrainConfig, extra_loss: ExtraLoss | None = None, quiet: bool = False,
          on_epoch: Report | None = None, on_step: Report | None = None, report_every_s: float = 1.0) -> Path:
    """Train (or resume) the run in ``cfg.run_dir``; return the final checkpoint's path.

    `on_epoch` gets each epoch's log record (the line of ``log.jsonl``) as it is written;
    `on_step` the progress reports of training/progress.py, at most every `report_every_s`."""
    dist = _Distributed.setup()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = dist.device
    # The precision actually used is what the checkpoint records, not "auto".
    cfg = replace(cfg, precision=resolve_precision(cfg.precision, device))
    torch.manual_seed(cfg.seed)
    data = load_dataset(cfg.data, "train", cfg.data_dir)
    train_idx, held_idx = holdout_split(len(data), cfg.holdout, cfg.seed, cfg.limit)
    info = _model_info(cfg, data)
    model = build_model(info).to(device)
    if cfg.init_from:
        from models import load_checkpoint

        loaded = load_checkpoint(cfg.init_from)  # its sha256 is the file's: no second read
        start = loaded.model
        assert isinstance(start, Classifier)
        model.network.load_state_dict(start.network.state_dict())
        info.data["init_from"] = {"path": str(cfg.init_from), "sha256": loaded.sha256}
    model = use_layout(model, cfg.channels_last)
    net: nn.Module = dist.wrap(model)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay, nesterov=True)
    per_rank = len(train_idx) // dist.world // cfg.batch_size
    total_steps = max(1, per_rank * cfg.epochs)
    run_dir = Path(cfg.run_dir)
    if dist.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)  # the log may come before the first snapshot
    state = _load_state(run_dir, model, opt) or {"epoch": 0, "step": 0, "best": -1.0,
                                                   "seconds": 0.0, "best_epoch": -1}
    log = run_dir / "log.jsonl"
    held_x = to_tensor(data.x[held_idx], device)
    held_y = torch.from_numpy(data.y[held_idx]).to(device)
    gen = torch.Generator(device=device)
    progress = RunProgress(per_rank, cfg.epochs, cfg.batch_size * dist.world, start_epoch=state["epoch"],
                           start_step=state["step"], report=on_step if dist.rank == 0 else None,
                           bar=not quiet and dist.rank == 0, interval_s=report_every_s)
    for epoch in range(state["epoch"], cfg.epochs):
        order = np.random.default_rng(cfg.seed + epoch).permutation(train_idx)
        shard = order[dist.rank::dist.world][: per_rank * cfg.batch_size]
        started, seen, loss_sum, correct = time.time(), 0, 0.0, 0
        for step in range(state["step"], per_rank):
            gen.manual_seed(cfg.seed * 1_000_003 + epoch * 10_007 + step * 101 + dist.rank)
            batch = shard[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            x = to_tensor(data.x[batch], device)
            y = torch.from_numpy(data.y[batch]).to(device)
            if cfg.augment:
                x = random_crop_flip(x, gen)
            lr = _one_cycle(epoch * per_rank + step, total_steps, cfg.lr, cfg.lr_rise)
            for group in opt.param_groups:
                group["lr"] = lr
            loss, logits, logs = train_step(model, net, opt, x, y,
                                            cfg.recipe_for(epoch), gen, cfg.precision,
                                            extra_loss, epoch * per_rank + step)
            seen += len(batch)
            loss_sum += loss.item() * len(batch)
            correct += int((logits.argmax(1) == y).sum())
            progress.step(epoch, step, loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}",
                          lr=f"{lr:.3f}", **{k: f"{v:.3f}" for k, v in logs.items()})
            state["step"] = step + 1
            if dist.rank == 0 and cfg.save_every and state["step"] % cfg.save_every == 0:
                _save_state(run_dir, model, opt, state | {"epoch": epoch})
        seconds = time.time() - started
        model.eval()
        clean, robust = _held_out_metrics(model, held_x, held_y, cfg)
        record = {"epoch": epoch + 1, "train_loss": dist.mean(loss_sum / max(seen, 1)),
                  "train_acc": dist.mean(correct / max(seen, 1)), "holdout_clean_acc": clean,
                  "holdout_pgd_acc": robust, "seconds": seconds,
                  "images_per_s": dist.world * seen / seconds, "lr": lr}
        state["seconds"] += seconds
        score = robust if cfg.recipe.robust and not math.isnan(robust) else clean
        if dist.rank == 0:
            # Only epochs of the final recipe compete: a curriculum's warm-up is not the product.
            if epoch >= cfg.warmup_epochs and score >= state["best"]:
                state["best"], state["best_epoch"] = score, epoch + 1
                _atomic_torch_save(run_dir / "best.pt", {k: v.cpu() for k, v in model.network.state_dict().items()})
            with open(log, "a") as f:
                f.write(json.dumps(record) + "\n")
            if on_epoch is not None:
                on_epoch(record)
            if not quiet:
                progress.write(json.dumps(record))
        state.update(epoch=epoch + 1, step=0)
        if dist.rank == 0:
            _save_state(run_dir, model, opt, state)
            if cfg.warmup is not None and epoch + 1 == cfg.warmup_epochs:
                # Kept: a run with the warm-up's recipe throughout shares these epochs
                # exactly (same seed, same data order), so it can resume from here.
                shutil.copyfile(run_dir / "state.pt", run_dir / "state-after-warmup.pt")
        dist.barrier()
    progress.close()
    out = Path(cfg.out)
    if dist.rank == 0:
        kept = state["epoch"] if cfg.keep == "last" else state["best_epoch"]
        if cfg.keep == "best":  # else the model holds the last epoch's weights already
            model.network.load_state_dict(torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True))
        model.eval()
        info.training = {"seconds": round(state["seconds"], 1), "epochs": cfg.epochs, "kept": cfg.keep,
                         "kept_epoch": kept, "best_epoch": state["best_epoch"], "world_size": dist.world,
                         "host": f"{platform.machine()} {socket.gethostname()}",
                         "threads": torch.get_num_threads(), "torch": torch.__version__,
                         "device": str(device), "command": cfg.command, "config": cfg.to_dict()}
        info.metrics = {"holdout": _read_log(log)[kept - 1] if kept > 0 else {}}
        # An extra loss may describe itself (the OOD outlier terms: gamma, lambda, outlier split).
        info.ood = dict(getattr(extra_loss, "params", None) or {})
        save_checkpoint(model, info, out)
    dist.barrier()
    dist.close()
    return out


def train_step(model: nn.Module, net: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor,
               recipe: Recipe, gen: torch.Generator, precision: str = "fp32",
               extra_loss: ExtraLoss | None = None, global_step: int = 0) -> tuple[Tensor, Tensor, dict[str, float]]:
    """One optimisation step on the recipe's inputs for (x, y); returns (loss, logits, logs).

    `net` is `model` itself or its DistributedDataParallel wrapper.  The
    attack passes run in eval mode (fixed BatchNorm statistics, no running
    stats touched); the training pass in train mode.
    """
    device = x.device
    model.eval()
    with _autocast(device, precision):
        x_train = training_inputs(model, x, y, recipe, gen).detach()
        x_extra, score_extra = extra_loss(model, global_step) if extra_loss is not None else (None, None)
    model.train()
    logs: dict[str, float] = {}
    with _autocast(device, precision):
        # One batch: BatchNorm normalises the extra inputs with the same statistics as the
        # training images, as Outlier Exposure does.
        batch = training_batch(x, x_train, recipe)
        logits = net(batch if x_extra is None else torch.cat([batch, x_extra]))
        (loss, logits), logits_extra = training_loss(logits[:len(batch)], y, recipe), logits[len(batch):]
        if score_extra is not None:
            extra, logs = score_extra(logits_extra)
            loss = loss + extra
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach(), logits.detach(), logs


# ------------------------------------------------------------------ helpers
def _model_info(cfg: TrainConfig, data: ImageSet) -> ModelInfo:
    r = cfg.recipe
    threat = {"norm": r.norm, "eps": r.eps} if r.robust else (
        {"norm": "l2", "sigma": r.sigma} if r.name == "gaussian" else {})
    return ModelInfo(arch=cfg.arch, arch_args=dict(cfg.arch_args), num_classes=len(data.class_names),
                     input_size=(3, *data.x.shape[1:3]), class_names=list(data.class_names),
                     mean=list(CIFAR10_MEAN), std=list(CIFAR10_STD), threat=threat,
                     recipe=r.to_dict() | ({"warmup": cfg.warmup.to_dict(), "warmup_epochs": cfg.warmup_epochs}
                                          if cfg.warmup is not None else {}), data=dict(data.provenance) | {"holdout": cfg.holdout,
                                                                       "limit": cfg.limit},
                     wnids=list(data.wnids), name=cfg.name,
                     domain=cfg.domain if cfg.domain is not None else cfg.data if cfg.data in NAMED_DATA_SETS else "",
                     view=view_from_spec(cfg.view or "resize", cfg.arch, (3, *data.x.shape[1:3])))


def use_layout(model: Classifier, channels_last: bool) -> Classifier:
    """Weights and activations in channels-last (build_model's default) or NCHW."""
    model.channels_last = channels_last
    return model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _autocast(device: torch.device, precision: str) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def random_crop_flip(x: Tensor, gen: torch.Generator) -> Tensor:
    """Random crop with 4-pixel zero padding and random horizontal flip, per image."""
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    dx = torch.randint(0, 9, (n,), generator=gen, device=x.device).tolist()
    dy = torch.randint(0, 9, (n,), generator=gen, device=x.device).tolist()
    flip = torch.rand(n, generator=gen, device=x.device) < 0.5
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def _one_cycle(step: int, total: int, peak: float, rise_fraction: float) -> float:
    """Linear rise to `peak` over the warm-up fraction, then linear decay to zero."""
    rise = max(1, int(total * rise_fraction))
    return peak * step / rise if step < rise else peak * max(0.0, (total - step) / max(1, total - rise))


def _held_out_metrics(model: nn.Module, x: Tensor, y: Tensor, cfg: TrainConfig) -> tuple[float, float]:
    with torch.no_grad():
        clean = float(torch.cat([model(c).argmax(1) for c in x.split(500)]).eq(y).float().mean())
    r = cfg.recipe
    norm, eps = (r.norm, r.eps) if r.robust else ("linf", 8 / 255)
    n = min(cfg.eval_pgd, len(x))
    hits = []
    for xs, ys in zip(x[:n].split(250), y[:n].split(250), strict=True):
        hits.append(~pgd(model, xs, ys, norm=norm, eps=eps, steps=20).success)
    robust = float(torch.cat(hits).float().mean()) if hits else math.nan
    return round(clean, 4), round(robust, 4)


def _atomic_torch_save(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _save_state(run_dir: Path, model: nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    _atomic_torch_save(run_dir / "state.pt", {
        "model": {k: v.cpu() for k, v in model.state_dict().items()},
        "optimizer": opt.state_dict(), "progress": {k: state[k] for k in
                                                    ("epoch", "step", "best", "seconds", "best_epoch")},
        "torch_rng": torch.get_rng_state()})


def _load_state(run_dir: Path, model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any] | None:
    path = run_dir / "state.pt"
    if not path.is_file():
        return None
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["torch_rng"])
    print(f"resuming {run_dir} at epoch {saved['progress']['epoch'] + 1}, step {saved['progress']['step']}", file=sys.stderr)
    return dict(saved["progress"])


def _read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class _Distributed:
    """Single process unless launched by torchrun (WORLD_SIZE > 1)."""

    def __init__(self, rank: int, world: int, device: torch.device) -> None:
        self.rank, self.world, self.device = rank, world, device

    @classmethod
    def setup(cls) -> _Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls(0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        import torch.distributed as td

        local = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
            td.init_process_group("nccl")
            device = torch.device("cuda", local)
        else:
            td.init_process_group("gloo")
            device = torch.device("cpu")
        return cls(td.get_rank(), world, device)

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def mean(self, value: float) -> float:
        if self.world == 1:
            return round(value, 4)
        import torch.distributed as td

        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        td.all_reduce(t)
        return round(float(t) / self.world, 4)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as td

            td.barrier()

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as td

            td.destroy_process_group()
