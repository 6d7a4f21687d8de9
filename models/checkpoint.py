"""The checkpoint format: one safetensors file that describes itself.

- Weights: the network's state dict, stored with safetensors (no pickle: a
  loaded file cannot run code).
- Metadata: a JSON document in the safetensors header under the key
  ``safespot`` (architecture and its arguments, input size, classes,
  normalisation, the view (how an upload becomes the network's input:
  safespot/canvas.py), optional WordNet ids of the classes (``wnids``: how
  ImageNet-style photo folders name them), threat model, training recipe and arguments, measured
  metrics, data provenance, timings, the command that produced it), plus
  ``weights_sha256``, a digest of the tensors that loading re-checks.
- Identity: the sha256 of the whole file, reported by the service as the
  model's version.
- Optionally, the OOD detector that the service's ``ood_flag`` uses: plain
  float64 tensors under the reserved prefix ``ood/mahalanobis/``, described by
  the ``ood`` metadata and covered by ``weights_sha256`` (models/ood_detector.py).

User-supplied PyTorch state dicts (``.pt``/``.pth``) are read only with
``torch.load(weights_only=True)`` and converted to this format.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from models.architectures import build_network, check_architecture
from models.errors import CheckpointError
from models.formats import PAPER_EPS, trained_threat
from models.normalize import Classifier
from models.ood_detector import (
    MAHALANOBIS_SCORE,
    check_detector_fits,
    check_ood_metadata,
    detector_from_tensors,
    detector_tensors,
    flag_score,
    split_state,
)
from safespot.canvas import DEFAULT_VIEW, check_view
from safespot.ood import LayerwiseMahalanobis

FORMAT_VERSION = 1
METADATA_KEY = "safespot"
MAX_CHECKPOINT_BYTES = 2 * 1024**3  # torchvision ResNet-50 is ~100 MB; refuse absurd files


@dataclass
class ModelInfo:
    """What a checkpoint says about itself."""

    arch: str
    num_classes: int
    input_size: tuple[int, int, int]  # (C, H, W) the network expects
    class_names: list[str]
    mean: list[float]
    std: list[float]
    arch_args: dict[str, Any] = field(default_factory=dict)
    threat: dict[str, Any] = field(default_factory=dict)  # {"norm": "linf", "eps": 0.0314}
    recipe: dict[str, Any] = field(default_factory=dict)  # {"name": "s-fgsm-adv", ...args}
    metrics: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)  # provenance
    training: dict[str, Any] = field(default_factory=dict)  # command, seconds, epochs, host
    ood: dict[str, Any] = field(default_factory=dict)  # OOD score parameters and threshold
    view: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_VIEW))  # safespot.canvas.make_view
    # WordNet ids per class index (ImageNet/Tiny ImageNet folders are named by them); [] when unknown
    wnids: list[str] = field(default_factory=list)
    name: str = ""
    domain: str = ""  # what the images are ("cifar10"): picks the vetting set; "" when unknown
    format_version: int = FORMAT_VERSION

    @property
    def norm(self) -> str:
        """The norm it was trained against (a smoothing model's noise norm too); L-inf when the
        metadata records none the search knows."""
        norm = self.threat.get("norm") if isinstance(self.threat, dict) else None
        return norm if norm in PAPER_EPS else "linf"

    def budget(self, norm: str) -> float:
        """The adversary budget a search on this classifier defaults to: the one it was trained
        for when that was the same norm (a photo model trained at 4/255 is protected at 4/255),
        else the paper's default for the norm (8/255 L-inf, 0.5 L2)."""
        if norm not in PAPER_EPS:
            raise ValueError(f"unknown norm {norm!r}; expected one of {sorted(PAPER_EPS)}")
        trained = trained_threat(self.threat)
        return float(trained["eps"]) if trained.get("norm") == norm else PAPER_EPS[norm]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelInfo:
        try:
            info = cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})
        except TypeError as e:
            raise CheckpointError(f"metadata is missing a required field: {e}") from e
        info.input_size = tuple(int(v) for v in info.input_size)  # type: ignore[assignment]
        info.validate()
        return info

    def validate(self) -> None:
        try:
            check_architecture(self.arch, self.arch_args)
        except (KeyError, ValueError) as e:
            raise CheckpointError(str(e.args[0] if e.args else e)) from e
        if not 2 <= int(self.num_classes) <= 100_000:
            raise CheckpointError(f"implausible class count {self.num_classes}")
        if not isinstance(self.class_names, list) or not all(isinstance(n, str) for n in self.class_names):
            raise CheckpointError("metadata 'class_names' must be a list of strings")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise CheckpointError(
                f"metadata names {len(self.class_names)} classes but declares {self.num_classes}")
        if self.wnids and not (isinstance(self.wnids, list) and all(isinstance(w, str) and w for w in self.wnids)
                               and len(self.wnids) == self.num_classes == len(set(self.wnids))):
            raise CheckpointError(f"metadata 'wnids' must be {self.num_classes} distinct non-empty strings")
        if len(self.input_size) != 3 or not all(1 <= v <= 4096 for v in self.input_size):
            raise CheckpointError(f"implausible input size {self.input_size}")
        channels = self.input_size[0]
        if len(self.mean) != channels or len(self.std) != channels or min(self.std) <= 0:
            raise CheckpointError("normalisation needs one mean and one positive std per channel")
        try:
            check_view(self.view, self.input_size)
        except ValueError as e:
            raise CheckpointError(f"metadata: {e}") from e
        check_ood_metadata(self.ood)


@dataclass
class LoadedCheckpoint:
    model: nn.Module  # eval mode, takes [0,1] NCHW
    info: ModelInfo
    sha256: str  # of the file
    path: Path
    # The detector ``ood_flag`` uses when ``info.ood["score"]`` is "mahalanobis-layers" (float64, CPU)
    ood_detector: LayerwiseMahalanobis | None = None


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_sha256(state: dict[str, Tensor]) -> str:
    """Digest of names, dtypes, shapes and bytes, independent of file layout."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def build_model(info: ModelInfo) -> Classifier:
    """The full model (Normalize + network) described by `info`, randomly initialised."""
    net = build_network(info.arch, num_classes=info.num_classes, **info.arch_args)
    return Classifier(net, info.mean, info.std).to(memory_format=torch.channels_last)


def save_checkpoint(model: nn.Module, info: ModelInfo, path: str | os.PathLike[str],
                    ood_detector: LayerwiseMahalanobis | None = None) -> str:
    """Write `model`'s network weights, `info` and (when ``info.ood`` names it) its OOD
    detector atomically; return the file's sha256.

    Re-saving a loaded checkpoint must pass its ``ood_detector`` on: a flag whose
    detector went missing is refused here rather than written."""
    net = model.network if isinstance(model, Classifier) else model
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    check_ood_metadata(info.ood)
    if (flag_score(info.ood) == MAHALANOBIS_SCORE) != (ood_detector is not None):
        raise CheckpointError(f"the 'ood' metadata names score {flag_score(info.ood)!r}: "
                              + ("pass its detector" if ood_detector is None else "a detector needs "
                                 f"score {MAHALANOBIS_SCORE!r}"))
    if ood_detector is not None:
        stored = detector_tensors(ood_detector)
        detector_from_tensors(stored, info.ood, info.num_classes)  # what loading will check
        state |= stored
    meta = json.loads(info.to_json())
    meta["weights_sha256"] = weights_sha256(state)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; checkpoints are shared with workers
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return file_sha256(path)


def read_info(path: str | os.PathLike[str]) -> ModelInfo:
    """The metadata of a checkpoint, without loading its weights."""
    return ModelInfo.from_dict(_read_header(Path(path))[0])


def load_checkpoint(path: str | os.PathLike[str], device: str | torch.device = "cpu",
                    expected_sha256: str | None = None) -> LoadedCheckpoint:
    """Load and validate a checkpoint file; refuse anything that does not match its metadata."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"{path.name}: {size} bytes is over the {MAX_CHECKPOINT_BYTES}-byte limit")
    digest = file_sha256(path)
    if expected_sha256 is not None and digest != expected_sha256:
        raise CheckpointError(f"{path.name}: sha256 {digest} does not match the expected {expected_sha256}")
    raw, recorded = _read_header(path)
    info = ModelInfo.from_dict(raw)
    try:
        with safe_open(str(path), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path.name}: unreadable tensors: {e}") from e
    if recorded and weights_sha256(state) != recorded:
        raise CheckpointError(f"{path.name}: weights do not match their recorded digest")
    network, stored = split_state(state)
    model = model_from_state(info, network)
    try:
        detector = detector_from_tensors(stored, info.ood, info.num_classes)
        if detector is not None:
            check_detector_fits(model, detector, info.ood, info.input_size)
    except CheckpointError as e:
        raise CheckpointError(f"{path.name}: {e}") from e
    return LoadedCheckpoint(model.to(device), info, digest, path, detector)


def model_from_state(info: ModelInfo, state: dict[str, Tensor]) -> Classifier:
    """Build the model of `info` and load `state` strictly, refusing bad or non-finite weights."""
    for name, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"weight {name!r} holds NaN or infinite values")
    model = build_model(info)
    expected = model.network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"weights do not fit {info.arch}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    wrong = [f"{k}: {tuple(state[k].shape)} != {tuple(v.shape)}"
             for k, v in expected.items() if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        raise CheckpointError(f"weight shapes do not fit {info.arch}: {wrong[:3]}")
    model.network.load_state_dict(state, strict=True)
    model.eval()
    _check_runs(model, info)
    return model


def has_safespot_metadata(path: str | os.PathLike[str]) -> bool:
    """Whether a safetensors file carries our metadata (False for another project's file; a
    damaged file counts as ours, so that loading it says what is wrong)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return METADATA_KEY in (f.metadata() or {})
    except (SafetensorError, OSError, ValueError):
        return True


def _read_header(path: Path) -> tuple[dict[str, Any], str | None]:
    """Our metadata from the safetensors header (the library checks the header's size,
    its JSON and that every tensor lies inside the file), and the recorded weights digest."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path.name}: not a safetensors file ({e})") from e
    if METADATA_KEY not in meta:
        raise CheckpointError(f"{path.name}: no '{METADATA_KEY}' metadata; use `safespot import` for a bare state dict")
    try:
        raw = json.loads(meta[METADATA_KEY])
    except ValueError as e:
        raise CheckpointError(f"{path.name}: metadata is not JSON") from e
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path.name}: metadata must be a JSON object")
    return raw, raw.pop("weights_sha256", None)


@torch.no_grad()
def _check_runs(model: nn.Module, info: ModelInfo) -> None:
    probe = torch.rand(2, *info.input_size)
    try:
        out = model(probe)
    except RuntimeError as e:
        raise CheckpointError(f"model does not run on {info.input_size} inputs: {e}") from e
    if tuple(out.shape) != (2, info.num_classes):
        raise CheckpointError(f"model gives {tuple(out.shape[1:])} outputs, metadata says {info.num_classes} classes")
    if not bool(torch.isfinite(out).all()) or math.isnan(float(out.sum())):
        raise CheckpointError("model outputs are not finite")
