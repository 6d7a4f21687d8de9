"""Arguments and helpers shared by the computing subcommands."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from safespot_cli.errors import UsageError
from worker.protocol import NORMS, PRESETS, parse_budget


def budget(text: str) -> float:
    """'8/255' or '0.0314' -> a positive float (argparse type)."""
    try:
        return parse_budget(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default",
                   help="a shipped model (default, adv, natural, gaussian, ood) or a .safetensors path")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")


def add_threat_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="standard", choices=PRESETS)
    p.add_argument("--norm", default="linf", choices=NORMS)
    p.add_argument("--eps", type=budget, default=None, help="adversary budget, pixel units (default 8/255 L-inf, 0.5 L2)")
    p.add_argument("--delta", type=budget, default=None, help="defender budget (default: eps)")
    p.add_argument("--batch-size", type=int, default=None, help="images searched at once")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override one SearchConfig field of the preset (repeatable), "
                        "e.g. --set outer_steps=90 --set verify_targets=9")


def open_device(args: argparse.Namespace) -> Any:
    """--device (CUDA when there is one) with --threads CPU threads for torch."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    return torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def open_model(args: argparse.Namespace) -> tuple[Any, Any]:
    from models import load_checkpoint
    from models.errors import ModelError

    device = open_device(args)
    try:
        return load_checkpoint(args.model, device), device
    except ModelError as e:
        raise UsageError(str(e)) from e


def search_config(args: argparse.Namespace) -> Any:
    from safespot import SearchConfig

    overrides: dict[str, Any] = {"seed": args.seed}
    if args.delta is not None:
        overrides["delta"] = args.delta
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    overrides.update(parse_overrides(getattr(args, "overrides", [])))
    try:
        return SearchConfig.preset(args.preset, norm=args.norm, eps=args.eps, **overrides)
    except ValueError as e:
        raise UsageError(str(e)) from e


def add_recorded_search_args(p: argparse.ArgumentParser) -> None:
    """The OOD score's search (the result gives MSP(x_a*)); None: what the checkpoint recorded."""
    add_threat_args(p)
    p.set_defaults(preset=None, norm=None)


def recorded_search_config(args: argparse.Namespace, info: Any) -> tuple[Any, dict[str, Any]]:
    """The OOD score's search: the command line first, then what calibration recorded in the
    checkpoint (`info.ood["search"]`), then its threat model; with the record to store."""
    recorded = info.ood.get("search", {})
    args.preset = args.preset or recorded.get("preset", "standard")
    args.norm = args.norm or recorded.get("norm") or info.threat.get("norm", "linf")
    args.eps = args.eps if args.eps is not None else (recorded.get("eps") or info.threat.get("eps"))
    args.delta = args.delta if args.delta is not None else recorded.get("delta")
    cfg = search_config(args)
    return cfg, {"preset": args.preset, "norm": cfg.norm, "eps": cfg.eps, "delta": cfg.budget, "seed": cfg.seed}


def progress_bar(total: int, desc: str) -> Any:
    """A tqdm bar on stderr and the `progress(done, total)` callback of the search that moves it."""
    import sys

    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, file=sys.stderr, mininterval=2.0)

    def update(done: int, _total: int) -> None:
        bar.n = done
        bar.refresh()

    return bar, update


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """FIELD=VALUE pairs for SearchConfig, each value parsed as the field's type."""
    import dataclasses

    from safespot import SearchConfig

    fields = {f.name: f for f in dataclasses.fields(SearchConfig)}
    out: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in fields or name in ("norm", "eps"):
            raise UsageError(f"--set takes FIELD=VALUE with a SearchConfig field other than norm/eps "
                             f"(--norm, --eps); got {item!r}")
        default = fields[name].default
        try:
            if raw.lower() in ("none", "null"):
                value: Any = None
            elif isinstance(default, bool):
                value = {"true": True, "false": False}[raw.lower()]
            elif isinstance(default, int):
                value = int(raw)
            elif isinstance(default, float) or default is None:
                value = float(raw)
            else:
                value = raw
        except (KeyError, ValueError):
            raise UsageError(f"--set {name}: cannot read {raw!r} as {type(default).__name__}") from None
        out[name] = value
    return out


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write(Path(path), (json.dumps(obj, indent=2) + "\n").encode())


def atomic_write(path: Path, data: bytes) -> None:
    """A reader (or an interrupted run) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
