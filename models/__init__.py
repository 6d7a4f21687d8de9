"""Architectures, the Normalize layer, the checkpoint format and the shipped models.

    from models import load_model
    model = load_model("default")        # or a path to a .safetensors checkpoint

Kept light on purpose: the generic top-level name `models` is imported by
tests and tools that only want `load_model`; torch loads on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from models.checkpoint import LoadedCheckpoint

ZOO_DIR = Path(__file__).resolve().parent / "zoo"
VETTING_DIR = Path(__file__).resolve().parent / "vetting"  # <domain>.npz: the shipped vetting sets
SHIPPED = ("default", "cifar10", "adv", "natural", "gaussian", "ood", "oe")


def resolve(name_or_path: str | Path) -> Path:
    """A shipped model's name (`default`, ...) or a checkpoint path -> the file."""
    from models.errors import UnknownModelError

    candidate = Path(name_or_path)
    if candidate.suffix == ".safetensors" or candidate.exists():
        if not candidate.is_file():
            raise UnknownModelError(f"no checkpoint file at {candidate}")
        return candidate
    shipped = ZOO_DIR / f"{name_or_path}.safetensors"
    if not shipped.is_file():
        available = sorted(p.stem for p in ZOO_DIR.glob("*.safetensors"))
        raise UnknownModelError(f"no model named {str(name_or_path)!r}; shipped: {available}")
    return shipped


def display_name(path: str | Path, metadata_name: str) -> str:
    """What a checkpoint is called: a shipped one by its file's stem (shipped files are renamed,
    their metadata never rewritten: recorded results cite the file's sha256), any other by the
    name its metadata gives, else by its stem."""
    path = Path(path)
    if path.resolve().parent == ZOO_DIR:
        return path.stem
    return metadata_name or path.stem


def load_checkpoint(name_or_path: str | Path, device: Any = "cpu") -> LoadedCheckpoint:
    """Model, metadata and sha256 of a shipped model or a checkpoint file."""
    from models.checkpoint import load_checkpoint as _load

    return _load(resolve(name_or_path), device=device)


def load_model(name_or_path: str | Path, device: Any = "cpu") -> nn.Module:
    """The classifier in eval mode: [0,1] NCHW images -> logits."""
    return load_checkpoint(name_or_path, device).model


__all__ = ["SHIPPED", "VETTING_DIR", "ZOO_DIR", "display_name", "load_checkpoint", "load_model", "resolve"]
