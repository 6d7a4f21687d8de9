"""Validate and vet an uploaded (or freshly trained) checkpoint.

:func:`vet_and_record` is what the upload path (an RQ job, or the embedded
backend's thread) and the training path call: it vets the record the
registry holds and stores the verdict.  :func:`vet_checkpoint` takes a CheckpointRecord whose file lies in the
checkpoint directory and returns the updated record: ``status: "ready"``
with a short vetting evaluation, ``status: "unvetted"`` when no vetting set
fits it (activation then needs an admin's override), or ``status:
"rejected"`` with an error code and message.  It never activates anything and never executes code
from the file:

- ``.safetensors`` files load through :func:`models.checkpoint.load_checkpoint`
  (no pickle at all; metadata, digest, shapes, finite weights, a probe run);
- anything else is read as a PyTorch state dict with
  ``torch.load(weights_only=True)`` (a restricted unpickler: a pickle that
  would run code is refused before any of it runs), built with the
  record's metadata (``record["info"]``) and converted to our safetensors
  format next to it.

The vetting evaluation is the paper's protocol (docs/results.md) on a fixed
strided slice of the vetting set of the checkpoint's domain
(:mod:`worker.vetting_sets`: the operator's SAFESPOT_VETTING_DATA, else the set
shipped in the package): clean and PGD-20 accuracy of the originals, their
accuracy under APGD-CE + APGD-T on a few of them, and the S-Full safe-spot rate
with the ``fast`` preset.  Without a set that fits, it is skipped with the
reason recorded.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import torch

from models.checkpoint import (
    LoadedCheckpoint,
    ModelInfo,
    has_safespot_metadata,
    load_checkpoint,
    save_checkpoint,
)
from models.errors import ModelError
from models.formats import looks_like_safetensors
from models.importers import model_from_file
from safespot.threat import Norm
from worker.checkpoints import checkpoint_file, relative_path
from worker.errors import JobError
from worker.protocol import CheckpointRecord, ErrorCode
from worker.registry import CHECKPOINT_ID, CheckpointRegistry, json_safe
from worker.settings import WorkerSettings
from worker.vetting_sets import for_model

log = logging.getLogger("safespot.worker.vetting")

VETTING_PRESET = "fast"
APGD_TARGETS = 3  # the targeted attack's classes: the most likely other ones (the yardstick's 9 cost 3x)
APGD_MISSING = "torchattacks not installed (pip install 'safespot[eval]')"


def vet_and_record(registry: CheckpointRegistry, checkpoint_id: str, settings: WorkerSettings,
                   device: torch.device | None = None) -> CheckpointRecord | None:
    """Vet the record the registry holds and store the verdict (unless the record was
    deleted meanwhile); None when there is no such record."""
    record = registry.get(checkpoint_id)
    if record is None:
        return None
    verdict = vet_checkpoint(record, settings, device)
    if not registry.put(verdict, only_if_present=True):
        log.warning("checkpoint %s was deleted while being vetted", checkpoint_id)
    return verdict


def vet_checkpoint(record: Mapping[str, Any], settings: WorkerSettings,
                   device: torch.device | None = None) -> CheckpointRecord:
    """Validate the record's file, convert it if needed, and vet it; returns the new record."""
    out: dict[str, Any] = dict(record)
    try:
        loaded = _validated(out, settings)
        out.update(sha256=loaded.sha256, path=relative_path(loaded.path, settings.checkpoint_path),
                   size_bytes=loaded.path.stat().st_size, info=json_safe(asdict(loaded.info)), error=None)
        if not out.get("name"):
            out["name"] = loaded.info.name or str(out.get("id"))
        if device is not None:
            loaded.model.to(device)
        out["vetting"] = vetting_evaluation(loaded, settings)
    except JobError as e:
        return _rejected(out, e)
    except ModelError as e:
        return _rejected(out, JobError(str(e), code=ErrorCode(e.code)))
    except Exception as e:  # a bug, or a model that loads but cannot be attacked: not servable either
        log.exception("vetting %s failed", out.get("id"))
        return _rejected(out, JobError(f"{type(e).__name__}: {e}", code=ErrorCode.VETTING_FAILED))
    # No vetting set for its domain: servable, but only by an admin's explicit override.
    out["status"] = "unvetted" if "skipped" in out["vetting"] else "ready"
    if out["status"] == "unvetted":
        log.warning("checkpoint %s unvetted: %s", out.get("id"), out["vetting"]["skipped"])
    return cast(CheckpointRecord, out)


def _rejected(record: dict[str, Any], error: JobError) -> CheckpointRecord:
    log.warning("checkpoint %s rejected: %s: %s", record.get("id"), error.code, error.message)
    record.update(status="rejected", error=error.to_dict())
    return cast(CheckpointRecord, record)


def _validated(record: Mapping[str, Any], settings: WorkerSettings) -> LoadedCheckpoint:
    path = checkpoint_file(record, settings.checkpoint_path, settings.default_model)
    if not path.is_file():
        raise JobError(f"no file for checkpoint {record.get('id')}", code=ErrorCode.CHECKPOINT_MISSING)
    size = path.stat().st_size
    if size > settings.max_checkpoint_bytes:
        raise JobError(f"{size} bytes is over the {settings.max_checkpoint_bytes}-byte limit",
                       code=ErrorCode.CHECKPOINT_TOO_LARGE)
    with open(path, "rb") as f:
        if looks_like_safetensors(f.read(9)) and has_safespot_metadata(path):  # the content decides, not the name
            return load_checkpoint(path)
    # Someone else's layout (torchvision, timm, robustness library, RobustBench; safetensors
    # without our metadata or a weights-only pickle): converted with the uploader's metadata.
    return _convert_state_dict(record, path, settings.checkpoint_path)



def _convert_state_dict(record: Mapping[str, Any], path: Path, checkpoint_dir: Path) -> LoadedCheckpoint:
    raw_info = record.get("info")
    if not isinstance(raw_info, dict) or not raw_info:
        raise JobError("a state dict needs its metadata (architecture, classes, input size, normalisation)", code=ErrorCode.MISSING_METADATA)
    info = ModelInfo.from_dict(dict(raw_info))
    try:
        model, _ = model_from_file(path, info)
    except ModelError as e:
        if isinstance(e.__cause__, pickle.UnpicklingError):
            raise JobError(f"refused to unpickle: {e}", code=ErrorCode.UNSAFE_CHECKPOINT) from e
        raise
    record_id = str(record.get("id") or "")
    if not CHECKPOINT_ID.match(record_id):  # the registry never stores such an id; a direct caller might
        raise JobError(f"invalid checkpoint id {record_id[:80]!r}", code=ErrorCode.INVALID_PATH)
    target = checkpoint_dir / f"{record_id}.safetensors"
    save_checkpoint(model, info, target)
    loaded = load_checkpoint(target)  # re-read exactly what workers will load
    if path.resolve() != target.resolve():
        path.unlink(missing_ok=True)  # the converted file replaces the upload
    return loaded


# ------------------------------------------------------------------ evaluation
def vetting_evaluation(loaded: LoadedCheckpoint, settings: WorkerSettings) -> dict[str, Any]:
    """Clean / PGD-20 / APGD accuracy and the S-Full safe-spot rate on the checkpoint's
    domain's vetting set, or (``skipped``) why it has none."""
    from safespot import SearchConfig
    from safespot.evaluation import evaluate_methods
    from training.data import strided_indices, to_tensor

    info = loaded.info
    chosen = for_model(info.domain, info.num_classes, info.class_names, info.input_size,
                       settings.vetting_data)
    if isinstance(chosen, dict):
        return chosen
    vset, domain = chosen
    idx = strided_indices(len(vset.x), settings.vetting_n)
    device = next(loaded.model.parameters()).device
    x = to_tensor(vset.x[idx], device)
    y = torch.from_numpy(vset.y[idx]).to(device)
    norm = cast(Norm, info.norm)
    eps = info.budget(norm)
    cfg = SearchConfig.preset(VETTING_PRESET, norm=norm, eps=eps)
    started = time.time()
    reports = evaluate_methods(loaded.model, x, y, cfg, methods=("none", "s-full"))
    none, full = reports["none"], reports["s-full"]
    strong = strong_attack(loaded.model, x, y, norm, eps, settings.vetting_apgd_n)
    return json_safe({
        "clean_acc": none.clean_acc, "pgd_acc": none.adv_acc, **strong,
        "safe_spot_rate": full.safe_spot_rate, "s_full_adv_acc": full.adv_acc,
        "grad_evals_per_image": full.grad_evals_per_image,
        "n": len(idx), "seconds": round(time.time() - started, 2), "preset": VETTING_PRESET,
        "threat": {"norm": norm, "eps": eps}, "attack": "pgd-20, step eps/4, random start",
        "data": vset.label, "indices": f"stride {len(vset.x) / len(idx):g} from 0",
        "domain": domain.name, "domain_from": domain.source,
    })


def strong_attack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, norm: Norm, eps: float,
                  n: int) -> dict[str, Any]:
    """Robust accuracy of the originals under APGD-CE then APGD-T (3 targets) on `n` of the
    images: the yardstick's strong attack, on few images so that an upload is vetted in
    seconds.  Needs the optional torchattacks (the `eval` extra); without it, says so."""
    if n <= 0:
        return {"apgd_acc": None, "n_apgd": 0, "apgd_skipped": "SAFESPOT_VETTING_APGD_N is 0"}
    from safespot.yardstick import judge
    from training.data import strided_indices

    idx = torch.from_numpy(strided_indices(len(x), n)).to(x.device)
    try:
        verdict = judge(model, x[idx], y[idx], "apgd", norm=norm, eps=eps, targets=APGD_TARGETS)
    except ImportError:  # the yardstick imports torchattacks only when a suite needs it
        return {"apgd_acc": None, "n_apgd": 0, "apgd_skipped": APGD_MISSING}
    # PGD-20 on the same few images, so that the two figures compare (the full slice's
    # pgd_acc is on more images and can differ by more than the attacks do).
    pgd_same = judge(model, x[idx], y[idx], "pgd20", norm=norm, eps=eps)
    return {"apgd_acc": float(verdict.robust.float().mean()), "n_apgd": len(idx),
            "pgd_acc_apgd_images": float(pgd_same.robust.float().mean()),
            "apgd_attack": f"apgd-ce, then apgd-t toward {APGD_TARGETS} classes (100 steps each)",
            "apgd_seconds": round(verdict.seconds, 2)}
