"""What several subcommands share, written once: registration, options, models, reports."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from safespot_cli.errors import UsageError, usage_errors
from worker.protocol import NORMS, PRESETS, parse_budget


def add_command(sub: Any, name: str, summary: str, description: str,
                run: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    """`safespot NAME`, which runs `run(args)`; its description keeps its own line breaks."""
    p = sub.add_parser(name, help=summary, description=description,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(run=run)
    return p


def budget(text: str) -> float:
    """'8/255' or '0.0314' -> a positive float (argparse type)."""
    try:
        return parse_budget(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# The options several commands take; a command changes a field with add_option(p, name, field=...).
OPTIONS: dict[str, dict[str, Any]] = {
    "--model": {"default": "default",
                "help": "a shipped model (default, cifar10, adv, natural, gaussian, ood, oe) or a .safetensors path"},
    "--device": {"default": None, "help": "cpu, cuda, cuda:1 ... (default: cuda if available)"},
    "--threads": {"type": int, "default": None, "help": "CPU threads for torch"},
    "--data-dir": {"default": None, "help": "default: $SAFESPOT_DATA_DIR or ./data"},
    "--json": {"dest": "json_out", "default": None, "metavar": "OUT"},
    "--preset": {"default": "standard", "choices": PRESETS},
    "--norm": {"default": "linf", "choices": NORMS},
    "--eps": {"type": budget, "default": None,
              "help": "adversary budget, pixel units, e.g. 8/255 (default: the one the checkpoint was "
                      "trained for, else 8/255 L-inf, 0.5 L2)"},
    "--delta": {"type": budget, "default": None, "help": "defender budget (default: eps)"},
    "--seed": {"type": int, "default": 0},
}


def add_option(p: argparse.ArgumentParser, name: str, **changes: Any) -> None:
    p.add_argument(name, **(OPTIONS[name] | changes))


def add_options(p: argparse.ArgumentParser, *names: str) -> None:
    for name in names:
        add_option(p, name)


def add_model_args(p: argparse.ArgumentParser) -> None:
    add_options(p, "--model", "--device", "--threads")


def add_threat_args(p: argparse.ArgumentParser) -> None:
    add_options(p, "--preset", "--norm", "--eps", "--delta")
    p.add_argument("--batch-size", type=int, default=None, help="images searched at once")
    add_option(p, "--seed")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override one SearchConfig field of the preset (repeatable), "
                        "e.g. --set outer_steps=90 --set verify_targets=9")


def add_eval_data_args(p: argparse.ArgumentParser) -> None:
    """Where `eval` and `model-card` take their labelled images from (safespot_cli/eval_data.py)."""
    p.add_argument("--data", default=None,
                   help="default: the checkpoint's domain's set (cifar10, tinyimagenet); "
                        "'cifar10' or 'tinyimagenet' (from --data-dir), an .npz with x, y, or a folder of "
                        "photos: DIR/CLASS/*.JPEG or Tiny ImageNet's val/ (classes matched to the "
                        "checkpoint's by name or wnid, seen through its view)")
    add_option(p, "--data-dir")
    p.add_argument("--skip-unknown-classes", action="store_true",
                   help="photo folders: leave out (and count) class folders the checkpoint does not know, "
                        "instead of refusing")


def open_device(args: argparse.Namespace) -> Any:
    """--device (CUDA when there is one) with --threads CPU threads for torch."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    return torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def load_model(name_or_path: str | Path, device: Any = "cpu") -> Any:
    """A shipped model by name or a checkpoint file (LoadedCheckpoint); a bad one is a usage error."""
    from models import load_checkpoint
    from models.errors import ModelError

    with usage_errors(ModelError):
        return load_checkpoint(name_or_path, device)


def open_model(args: argparse.Namespace) -> tuple[Any, Any]:
    """--model on --device: (the LoadedCheckpoint, the device)."""
    device = open_device(args)
    return load_model(args.model, device), device


def model_ref(loaded: Any, name: str, **more: Any) -> dict[str, Any]:
    """How a report names the checkpoint it measured."""
    return {"name": name, "sha256": loaded.sha256, "arch": loaded.info.arch, **more}


def search_config(args: argparse.Namespace, info: Any = None) -> Any:
    """The preset with the command line's threat and overrides; without --eps, the budget the
    checkpoint (`info`, a ModelInfo) was trained for (ModelInfo.budget)."""
    from safespot import SearchConfig

    eps = args.eps if args.eps is not None or info is None else info.budget(args.norm)
    overrides: dict[str, Any] = {"seed": args.seed}
    if args.delta is not None:
        overrides["delta"] = args.delta
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    overrides.update(parse_overrides(getattr(args, "overrides", [])))
    with usage_errors(ValueError):
        return SearchConfig.preset(args.preset, norm=args.norm, eps=eps, **overrides)


def add_recorded_search_args(p: argparse.ArgumentParser) -> None:
    """The OOD score's search (the result gives MSP(x_a*)); None: what the checkpoint recorded."""
    add_threat_args(p)
    p.set_defaults(preset=None, norm=None)


def recorded_search_config(args: argparse.Namespace, info: Any) -> tuple[Any, dict[str, Any]]:
    """The OOD score's search: the command line first, then what calibration recorded in the
    checkpoint (`info.ood["search"]`), then its threat model; with the record to store."""
    recorded = info.ood.get("search", {})
    args.preset = args.preset or recorded.get("preset", "standard")
    args.norm = args.norm or recorded.get("norm") or info.norm
    args.eps = args.eps if args.eps is not None else recorded.get("eps")
    args.delta = args.delta if args.delta is not None else recorded.get("delta")
    cfg = search_config(args, info)
    return cfg, {"preset": args.preset, "norm": cfg.norm, "eps": cfg.eps, "delta": cfg.budget, "seed": cfg.seed}


@contextmanager
def progress_bar(total: int, desc: str) -> Iterator[Callable[[int, int], None]]:
    """A tqdm bar on stderr while inside; yields the search's `progress(done, total)` callback."""
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, file=sys.stderr,
              mininterval=2.0) as bar:

        def update(done: int, _total: int) -> None:
            bar.n = done
            bar.refresh()

        yield update


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """FIELD=VALUE pairs for SearchConfig, each value parsed as the field's type."""
    import dataclasses

    from safespot import SearchConfig

    defaults = {f.name: f.default for f in dataclasses.fields(SearchConfig)}
    out: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in defaults or name in ("norm", "eps"):
            raise UsageError(f"--set takes FIELD=VALUE with a SearchConfig field other than norm/eps "
                             f"(--norm, --eps); got {item!r}")
        default = defaults[name]
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


def save_figure(fig: Any, path: str | os.PathLike[str]) -> None:
    import matplotlib.pyplot as plt

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def pyplot() -> Any:
    """matplotlib's pyplot drawing off-screen (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """A report: indented JSON written atomically to `path`, or printed on stdout for "-"."""
    text = json.dumps(obj, indent=2) + "\n"
    if str(path) == "-":
        sys.stdout.write(text)
    else:
        atomic_write(Path(path), text.encode())


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> None:
    """A reader (or an interrupted run) never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def parse_view(spec: str | None, arch: str, input_size: tuple[int, int, int]) -> dict[str, Any]:
    """--view (resize | resize-crop[:RESIZE]) for a checkpoint of `arch` and `input_size`; None:
    the architecture's usual view."""
    from models.importers import view_from_spec

    try:
        return view_from_spec(spec, arch, input_size)
    except ValueError as e:
        raise UsageError(f"--view: {e}") from None
