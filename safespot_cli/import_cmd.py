"""`safespot import`: another project's classifier -> our safetensors checkpoint (models/importers.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from safespot_cli.common import add_command, parse_view, write_json
from safespot_cli.errors import UsageError, usage_errors

HELP = """Convert a classifier's weights into a SafeSpot checkpoint (.safetensors with
its metadata), for `safespot filter --model`, `safespot serve` or the admin upload.

Reads torchvision and timm state dicts, robustness-library (Madry lab)
checkpoints and RobustBench checkpoints, as .pt/.pth/.ckpt or .safetensors.
Pickled files are read with torch.load(weights_only=True): one that holds
Python objects (a whole pickled model, argparse options) is refused, never run.
The layout is detected: prefixes such as `module.`, `model.` and
`module.model.` are stripped, the robustness library's `module.attacker.*`
copy is dropped, and a normaliser's mean/std in the file are read and used.
The weights then load into --arch with strict=True; a mismatch lists the
missing and unexpected keys.  Architectures are built by name: weights are
never downloaded.

The view says how an upload becomes the network's input, and the search
perturbs the full-resolution image through exactly that view:
  resize                   the whole image resized to the input size
  resize-crop[:RESIZE]     ImageNet's: shorter side to RESIZE (default H/0.875,
                           256 for 224), then the centre HxH crop
Default: resize-crop for timm/torchvision/resnet50 at a square size, else resize.

examples:
  safespot import resnet50_linf_eps4.0.ckpt -o madry_r50.safetensors --arch torchvision:resnet50
  safespot import Salman2020Do_R18.pt -o salman_r18.safetensors --arch timm:resnet18 --name salman-r18
  safespot import vit.pth -o vit.safetensors --arch timm:vit_small_patch16_224 --classes imagenet
  safespot import cifar.pt -o cifar.safetensors --arch preact_resnet18 --classes classes.txt \\
      --mean 0.4914,0.4822,0.4465 --std 0.2471,0.2435,0.2616 --view resize
  safespot import net.pt -o net.safetensors --arch timm:convnext_tiny --input-size 288 --view resize-crop:320"""


def register(sub: Any) -> None:
    p = add_command(sub, "import", "convert a torchvision/timm/robustness-library/RobustBench checkpoint",
                    HELP, run)
    p.add_argument("source", type=Path, metavar="SRC", help="the checkpoint to convert")
    p.add_argument("-o", "--out", type=Path, required=True, help="the .safetensors file to write")
    p.add_argument("--arch", required=True,
                   help="timm:<name>, torchvision:<name>, or one of ours (cifar_cnn, preact_resnet18, "
                        "wide_resnet, resnet50)")
    p.add_argument("--arch-arg", dest="arch_args", action="append", default=[], metavar="KEY=VALUE",
                   help="a constructor argument (repeatable), e.g. img_size=384 for a timm ViT")
    p.add_argument("--classes", default="imagenet",
                   help="'imagenet' (the 1000 ImageNet-1k names), a number of classes, or a file "
                        "(one name a line, or a JSON list)")
    p.add_argument("--wnids", type=Path, default=None, metavar="FILE",
                   help="the WordNet id of each class, in class-index order (the first word of each line: "
                        "a plain list, or ImageNet's LOC_synset_mapping.txt): lets `safespot eval --data` "
                        "match photo folders named by wnid (n01440764/)")
    p.add_argument("--input-size", type=_input_size, default=None, metavar="H|HxW|CxHxW",
                   help="the network's input (default: the architecture's own, 224 for ImageNet ones)")
    p.add_argument("--mean", type=_floats, default=None, help="comma-separated, [0,1] pixel units "
                   "(default: the file's normaliser, else ImageNet's)")
    p.add_argument("--std", type=_floats, default=None, help="as --mean")
    p.add_argument("--view", default=None, metavar="resize|resize-crop[:RESIZE]",
                   help="how an upload becomes the input (see above)")
    p.add_argument("--name", default=None, help="the model's name (default: SRC's file name)")
    p.add_argument("--json", dest="json_out", default=None, metavar="OUT",
                   help="also write what was done as JSON ('-': stdout)")


def run(args: argparse.Namespace) -> int:
    from models.architectures import native_input
    from models.errors import CheckpointError
    from models.importers import ImportRequest, import_checkpoint

    if not args.source.is_file():
        raise UsageError(f"no file at {args.source}")
    _check_known(args.arch)
    names, count = _classes(args.classes)
    arch_args = _arch_args(args.arch_args)
    built_for = arch_args.get("img_size") or arch_args.get("image_size")  # a ViT built for its size
    input_size = args.input_size or (_input_size(str(built_for)) if isinstance(built_for, int)
                                     else native_input(args.arch))
    request = ImportRequest(
        arch=args.arch, arch_args=arch_args, class_names=names, num_classes=count,
        input_size=input_size, view=parse_view(args.view, args.arch, input_size),
        name=args.name or args.source.stem, mean=args.mean, std=args.std,
        wnids=_wnids(args.wnids) if args.wnids else [])
    with usage_errors(CheckpointError, OSError, prefix=f"{args.source.name}: "):
        report = import_checkpoint(args.source, args.out, request)
    summary = _summary(report, args.out)
    print(_describe(summary), file=sys.stderr if args.json_out == "-" else sys.stdout)
    if args.json_out:
        write_json(args.json_out, summary)
    return 0


def _check_known(arch: str) -> None:
    from models.architectures import check_architecture

    try:
        check_architecture(arch)
    except KeyError as e:
        raise UsageError(str(e.args[0])) from None


def _summary(report: Any, out: Path) -> dict[str, Any]:
    from safespot.canvas import describe_view

    info, converted = report.info, report.converted
    return {"out": str(out), "sha256": report.sha256, "arch": info.arch, "arch_args": info.arch_args,
            "layout": converted.layout, "encoding": report.weights.encoding,
            "container": report.weights.container, "prefix_stripped": converted.prefix,
            "keys": len(converted.state), "keys_dropped": len(converted.dropped),
            "normaliser_from_file": converted.mean is not None,
            "num_classes": info.num_classes, "wnids": len(info.wnids), "input_size": list(info.input_size),
            "mean": info.mean, "std": info.std, "view": info.view,
            "view_description": describe_view(info.view, info.input_size), "name": info.name}


def _describe(s: dict[str, Any]) -> str:
    where = f" under '{s['container']}'" if s["container"] else ""
    prefix = f", prefix '{s['prefix_stripped']}' stripped" if s["prefix_stripped"] else ""
    dropped = f", {s['keys_dropped']} keys dropped (attacker copy, normaliser)" if s["keys_dropped"] else ""
    source = "the file's normaliser" if s["normaliser_from_file"] else "given or ImageNet's"
    return (f"wrote {s['out']} (sha256 {s['sha256'][:16]}…)\n"
            f"  {s['arch']}: {s['layout']} layout ({s['encoding']}{where}{prefix}{dropped}), {s['keys']} tensors\n"
            f"  {s['num_classes']} classes, input {'x'.join(map(str, s['input_size']))}, "
            f"mean {s['mean']} std {s['std']} ({source})\n"
            f"  view: {s['view_description']}")


def _wnids(path: Path) -> list[str]:
    """--wnids FILE: the first word of each non-empty line (ModelInfo.validate checks the count)."""
    if not path.is_file():
        raise UsageError(f"--wnids: no file {path}")
    if path.stat().st_size > 10 * 2**20:
        raise UsageError(f"--wnids: {path} is over 10 MiB")
    return [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _classes(spec: str) -> tuple[list[str], int]:
    """--classes: 'imagenet', a count, or a file of names -> (names, count)."""
    if spec == "imagenet":
        from models.importers import imagenet_classes

        names = imagenet_classes()
        return names, len(names)
    if spec.isdigit():
        count = int(spec)
        if not 2 <= count <= 100_000:
            raise UsageError(f"--classes {count}: between 2 and 100000 classes")
        return [], count
    path = Path(spec)
    if not path.is_file():
        raise UsageError(f"--classes: {spec!r} is not 'imagenet', a number or a file")
    if path.stat().st_size > 10 * 2**20:
        raise UsageError(f"--classes: {spec} is over 10 MiB")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            names = json.loads(text)
        except ValueError as e:
            raise UsageError(f"--classes: {spec} is not JSON ({e})") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise UsageError(f"--classes: {spec} must hold a JSON list of names")
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) < 2:
        raise UsageError(f"--classes: {spec} names {len(names)} classes; a classifier needs 2 or more")
    return names, len(names)


def _input_size(text: str) -> tuple[int, int, int]:
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected H, HxW or CxHxW") from None
    if len(parts) == 1:
        parts = [3, parts[0], parts[0]]
    elif len(parts) == 2:
        parts = [3, *parts]
    if len(parts) != 3 or not all(1 <= p <= 4096 for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: expected H, HxW or CxHxW, each 1..4096")
    return parts[0], parts[1], parts[2]


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers") from None


def _arch_args(items: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs; a value is read as JSON (numbers, [384, 384]) or kept as a string."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--arch-arg takes KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except ValueError:
            out[key.strip()] = raw
    return out
