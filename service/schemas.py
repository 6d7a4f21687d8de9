"""Response and request bodies of the HTTP API (what /docs shows).

The shapes that cross Redis are TypedDicts in `worker.protocol`; these models
wrap them for HTTP and carry the OpenAPI examples.  `result` and checkpoint
`info`/`vetting` stay open dicts: the worker owns their content.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from worker.protocol import CheckpointStatus, JobStatus, Norm, Recipe

_RESULT_EXAMPLE: dict[str, Any] = {
    "prediction": {"label": 3, "class_name": "cat", "confidence": 0.91,
                   "top5": [{"label": 3, "class_name": "cat", "probability": 0.91},
                            {"label": 5, "class_name": "dog", "probability": 0.06},
                            {"label": 2, "class_name": "bird", "probability": 0.01},
                            {"label": 4, "class_name": "deer", "probability": 0.008},
                            {"label": 6, "class_name": "frog", "probability": 0.005}]},
    "safe_spot_found": True, "linf": 0.0314, "l2": 4.2, "psnr": 38.5,
    "robustness": {"attack": "pgd-20, 1 restart, eps/4 steps, random start", "held": True,
                   "margin": 1.7, "confidence_under_attack": 0.84},
    "verification": {"norm": "linf", "eps": 0.0314, "on": "8-bit output", "min_margin": 0.0,
                     "runs": [{"attack": "pgd", "loss": "ce", "targeted": False, "steps": 20, "restarts": 1},
                              {"attack": "pgd", "loss": "margin", "targeted": True,
                               "targets": "top-3 other classes", "steps": 30, "restarts": 1}],
                     "passes": 114, "view": "whole image resized to 32x32",
                     "guarantee": "empirical: these attacks failed on the returned 8-bit image, "
                                  "for this checkpoint and view; not a certificate"},
    "view": {"kind": "resize", "input_size": [32, 32], "description": "whole image resized to 32x32"},
    "ood_score": 0.88, "ood_flag": False, "ood_method": "safespot",
    "model": {"name": "cifar10", "sha256": "9f2c…", "checkpoint_id": "ckpt_3f9a1c2b7d4e"},
    "preset": "standard", "threat": {"norm": "linf", "eps": 0.0314, "delta": 0.0314},
    "config": {}, "grad_evals": 240, "reencode": None,
    "image": {"width": 451, "height": 300, "mode": "RGB"},
    "timings": {"queued_s": 0.04, "search_s": 1.9, "total_s": 2.0},
}


class ErrorDetail(BaseModel):
    code: str = Field(examples=["bad_image"])
    message: str = Field(examples=["the image data is truncated or corrupt"])


class ErrorResponse(BaseModel):
    """Every error the API answers has this shape."""

    error: ErrorDetail


class JobLinks(BaseModel):
    self: str = Field(examples=["/v1/jobs/5d0c8f1e2a3b4c5d6e7f8091a2b3c4d5"])
    image: str | None = Field(None, examples=["/v1/jobs/5d0c8f1e2a3b4c5d6e7f8091a2b3c4d5/image"])


class JobResponse(BaseModel):
    """A filter or training job; `result` is set once `status` is `finished`."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "job_id": "5d0c8f1e2a3b4c5d6e7f8091a2b3c4d5", "status": "finished",
        "progress": {"phase": "done", "fraction": 1.0, "grad_evals": 240, "batch_size": 4},
        "result": _RESULT_EXAMPLE, "error": None,
        "created_at": 1767225600.0, "started_at": 1767225600.1, "ended_at": 1767225602.0,
        "links": {"self": "/v1/jobs/5d0c8f1e2a3b4c5d6e7f8091a2b3c4d5",
                  "image": "/v1/jobs/5d0c8f1e2a3b4c5d6e7f8091a2b3c4d5/image"},
    }]})

    job_id: str
    status: JobStatus
    progress: dict[str, Any] = Field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    created_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    links: JobLinks

    @classmethod
    def from_view(cls, view: Mapping[str, Any], job_id: str, links: JobLinks) -> JobResponse:
        """Wrap a protocol JobView (from any backend) for HTTP."""
        return cls(job_id=job_id, status=view.get("status", "queued"),
                   progress=dict(view.get("progress") or {}),
                   result=dict(view["result"]) if view.get("result") else None,
                   error=view.get("error"), created_at=view.get("created_at"),
                   started_at=view.get("started_at"), ended_at=view.get("ended_at"), links=links)


class CheckpointResponse(BaseModel):
    """A registered checkpoint.  `status`: validating -> ready | unvetted | rejected; ready ->
    active; unvetted (no vetting set for its domain) -> active only with the admin's override,
    then recorded in `override`."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "id": "ckpt_3f9a1c2b7d4e", "name": "s-fgsm-adv cifar10", "status": "ready",
        "sha256": "9f2c4e…", "path": "ckpt_3f9a1c2b7d4e.safetensors", "size_bytes": 4_713_512,
        "uploaded_at": 1767225600.0, "source": "upload",
        "info": {"arch": "cifar_cnn", "num_classes": 10, "input_size": [3, 32, 32]},
        "vetting": {"clean_acc": 0.79, "pgd_acc": 0.45, "apgd_acc": 0.41, "n_apgd": 32,
                    "safe_spot_rate": 0.97, "n": 100, "domain": "cifar10",
                    "domain_from": "metadata", "seconds": 41.0},
        "error": None,
    }]})

    id: str
    name: str = ""
    status: CheckpointStatus
    sha256: str = ""
    path: str = ""
    size_bytes: int = 0
    uploaded_at: float | None = None
    source: str = ""
    info: dict[str, Any] = Field(default_factory=dict)
    vetting: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    override: dict[str, Any] | None = Field(None, description=(
        "set when an unvetted checkpoint was activated anyway: {at: epoch seconds, reason}"))


class CheckpointList(BaseModel):
    checkpoints: list[CheckpointResponse]
    active: str | None = Field(None, description="id of the active checkpoint")


class ModelResponse(BaseModel):
    """The active checkpoint as clients see it: what it is and which classes it predicts."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "checkpoint_id": "default", "name": "cifar10", "sha256": "9f2c4e…", "num_classes": 10,
        "class_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                        "ship", "truck"],
        "input_size": [3, 32, 32], "domain": "cifar10", "threat": {"norm": "linf", "eps": 0.0314},
        "max_eps": {"linf": 0.0627, "l2": 2.0},
    }]})

    checkpoint_id: str
    name: str
    sha256: str = ""
    num_classes: int
    class_names: list[str] = Field(description="indexed by `prediction.label`; [] when the checkpoint names none")
    input_size: list[int] = Field(description="[C, H, W] the network sees (through the checkpoint's view)")
    threat: dict[str, Any] = Field(default_factory=dict, description=(
        "the threat model it was trained for ({norm, eps}, pixel units): a filter job without eps "
        "uses this eps for the same norm; {} when it records none"))
    domain: str = Field("", description="what the images are, e.g. 'cifar10'; '' when unknown")
    max_eps: dict[str, float] = Field(default_factory=dict, description=(
        "the largest eps (and delta) this server accepts per norm, pixel units (SAFESPOT_MAX_EPS_*)"))


class TrainingRequestBody(BaseModel):
    """A training run for the trainer sidecar (see `safespot train --help`)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "recipe": "s-fgsm-adv", "norm": "linf", "eps": 0.0314, "epochs": 15,
        "data": "cifar10", "limit": None, "name": "s-fgsm-adv cifar10", "arch": "cifar_cnn",
    }]})

    recipe: Recipe = "s-fgsm-adv"
    norm: Norm = "linf"
    eps: float | None = Field(None, gt=0, description="pixel units; default 8/255 (linf) or 0.5 (l2)")
    epochs: int = Field(15, ge=1, le=1000)
    data: str = Field("cifar10", max_length=255,
                      description="'cifar10', 'tinyimagenet' (after `safespot data download NAME`), "
                                  "or a path relative to SAFESPOT_DATA_DIR")
    limit: int | None = Field(None, ge=1, description="train on this many images only")
    name: str = Field("", max_length=100)
    arch: str = Field("cifar_cnn", pattern=r"^[a-z][a-z0-9_]{0,63}$")


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    detail: str = Field("", examples=["2 workers with a loaded model"])


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for the listed error statuses."""
    return {status: {"model": ErrorResponse} for status in statuses}
