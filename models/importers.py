"""Other people's checkpoints -> our safetensors format (``safespot import``, the admin upload).

Read without executing code: safetensors files with safetensors, anything else
only with ``torch.load(weights_only=True)`` (a restricted unpickler: a pickle
that would run code is refused before any of it runs).  Recognised layouts:

- a plain state dict (torchvision, timm), possibly DataParallel's ``module.``
  prefix, possibly under ``state_dict`` or ``model``;
- the robustness library (Madry lab): ``{"model": ..., "optimizer": ...,
  "epoch": ...}`` whose weights are ``module.model.*``, with a second copy
  under ``module.attacker.*`` (dropped) and the normaliser's
  ``module.normalizer.new_mean``/``new_std`` (read, then dropped);
- RobustBench: a state dict (or ``state_dict``/``last``) whose network sits
  under ``model.``/``module.``, with a normaliser as ``normalize.mean``/``std``
  or ``mu``/``sigma`` buffers (read, then dropped).

The prefix to strip is the one that makes the keys fit the named
architecture exactly; the weights then load with ``strict=True``.  Anything
else is refused with a message saying what was found.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from models.architectures import build_network, library_of
from models.checkpoint import (
    MAX_CHECKPOINT_BYTES,
    ModelInfo,
    file_sha256,
    model_from_state,
    save_checkpoint,
)
from models.errors import CheckpointError
from models.formats import HEAD_BYTES, looks_like_safetensors, looks_like_torch_save
from models.normalize import IMAGENET_MEAN, IMAGENET_STD, Classifier

# Where checkpoints keep their weights inside a larger dict, in the order we look.
CONTAINERS = ("model", "state_dict", "model_state_dict", "last")
# Prefixes that wrap the network: DataParallel, RobustBench's normalise-then-model Sequential,
# the robustness library's AttackerModel; the one that fits the architecture is stripped.
PREFIXES = ("", "module.", "model.", "module.model.", "model.module.")
# Normaliser buffers (mean key, std key, layout): the robustness library's InputNormalize,
# RobustBench's ImageNormalizer, and the mu/sigma (or mean/std) buffers of its CIFAR models.
NORMALISERS = (
    ("normalizer.new_mean", "normalizer.new_std", "robustness-library"),
    ("normalize.mean", "normalize.std", "robustbench"),
    ("mu", "sigma", "robustbench"),
    ("mean", "std", "robustbench"),
)
ATTACKER = "attacker."  # the robustness library's second copy of the network
IMAGENET_CROP_FRACTION = 0.875  # ImageNet's evaluation: resize to 256, crop 224
NORMALISER_TOLERANCE = 1e-4


@dataclass
class ForeignWeights:
    """The tensors of a foreign file, as found (container unwrapped)."""

    state: dict[str, Tensor]
    encoding: str  # "safetensors" or "torch.save"
    container: str = ""  # the key the weights were under, "" at the top


@dataclass
class Converted:
    """Weights renamed to fit a network, and what the file said about normalisation."""

    state: dict[str, Tensor]
    layout: str  # "state-dict", "robustness-library" or "robustbench"
    prefix: str = ""  # stripped from every key
    mean: list[float] | None = None  # the file's own normaliser, when it has one
    std: list[float] | None = None
    dropped: list[str] = field(default_factory=list)  # keys left out (attacker copy, normaliser)


def read_weights(path: str | os.PathLike[str]) -> ForeignWeights:
    """The tensors of a safetensors file or a torch.save file, never executing code."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"{path.name}: {size} bytes is over the {MAX_CHECKPOINT_BYTES}-byte limit")
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
    if looks_like_safetensors(head):
        try:
            with safe_open(str(path), framework="pt") as st:
                return ForeignWeights({k: st.get_tensor(k) for k in st.keys()}, "safetensors")  # noqa: SIM118
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path.name}: not a readable safetensors file ({e})") from e
    if not looks_like_torch_save(head):
        raise CheckpointError(f"{path.name}: not a checkpoint: expected a .safetensors file or a "
                              "PyTorch torch.save file (.pt/.pth/.ckpt)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the unpickler refuses globals with its own error types
        raise CheckpointError(
            f"{path.name}: not a plain tensor state dict ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "it holds Python objects that loading would have to run: save model.state_dict() instead") from e
    return _unwrap(obj, path.name)


def _is_state(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def _unwrap(obj: Any, name: str) -> ForeignWeights:
    if _is_state(obj):
        return ForeignWeights(dict(obj), "torch.save")
    if isinstance(obj, Mapping):
        for key in CONTAINERS:
            if _is_state(obj.get(key)):
                return ForeignWeights(dict(obj[key]), "torch.save", container=key)
        keys = sorted(str(k) for k in obj)[:10]
        raise CheckpointError(f"{name}: no state dict found: top-level keys {keys}; expected tensors, "
                              f"or a dict of tensors under one of {list(CONTAINERS)}")
    raise CheckpointError(f"{name}: holds a {type(obj).__name__}, not a state dict")


def convert(weights: ForeignWeights, expected: Sequence[str], channels: int = 3) -> Converted:
    """Rename `weights` to fit a network whose state dict has the keys `expected`: drop the
    attacker copy and the normaliser (reading its mean/std), strip the wrapping prefix.
    CheckpointError listing missing and unexpected keys when nothing fits exactly."""
    state = dict(weights.state)
    outer = "module." if _all_have(state, "module.") else ""  # DataParallel wraps everything
    state = {k.removeprefix(outer): v for k, v in state.items()}
    layout = "state-dict"
    dropped = sorted(k for k in state if k.startswith(ATTACKER))
    if dropped:
        layout = "robustness-library"
    for k in dropped:
        del state[k]
    wanted = set(expected)
    mean = std = None
    for mean_key, std_key, kind in NORMALISERS:
        if mean_key in state and std_key in state and mean_key not in wanted:
            mean, std = _statistic(state.pop(mean_key), channels), _statistic(state.pop(std_key), channels)
            dropped += [mean_key, std_key]
            layout = kind if layout == "state-dict" else layout
            break
    prefix = max(PREFIXES, key=lambda p: (_fits(state, p, wanted), -len(p)))
    renamed = {k.removeprefix(prefix): v for k, v in state.items()} if _all_have(state, prefix) else state
    missing, unexpected = sorted(wanted - set(renamed)), sorted(set(renamed) - wanted)
    if missing or unexpected:
        raise CheckpointError(
            f"the weights ({layout} layout) do not fit the architecture: "
            f"{len(missing)} missing {missing[:6]}, {len(unexpected)} unexpected {unexpected[:6]}")
    return Converted(renamed, layout, outer + prefix if _all_have(state, prefix) else outer,
                     mean, std, [outer + k for k in dropped])


def _all_have(state: Mapping[str, Tensor], prefix: str) -> bool:
    return all(k.startswith(prefix) for k in state)


def _fits(state: Mapping[str, Tensor], prefix: str, wanted: set[str]) -> int:
    """How many keys match once `prefix` is stripped (only a prefix every key has counts)."""
    if not _all_have(state, prefix):
        return -1
    return len({k.removeprefix(prefix) for k in state} & wanted)


def _statistic(t: Tensor, channels: int) -> list[float]:
    if t.numel() != channels or not t.is_floating_point():
        raise CheckpointError(f"the normaliser holds {tuple(t.shape)} {t.dtype}, not {channels} channel values")
    return [round(float(v), 6) for v in t.reshape(-1)]


def normalisation(converted: Converted, mean: Sequence[float] | None, std: Sequence[float] | None,
                  ) -> tuple[list[float], list[float]]:
    """The mean/std to record: the file's normaliser, the given values, or ImageNet's.  When the
    file has a normaliser and other values are given too, they must agree: a model fed the
    wrong statistics still runs, and silently mislabels."""
    for given, found, what in ((mean, converted.mean, "mean"), (std, converted.std, "std")):
        if given is not None and found is not None and (
                len(given) != len(found)
                or any(abs(float(a) - b) > NORMALISER_TOLERANCE for a, b in zip(given, found, strict=False))):
            raise CheckpointError(f"the file's normaliser has {what} {found} but {list(given)} was given; "
                                  f"leave {what} out to use the file's")
    chosen_mean = converted.mean or (list(mean) if mean is not None else list(IMAGENET_MEAN))
    chosen_std = converted.std or (list(std) if std is not None else list(IMAGENET_STD))
    return [float(v) for v in chosen_mean], [float(v) for v in chosen_std]


def network_keys(arch: str, num_classes: int, arch_args: Mapping[str, Any]) -> list[str]:
    try:
        net = build_network(arch, num_classes=num_classes, **dict(arch_args))
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"cannot build {arch}: {e.args[0] if e.args else e}") from e
    return list(net.state_dict())


def model_from_file(path: str | os.PathLike[str], info: ModelInfo) -> tuple[Classifier, Converted]:
    """The admin upload's path: a foreign file of any recognised layout, loaded strictly into
    the architecture that `info` (the uploader's metadata) names.  A normaliser in the file
    must agree with ``info.mean``/``info.std``."""
    weights = read_weights(path)
    converted = convert(weights, network_keys(info.arch, info.num_classes, info.arch_args), info.input_size[0])
    normalisation(converted, info.mean, info.std)
    return model_from_state(info, converted.state), converted


def default_view(arch: str, input_size: Sequence[int]) -> dict[str, Any]:
    """ImageNet's evaluation view (resize to H / 0.875, centre crop) for a square ImageNet-sized
    library architecture, else the whole-image resize the project's own models use."""
    height, width = input_size[-2:]
    if (library_of(arch) or arch == "resnet50") and height == width:
        return resize_crop_view(height)
    return {"kind": "resize"}


def resize_crop_view(crop: int, resize: int | None = None) -> dict[str, Any]:
    return {"kind": "resize-crop", "resize": int(resize or int(crop / IMAGENET_CROP_FRACTION)), "crop": int(crop)}


def imagenet_classes() -> list[str]:
    """ImageNet-1k's 1000 class names in the usual index order (torchvision ships them as
    code: no download)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


@dataclass
class ImportRequest:
    """What `safespot import` knows beyond the file: the architecture and how to feed it."""

    arch: str
    class_names: list[str]
    num_classes: int
    input_size: tuple[int, int, int]
    view: dict[str, Any]
    name: str
    arch_args: dict[str, Any] = field(default_factory=dict)
    mean: list[float] | None = None
    std: list[float] | None = None
    wnids: list[str] = field(default_factory=list)  # per class index; how ImageNet photo folders name them


@dataclass
class ImportReport:
    info: ModelInfo
    sha256: str  # of the written checkpoint
    converted: Converted
    weights: ForeignWeights


def import_checkpoint(source: str | os.PathLike[str], target: str | os.PathLike[str],
                      request: ImportRequest) -> ImportReport:
    """Convert `source` into our safetensors checkpoint at `target` (written atomically)."""
    source = Path(source)
    info = ModelInfo(  # checked before the weights are read: a mistake here is cheaper to hear first
        arch=request.arch, arch_args=dict(request.arch_args), num_classes=request.num_classes,
        input_size=request.input_size, class_names=list(request.class_names),
        mean=list(request.mean or IMAGENET_MEAN), std=list(request.std or IMAGENET_STD),
        view=dict(request.view), wnids=list(request.wnids), name=request.name)
    try:
        info.validate()
    except CheckpointError as e:
        raise CheckpointError(f"metadata: {str(e).removeprefix('metadata: ')}") from e
    weights = read_weights(source)
    expected = network_keys(request.arch, request.num_classes, request.arch_args)
    converted = convert(weights, expected, request.input_size[0])
    info.mean, info.std = normalisation(converted, request.mean, request.std)
    info.recipe = {"name": "imported", "layout": converted.layout, "encoding": weights.encoding,
                   "source": source.name, "source_sha256": file_sha256(source)}
    info.validate()
    model = model_from_state(info, converted.state)
    return ImportReport(info, save_checkpoint(model, info, target), converted, weights)


def view_from_spec(spec: str | None, arch: str, input_size: Sequence[int]) -> dict[str, Any]:
    """A view written as ``resize`` or ``resize-crop[:RESIZE]`` (None: the architecture's usual
    one) for a network of `input_size` (C, H, W); ValueError when it cannot be one."""
    if spec is None:
        return default_view(arch, tuple(input_size))
    kind, _, resize = spec.partition(":")
    if kind == "resize" and not resize:
        return {"kind": "resize"}
    if kind == "resize-crop" and (not resize or resize.isdigit()):
        height, width = input_size[-2:]
        if height != width:
            raise ValueError(f"resize-crop crops a square; the input size is {height}x{width}")
        return resize_crop_view(height, int(resize) if resize else None)
    raise ValueError(f"{spec!r}: expected resize, resize-crop or resize-crop:RESIZE")


__all__ = ["Converted", "ForeignWeights", "ImportReport", "ImportRequest", "convert", "default_view",
           "imagenet_classes", "import_checkpoint", "model_from_file", "normalisation", "read_weights",
           "resize_crop_view", "view_from_spec"]

