"""The FilterResult of one image, built from the search's ImageResult (protocol shapes)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from models.checkpoint import ModelInfo
from models.ood_detector import MAHALANOBIS_SCORE, flag_score
from safespot import ImageResult, SearchConfig
from safespot.canvas import DEFAULT_VIEW, describe_view
from worker.imaging import DecodedImage, distortion
from worker.protocol import (
    FilterRequest,
    FilterResult,
    ModelRef,
    Prediction,
    RankedClass,
    Robustness,
)

DEFAULT_OOD_MU = 0.5  # weight of MSP(x) in D(x) when the checkpoint names none (docs/ood.md)


def verification(cfg: SearchConfig, info: ModelInfo) -> dict[str, Any]:
    """What "found" means for this result: the attacks, the checkpoint's view, the scope."""
    return cfg.verification() | {
        "view": describe_view(info.view, info.input_size),
        "guarantee": ("empirical: these attacks, from their own random starts, failed on the "
                      "returned 8-bit image, for this checkpoint and view; not a certificate"),
    }


def view_report(info: ModelInfo) -> dict[str, Any]:
    """The checkpoint's view (safespot.canvas) and the model input it makes: the guarantee
    holds for the image as this view shows it to this checkpoint."""
    return {**(info.view or DEFAULT_VIEW), "input_size": list(info.input_size[-2:]),
            "description": describe_view(info.view, info.input_size)}


def ood_score(info: ModelInfo, msp: float, msp_adv: float) -> tuple[float, bool | None]:
    """D(x) = mu * MSP(x) + (1 - mu) * MSP(x_a*) and whether it is below the model's threshold."""
    mu = float(info.ood.get("mu", DEFAULT_OOD_MU))
    score = mu * msp + (1 - mu) * msp_adv
    threshold = info.ood.get("threshold")
    return round(score, 6), (None if threshold is None else bool(score < float(threshold)))


def ood_verdict(info: ModelInfo, msp: float, msp_adv: float,
                detector_score: float | None = None) -> tuple[float | None, bool | None, str]:
    """(``ood_score``, ``ood_flag``, ``ood_method``) of a result: the checkpoint's stored
    detector's score of the upload as the model reads it (`detector_score`, computed by the
    processor) when its calibration chose one, else D(x) from the search's MSP values."""
    method = flag_score(info.ood)
    if method != MAHALANOBIS_SCORE:
        return (*ood_score(info, msp, msp_adv), method)
    if detector_score is None or not math.isfinite(detector_score):  # no verdict rather than a wrong one
        return None, None, method
    return round(detector_score, 6), bool(detector_score < float(info.ood["threshold"])), method


def prediction(found: ImageResult, class_names: list[str]) -> Prediction:
    """The label, its confidence and the top-5 classes on the original, from the search's one
    forward pass over it (no extra pass)."""
    label = int(found.label)

    def name(c: int) -> str:
        return class_names[c] if c < len(class_names) else str(c)

    # Equal probabilities may come out of topk in any order: the label (argmax) goes first.
    ranked = sorted(found.top, key=lambda entry: (-entry[1], entry[0] != label))
    top5: list[RankedClass] = [
        {"label": int(c), "class_name": name(int(c)), "probability": round(float(p), 6)} for c, p in ranked]
    return {"label": label, "class_name": name(label), "confidence": round(float(found.msp), 6),
            "top5": top5}


def build_result(
    *,
    request: FilterRequest,
    image: DecodedImage,
    found: ImageResult,
    output: np.ndarray,
    cfg: SearchConfig,
    preset: str,
    info: ModelInfo,
    model: ModelRef,
    started_at: float,
    finished_at: float,
    reencode: dict[str, Any] | None = None,
    detector_score: float | None = None,
) -> FilterResult:
    """Everything the API reports for one filtered image.

    ``output`` is the answer's (H, W, C) uint8 levels at full resolution; distances are
    measured against the upload's own levels.  Timings are epoch seconds.
    ``detector_score``: the checkpoint's stored OOD detector's score of the upload, if it has one.
    """
    score, flag, method = ood_verdict(info, found.msp, found.msp_adv, detector_score)
    submitted = float(request.get("submitted_at") or started_at)
    verified = verification(cfg, info)
    robustness: Robustness = {
        "attack": verified["summary"],
        "held": bool(found.found),
        "margin": _finite(found.margin_adv),  # type: ignore[typeddict-item]
        "confidence_under_attack": _finite(found.msp_adv),  # type: ignore[typeddict-item]
    }
    return {
        "prediction": prediction(found, info.class_names),
        "safe_spot_found": bool(found.found),
        **distortion(output, image.levels),  # type: ignore[typeddict-item]
        "robustness": robustness,
        "verification": verified,
        "view": view_report(info),
        "ood_score": score,
        "ood_flag": flag,
        "ood_method": method,
        "model": model,
        "preset": preset,
        "threat": {"norm": cfg.norm, "eps": cfg.eps, "delta": cfg.budget},
        "config": cfg.to_dict(),
        "grad_evals": int(found.grad_evals),
        "reencode": reencode,
        "image": {"width": image.width, "height": image.height, "mode": image.mode},
        "timings": {"queued_s": round(max(0.0, started_at - submitted), 4),
                    "search_s": round(finished_at - started_at, 4),
                    "total_s": round(max(0.0, finished_at - submitted), 4)},
    }


def _finite(value: float) -> float | None:
    """JSON has no inf/NaN: a margin that no verification step measured is null."""
    v = float(value)
    return round(v, 6) if math.isfinite(v) else None
