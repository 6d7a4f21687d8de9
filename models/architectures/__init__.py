"""Classifier architectures, rebuilt by name from a checkpoint's metadata.

Every builder returns a network taking *normalised* inputs; `models.build`
puts the :class:`~models.normalize.Normalize` layer in front, so the full
model takes [0,1] pixels.

Besides the project's own networks, any classification architecture of timm
(``"timm:<name>"``, e.g. ``timm:convnext_tiny``) or torchvision
(``"torchvision:<name>"``, e.g. ``torchvision:resnet50``) builds by name.
Only the architecture: weights are never downloaded (``pretrained=False``,
``weights=None``); the checkpoint supplies them.  A checkpoint's metadata is
hostile until validated, so the names are checked against the libraries' own
lists and only a few plain keyword arguments reach their constructors (timm's
``checkpoint_path`` or ``pretrained_cfg_overlay`` would read files or fetch).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from torch import nn

from models.architectures.cifar_cnn import CifarCNN
from models.architectures.preact_resnet import PreActResNet18
from models.architectures.wide_resnet import WideResNet

Builder = Callable[..., nn.Module]

TIMM = "timm:"
TORCHVISION = "torchvision:"
# The constructor arguments a checkpoint may set for a library architecture: sizes and
# regularisation only (a ViT's positional embedding is built for its image size).
LIBRARY_ARGS: dict[str, frozenset[str]] = {
    TIMM: frozenset({"img_size", "drop_rate", "drop_path_rate", "global_pool"}),
    TORCHVISION: frozenset({"image_size", "dropout", "stochastic_depth_prob"}),
}


def _resnet50(num_classes: int = 1000) -> nn.Module:
    # torchvision's ResNet-50 without downloaded weights: users load their own state dict.
    from torchvision.models import resnet50

    return resnet50(weights=None, num_classes=num_classes)


ARCHITECTURES: dict[str, Builder] = {
    "cifar_cnn": CifarCNN,
    "preact_resnet18": PreActResNet18,
    "wide_resnet": WideResNet,
    "resnet50": _resnet50,
}

# Input size (C, H, W) each architecture was designed for.
NATIVE_INPUT: dict[str, tuple[int, int, int]] = {
    "cifar_cnn": (3, 32, 32),
    "preact_resnet18": (3, 32, 32),
    "wide_resnet": (3, 32, 32),
    "resnet50": (3, 224, 224),
}
IMAGENET_INPUT = (3, 224, 224)


@cache
def timm_names() -> frozenset[str]:
    import timm

    return frozenset(timm.list_models())


@cache
def torchvision_names() -> frozenset[str]:
    import torchvision.models

    return frozenset(torchvision.models.list_models(module=torchvision.models))  # classifiers only


def library_of(arch: str) -> str | None:
    """"timm:" or "torchvision:" for a library architecture's name, else None."""
    return next((prefix for prefix in LIBRARY_ARGS if arch.startswith(prefix)), None)


def check_architecture(arch: str, arch_args: dict[str, Any] | None = None) -> None:
    """KeyError naming what is known when `arch` is not buildable; ValueError for arguments
    a checkpoint may not pass to a library's constructor."""
    library = library_of(arch)
    if library is None:
        if arch not in ARCHITECTURES:
            raise KeyError(f"unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}, "
                           f"or timm:<name> / torchvision:<name>")
        return
    name = arch.removeprefix(library)
    names = timm_names() if library == TIMM else torchvision_names()
    if name not in names:
        close = sorted(n for n in names if n.startswith(name[:4]))[:8]
        raise KeyError(f"{library[:-1]} has no classification architecture {name!r}"
                       + (f"; similar: {close}" if close else ""))
    refused = sorted(set(arch_args or {}) - LIBRARY_ARGS[library])
    if refused:
        raise ValueError(f"{arch}: arguments {refused} are not allowed; "
                         f"allowed: {sorted(LIBRARY_ARGS[library])}")
    for key, value in (arch_args or {}).items():
        plain = isinstance(value, int | float | str) or (
            isinstance(value, list | tuple) and all(isinstance(v, int) for v in value))
        if not plain or (isinstance(value, str) and len(value) > 32):
            raise ValueError(f"{arch}: argument {key}={value!r} is not a plain number, size or short name")


def native_input(arch: str) -> tuple[int, int, int]:
    """The input size (C, H, W) an architecture was designed for (ImageNet's for a library
    architecture that does not say)."""
    if arch in NATIVE_INPUT:
        return NATIVE_INPUT[arch]
    if library_of(arch) == TIMM:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(arch.removeprefix(TIMM))
        if cfg is not None and cfg.input_size:
            return tuple(int(v) for v in cfg.input_size)  # type: ignore[return-value]
    return IMAGENET_INPUT


def build_network(arch: str, **kwargs: Any) -> nn.Module:
    num_classes = kwargs.pop("num_classes", None)
    check_architecture(arch, kwargs if library_of(arch) else None)
    library = library_of(arch)
    sized = {} if num_classes is None else {"num_classes": num_classes}
    if library == TIMM:
        import timm

        return timm.create_model(arch.removeprefix(TIMM), pretrained=False, **sized, **kwargs)
    if library == TORCHVISION:
        import torchvision.models

        return torchvision.models.get_model(arch.removeprefix(TORCHVISION), weights=None, **sized, **kwargs)
    return ARCHITECTURES[arch](**sized, **kwargs)
