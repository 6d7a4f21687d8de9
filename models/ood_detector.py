"""The out-of-distribution detector a checkpoint may carry beside its weights.

``safespot ood-calibrate --score mahalanobis`` fits a
:class:`safespot.ood.LayerwiseMahalanobis` on training images and stores it in
the checkpoint file as plain float64 tensors under :data:`DETECTOR_PREFIX`
(safetensors: loading runs no code), next to the network's weights and
covered by the same ``weights_sha256``.  The ``ood`` metadata says which score
the service's ``ood_flag`` uses and describes the tensors::

    "score": "mahalanobis-layers", "threshold": t, ...,
    "detector": {"layers": L, "dims": [D_1, ..., D_L], "classes": K, "max_layers": 8}

    ood/mahalanobis/loc          (L,)        mean fit-image score per layer
    ood/mahalanobis/scale        (L,)        their standard deviation
    ood/mahalanobis/<i>/means      (K, D_i)  class means of layer i's features
    ood/mahalanobis/<i>/precision  (D_i, D_i) its tied precision matrix

Without ``score`` (every checkpoint calibrated before this existed) the flag
uses the safe-spot score D(x) (``"safespot"``), and the file has no such
tensors.  A file whose tensors or description disagree, or do not fit its
network's layers, is refused with a :class:`~models.errors.CheckpointError`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeGuard

import torch
from torch import Tensor, nn

from models.errors import CheckpointError
from safespot.ood import LayerwiseMahalanobis, MahalanobisDetector, layer_features

DETECTOR_PREFIX = "ood/mahalanobis/"  # a "/" never appears in a module's state-dict key
SAFESPOT_SCORE = "safespot"  # D(x) = mu*MSP(x) + (1-mu)*MSP(x_a*), from the filter's own search
MAHALANOBIS_SCORE = "mahalanobis-layers"  # the stored LayerwiseMahalanobis on the model's input
SCORES = (SAFESPOT_SCORE, MAHALANOBIS_SCORE)
MAX_LAYERS = 64  # layer_features keeps at most max_layers - 1 ReLU depths plus the penultimate layer
DEFAULT_MAX_LAYERS = 8  # layer_features' default: the layers of ood-eval's Mahalanobis baseline


def flag_score(ood: Mapping[str, Any]) -> str:
    """Which score the checkpoint's OOD flag uses (D(x) when its metadata names none)."""
    return str(ood.get("score", SAFESPOT_SCORE))


def check_ood_metadata(ood: Any) -> None:
    """Refuse ``ood`` metadata that names an unknown score or a malformed detector description.
    Metadata without ``score`` (D(x), as before) is taken as it always was."""
    if not isinstance(ood, dict):
        raise CheckpointError("metadata 'ood' must be a JSON object")
    score = ood.get("score", SAFESPOT_SCORE)
    if score not in SCORES:
        raise CheckpointError(f"metadata 'ood.score' must be one of {list(SCORES)}, got {score!r}")
    if score != MAHALANOBIS_SCORE:
        return
    threshold = ood.get("threshold")
    if not _real(threshold) or not math.isfinite(threshold):
        raise CheckpointError(f"metadata 'ood.threshold' must be a finite number, got {threshold!r}")
    described = ood.get("detector")
    if not isinstance(described, dict):
        raise CheckpointError("metadata 'ood.detector' must describe the stored detector")
    layers, dims = described.get("layers"), described.get("dims")
    classes, max_layers = described.get("classes"), described.get("max_layers")
    if not (_int(max_layers) and 2 <= max_layers <= MAX_LAYERS):
        raise CheckpointError(f"metadata 'ood.detector.max_layers' must be an integer in 2..{MAX_LAYERS}")
    if not (_int(layers) and 1 <= layers <= max_layers):
        raise CheckpointError("metadata 'ood.detector.layers' must be an integer in 1..max_layers")
    if not (isinstance(dims, list) and len(dims) == layers and all(_int(d) and d >= 1 for d in dims)):
        raise CheckpointError("metadata 'ood.detector.dims' must list one positive width per layer")
    if not (_int(classes) and classes >= 2):
        raise CheckpointError("metadata 'ood.detector.classes' must be an integer >= 2")


def describe_detector(detector: LayerwiseMahalanobis, max_layers: int) -> dict[str, Any]:
    """The ``ood.detector`` metadata of `detector`, fitted on ``layer_features(..., max_layers)``."""
    return {"layers": len(detector.layers), "dims": [int(d.means.shape[1]) for d in detector.layers],
            "classes": int(detector.layers[0].means.shape[0]), "max_layers": int(max_layers),
            "tensors": DETECTOR_PREFIX, "dtype": "float64"}


def detector_tensors(detector: LayerwiseMahalanobis) -> dict[str, Tensor]:
    """The tensors that store `detector` in a checkpoint (float64, CPU, contiguous)."""

    def plain(t: Tensor) -> Tensor:
        return t.detach().to("cpu", torch.float64).contiguous()

    out = {f"{DETECTOR_PREFIX}loc": plain(detector.loc), f"{DETECTOR_PREFIX}scale": plain(detector.scale)}
    for i, layer in enumerate(detector.layers):
        out[f"{DETECTOR_PREFIX}{i}/means"] = plain(layer.means)
        out[f"{DETECTOR_PREFIX}{i}/precision"] = plain(layer.precision)
    return out


def split_state(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(the network's weights, the detector's tensors) of a checkpoint file's tensors."""
    network = {k: v for k, v in state.items() if not k.startswith(DETECTOR_PREFIX)}
    stored = {k: v for k, v in state.items() if k.startswith(DETECTOR_PREFIX)}
    return network, stored


def detector_from_tensors(stored: Mapping[str, Tensor], ood: Mapping[str, Any],
                          num_classes: int) -> LayerwiseMahalanobis | None:
    """The detector the metadata describes, rebuilt from its tensors after checking each one's
    name, dtype, shape and values; None when the flag uses D(x) (and then there must be none)."""
    check_ood_metadata(ood)
    if flag_score(ood) != MAHALANOBIS_SCORE:
        if stored:
            raise CheckpointError(f"tensors under {DETECTOR_PREFIX!r} but the 'ood' metadata names no "
                                  f"detector (score {flag_score(ood)!r})")
        return None
    described = ood["detector"]
    layers, dims, classes = described["layers"], described["dims"], described["classes"]
    if classes != num_classes:
        raise CheckpointError(f"the stored detector has {classes} classes, the model {num_classes}")
    shapes: dict[str, tuple[int, ...]] = {f"{DETECTOR_PREFIX}loc": (layers,), f"{DETECTOR_PREFIX}scale": (layers,)}
    for i, d in enumerate(dims):
        shapes[f"{DETECTOR_PREFIX}{i}/means"] = (classes, d)
        shapes[f"{DETECTOR_PREFIX}{i}/precision"] = (d, d)
    missing, unexpected = sorted(set(shapes) - set(stored)), sorted(set(stored) - set(shapes))
    if missing or unexpected:
        raise CheckpointError(f"the stored OOD detector's tensors do not match its description: "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, shape in shapes.items():
        t = stored[name]
        if t.dtype != torch.float64 or tuple(t.shape) != shape:
            raise CheckpointError(f"detector tensor {name!r} must be float64 {shape}, "
                                  f"got {t.dtype} {tuple(t.shape)}")
        if not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"detector tensor {name!r} holds NaN or infinite values")
    scale = stored[f"{DETECTOR_PREFIX}scale"]
    if not bool((scale > 0).all()):
        raise CheckpointError("detector tensor 'scale' must be positive")
    return LayerwiseMahalanobis(
        tuple(MahalanobisDetector(stored[f"{DETECTOR_PREFIX}{i}/means"], stored[f"{DETECTOR_PREFIX}{i}/precision"])
              for i in range(layers)),
        stored[f"{DETECTOR_PREFIX}loc"], scale)


def detector_score(model: nn.Module, detector: LayerwiseMahalanobis, x: Tensor, max_layers: int) -> Tensor:
    """The detector's in-distribution score (N,) of model inputs `x` (N, C, H, W) in [0,1],
    float64 on the CPU: one forward pass, no graph."""
    return detector.score(layer_features(model, x, max_layers=max_layers)[1]).cpu()


def check_detector_fits(model: nn.Module, detector: LayerwiseMahalanobis, ood: Mapping[str, Any],
                        input_size: tuple[int, int, int]) -> None:
    """Refuse a detector whose layers are not the model's (widths, count) or whose score of a
    random probe is not finite: a worker must be able to score every upload."""
    max_layers = int(ood["detector"]["max_layers"])
    param = next(model.parameters(), None)
    probe = torch.rand(2, *input_size, generator=torch.Generator().manual_seed(0))
    if param is not None:
        probe = probe.to(param.device, param.dtype)
    layers = layer_features(model, probe, max_layers=max_layers)[1]
    widths = [int(f.shape[1]) for f in layers]
    if widths != [int(d.means.shape[1]) for d in detector.layers]:
        raise CheckpointError(f"the stored OOD detector does not fit the model's layers: widths {widths}, "
                              f"detector {ood['detector']['dims']}")
    if not bool(torch.isfinite(detector.score(layers)).all()):
        raise CheckpointError("the stored OOD detector gives non-finite scores")


def _int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _real(v: Any) -> TypeGuard[float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
