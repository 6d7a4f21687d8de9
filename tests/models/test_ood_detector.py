"""The OOD detector stored in a checkpoint (models/ood_detector.py): it survives the round trip
bit for bit, hostile detector tensors and descriptions are refused with a reason, and
checkpoints without one load and re-save as before."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from models.checkpoint import (
    METADATA_KEY,
    load_checkpoint,
    read_info,
    save_checkpoint,
    weights_sha256,
)
from models.errors import CheckpointError
from models.ood_detector import DETECTOR_PREFIX, MAHALANOBIS_SCORE, detector_score
from safespot.ood import layer_features
from tests.conftest import TINY_MODEL
from training.data import to_tensor

P = DETECTOR_PREFIX


def _contents(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()[METADATA_KEY])  # noqa: SIM118


def _rewrite(source: Path, target: Path, state_change: Callable[[dict[str, torch.Tensor]], None] | None = None,
             ood_change: Callable[[dict[str, Any]], None] | None = None, keep_digest: bool = False) -> Path:
    """A copy of `source` with its tensors or its `ood` metadata changed, the weights digest
    recomputed (as a forger would) unless `keep_digest`."""
    state, meta = _contents(source)
    if state_change:
        state_change(state)
    if ood_change:
        ood_change(meta["ood"])
    if not keep_digest:
        meta["weights_sha256"] = weights_sha256(state)
    save_file(state, str(target), metadata={METADATA_KEY: json.dumps(meta)})
    return target


def test_the_detector_round_trips_and_scores_as_fitted(tiny_detector_checkpoint: Path,
                                                       cifar_mini: dict[str, np.ndarray]) -> None:
    loaded = load_checkpoint(tiny_detector_checkpoint)
    tiny = load_checkpoint(TINY_MODEL)
    detector = loaded.ood_detector
    assert detector is not None and loaded.info.ood["score"] == MAHALANOBIS_SCORE
    assert tiny.ood_detector is None  # written before detectors: none, and it still loads
    for (name, w), (_, w0) in zip(loaded.model.network.state_dict().items(),
                                  tiny.model.network.state_dict().items(), strict=True):
        assert torch.equal(w, w0), name  # the network's weights are untouched by the extra tensors
    state, meta = _contents(tiny_detector_checkpoint)
    stored = sorted(k for k in state if k.startswith(P))
    assert len(stored) == 2 + 2 * len(detector.layers) == 2 + 2 * meta["ood"]["detector"]["layers"]
    assert meta["weights_sha256"] == weights_sha256(state)  # the digest covers the detector too
    assert read_info(tiny_detector_checkpoint).ood == loaded.info.ood
    # The fit again, from scratch: the stored detector scores the same images identically.
    from safespot.ood import LayerwiseMahalanobis

    refit = LayerwiseMahalanobis.fit(layer_features(tiny.model, to_tensor(cifar_mini["x_train"]))[1],
                                     torch.from_numpy(cifar_mini["y_train"]))
    x = to_tensor(cifar_mini["x_test"][100:140])
    scores = detector_score(loaded.model, detector, x, 8)
    assert scores.dtype == torch.float64 and torch.isfinite(scores).all()
    assert torch.equal(scores, refit.score(layer_features(tiny.model, x)[1]).cpu())
    # Re-saving with the detector (as `safespot model-card` does) keeps it.
    again = tiny_detector_checkpoint.parent / "again.safetensors"
    save_checkpoint(loaded.model, loaded.info, again, ood_detector=detector)
    stored_again = load_checkpoint(again).ood_detector
    assert stored_again is not None and torch.equal(detector_score(loaded.model, stored_again, x, 8), scores)


def test_a_detector_is_never_dropped_or_added_silently(tiny_detector_checkpoint: Path, tmp_path: Path) -> None:
    loaded = load_checkpoint(tiny_detector_checkpoint)
    with pytest.raises(CheckpointError, match="pass its detector"):
        save_checkpoint(loaded.model, loaded.info, tmp_path / "lost.safetensors")
    tiny = load_checkpoint(TINY_MODEL)
    with pytest.raises(CheckpointError, match="a detector needs score"):
        save_checkpoint(tiny.model, tiny.info, tmp_path / "stray.safetensors", ood_detector=loaded.ood_detector)
    loaded.info.ood["detector"]["dims"][0] += 1
    with pytest.raises(CheckpointError, match="must be float64"):
        save_checkpoint(loaded.model, loaded.info, tmp_path / "lie.safetensors", ood_detector=loaded.ood_detector)
    assert not list(tmp_path.iterdir())


def _drop_last_layer(state: dict[str, torch.Tensor]) -> None:
    last = max(int(k[len(P):].split("/")[0]) for k in state if k.startswith(P) and "/" in k[len(P):])
    for key in (f"{P}{last}/means", f"{P}{last}/precision"):
        del state[key]
    for key in (f"{P}loc", f"{P}scale"):
        state[key] = state[key][:-1].clone()


def _nan(state: dict[str, torch.Tensor]) -> None:
    state[f"{P}0/means"][0, 0] = math.nan


def _huge(state: dict[str, torch.Tensor]) -> None:
    state[f"{P}scale"].fill_(1e-320)  # positive and finite, but every standardised score overflows


HOSTILE: dict[str, tuple[Callable[..., Any] | None, Callable[[dict[str, Any]], None] | None, str]] = {
    "wrong shape": (lambda s: s.__setitem__(f"{P}0/precision", torch.zeros(8, 9, dtype=torch.float64)), None,
                    "must be float64 \\(8, 8\\)"),
    "wrong dtype": (lambda s: s.__setitem__(f"{P}loc", s[f"{P}loc"].float()), None, "must be float64"),
    "NaN": (_nan, None, "NaN or infinite"),
    "missing key": (lambda s: s.pop(f"{P}3/precision"), None, "missing \\['ood/mahalanobis/3/precision'\\]"),
    "extra key": (lambda s: s.__setitem__(f"{P}extra", torch.zeros(1, dtype=torch.float64)), None,
                  "unexpected \\['ood/mahalanobis/extra'\\]"),
    "zero scale": (lambda s: s[f"{P}scale"].zero_(), None, "'scale' must be positive"),
    "overflowing scores": (_huge, None, "non-finite scores"),
    "no tensors": (lambda s: [s.pop(k) for k in [k for k in s if k.startswith(P)]], None, "missing"),
    "tensors without metadata": (None, lambda o: o.pop("score"), "names no detector"),
    "unknown score": (None, lambda o: o.__setitem__("score", "energy"), "must be one of"),
    "threshold a string": (None, lambda o: o.__setitem__("threshold", "low"), "finite number"),
    "threshold NaN": (None, lambda o: o.__setitem__("threshold", math.nan), "finite number"),
    "no description": (None, lambda o: o.pop("detector"), "must describe"),
    "dims not a list": (None, lambda o: o["detector"].__setitem__("dims", "8,8"), "one positive width"),
    "wrong class count": (None, lambda o: o["detector"].__setitem__("classes", 12), "12 classes, the model 10"),
    "layers not the model's": (_drop_last_layer, lambda o: o["detector"].update(
        layers=o["detector"]["layers"] - 1, dims=o["detector"]["dims"][:-1]), "does not fit the model's layers"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_detectors_are_refused_with_a_reason(case: str, tiny_detector_checkpoint: Path, tmp_path: Path) -> None:
    state_change, ood_change, message = HOSTILE[case]
    path = _rewrite(tiny_detector_checkpoint, tmp_path / "hostile.safetensors", state_change, ood_change)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_a_detector_changed_after_signing_fails_the_digest(tiny_detector_checkpoint: Path, tmp_path: Path) -> None:
    def shift(state: dict[str, torch.Tensor]) -> None:
        state[f"{P}loc"] += 1.0  # a plausible value: only the digest can tell

    path = _rewrite(tiny_detector_checkpoint, tmp_path / "shifted.safetensors", shift, keep_digest=True)
    with pytest.raises(CheckpointError, match="recorded digest"):
        load_checkpoint(path)


def test_an_msp_calibrated_checkpoint_is_stored_and_loaded_as_before(tmp_path: Path) -> None:
    tiny = load_checkpoint(TINY_MODEL)
    tiny.info.ood = {"mu": 0.4, "threshold": 0.243, "tpr": 0.95, "search": {"preset": "fast"}}
    path = tmp_path / "msp.safetensors"
    save_checkpoint(tiny.model, tiny.info, path)
    state, meta = _contents(path)
    assert set(state) == set(tiny.model.network.state_dict())  # no detector tensors, no new metadata
    assert meta["ood"] == {"mu": 0.4, "threshold": 0.243, "tpr": 0.95, "search": {"preset": "fast"}}
    loaded = load_checkpoint(path)
    assert loaded.ood_detector is None and loaded.info.ood == tiny.info.ood
