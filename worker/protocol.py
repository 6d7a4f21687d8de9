"""The wire contract between the API (service/) and the workers (worker/).

Standard library only: the API imports this module and must never import
torch.  Everything that crosses Redis is named here: queue names, job
function paths, Redis keys, the JSON shapes of requests, progress and
results, the error codes, and the rules both sides apply (presets, norms,
the budget parser, the webhook host policy).  RQ jobs use RQ's
JSONSerializer (no pickle crosses Redis).

Flow of a filter request
------------------------
1. The API validates and decodes the upload (format, byte and pixel limits,
   EXIF orientation, colour profile to sRGB, 16-bit/CMYK/palette handling,
   first frame of animations) and stores a *normalised lossless PNG* (mode
   ``L``, ``LA``, ``RGB`` or ``RGBA``; alpha is kept and never perturbed)
   under :func:`upload_key` with the job's TTL.
2. The API enqueues an RQ job on :data:`FILTER_QUEUE` calling
   :data:`FILTER_FUNC` with one argument, a :class:`FilterRequest`, and
   ``job_id`` chosen by the API, ``result_ttl``/``failure_ttl`` from settings,
   ``meta={"submitted_at": <epoch s>}``.
3. A worker takes up to ``max_batch`` jobs (waiting at most ``max_wait_ms``
   for more), searches them together (continuous batching: finished images
   leave, queued ones join), writes progress into ``job.meta["progress"]``
   (a :class:`Progress`), stores the output PNG under
   :func:`result_image_key` and finishes the job with a :class:`FilterResult`
   as its return value.  A known failure stores
   ``job.meta["error"] = {"code": ..., "message": ...}`` and fails the job.
4. When the request had a ``webhook_url``, the worker POSTs
   ``{"job_id", "status", "result" | "error"}`` to it when the job ends.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from enum import StrEnum
from fractions import Fraction
from typing import Any, Literal, Protocol, TypedDict, get_args
from urllib.parse import urlsplit

# --------------------------------------------------------------------- queues
FILTER_QUEUE = "safespot-filter"
ADMIN_QUEUE = "safespot-admin"  # checkpoint validation + vetting
TRAIN_QUEUE = "safespot-train"  # the training sidecar

FILTER_FUNC = "worker.jobs.filter_job"  # (request: FilterRequest) -> FilterResult
VET_FUNC = "worker.jobs.vet_checkpoint_job"  # (request: VetRequest) -> CheckpointRecord
TRAIN_FUNC = "worker.jobs.train_job"  # (request: TrainRequest) -> CheckpointRecord

# ----------------------------------------------------------------------- keys
PREFIX = "safespot:"


def upload_key(job_id: str) -> str:
    """Normalised PNG of an upload (bytes), expires with the job."""
    return f"{PREFIX}upload:{job_id}"


def result_image_key(job_id: str) -> str:
    """The filtered PNG (bytes), expires with the job's result."""
    return f"{PREFIX}result:{job_id}:png"


CHECKPOINTS_KEY = f"{PREFIX}checkpoints"  # hash: checkpoint id -> CheckpointRecord JSON
ACTIVE_CHECKPOINT_KEY = f"{PREFIX}checkpoints:active"  # string: the active checkpoint id
ACTIVE_VERSION_KEY = f"{PREFIX}checkpoints:version"  # int, INCR on every activation
WORKERS_KEY = f"{PREFIX}workers"  # hash: worker name -> WorkerStatus JSON


def worker_alive_key(name: str) -> str:
    """Set with a short TTL by each live worker (its heartbeat)."""
    return f"{PREFIX}worker:{name}:alive"


WORKER_HEARTBEAT_S = 5  # a worker refreshes its alive key this often
WORKER_ALIVE_TTL_S = 20  # ... which expires after this long without a refresh

# ------------------------------------------------------------------- requests
Norm = Literal["linf", "l2"]
Preset = Literal["standard", "fast", "paper"]  # safespot.PRESETS (the API cannot import torch)
Recipe = Literal["natural", "gaussian", "adv-pgd", "adv-fast", "s-fgsm-adv", "s-pgd-adv", "trades"]  # safespot.training
NORMS: tuple[Norm, ...] = get_args(Norm)
PRESETS: tuple[Preset, ...] = get_args(Preset)
RECIPES: tuple[Recipe, ...] = get_args(Recipe)


def parse_budget(text: str | float) -> float:
    """A budget in pixel units as a float ("0.0314") or a fraction ("8/255");
    ValueError unless it is a finite positive number."""
    try:
        value = float(Fraction(str(text).strip())) if "/" in str(text) else float(text)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"expected a number such as 0.0314 or 8/255, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"must be a positive number, got {text!r}")
    return value


def webhook_refusal(url: str, allowed_hosts: Iterable[str]) -> str | None:
    """Why ``url`` may not be called back, or None when it may.

    An allow-list of exact host names (no wildcards; literal IP addresses must
    be listed too) because the worker POSTs from inside the cluster: anything
    wider would let a client make it call internal services (SSRF).  The API
    checks on submission and the worker again before sending."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower().rstrip(".")
    except ValueError:
        return "expected http(s)://host/path without credentials"
    if parts.scheme not in ("http", "https") or not host or parts.username or parts.password:
        return "expected http(s)://host/path without credentials"
    if host not in {h.strip().lower().rstrip(".") for h in allowed_hosts}:
        return f"host {host!r} is not in SAFESPOT_WEBHOOK_ALLOWED_HOSTS"
    return None


class Reencode(TypedDict):
    format: Literal["jpeg"]
    quality: int  # 1..100


class ImageInfo(TypedDict):
    width: int
    height: int
    mode: str  # normalised PNG mode: L, LA, RGB, RGBA
    format: str  # the upload's format: JPEG, PNG, WEBP, GIF, BMP, TIFF
    bytes: int  # the upload's size


class FilterRequest(TypedDict):
    job_id: str
    preset: Preset
    norm: Norm
    eps: float | None  # pixel units; None: the budget the active checkpoint was trained for
    delta: float | None  # pixel units; None: eps
    reencode: Reencode | None
    webhook_url: str | None
    submitted_at: float  # epoch seconds
    image: ImageInfo


Phase = Literal["queued", "searching", "vetting", "training", "done"]
JobStatus = Literal["queued", "started", "finished", "failed", "canceled", "expired"]


class Progress(TypedDict, total=False):
    phase: Phase
    fraction: float  # 0..1, rough
    grad_evals: int
    outer_steps: int
    batch_size: int  # images in the batch with this one
    # a training run's (GET /v1/training-jobs/{id}), reported every step (rate-limited)
    epoch: int  # 1-based, the epoch in progress
    epochs: int
    step: int  # optimisation steps done, counted over the whole run
    steps: int  # steps in the whole run
    images_per_s: float
    eta_s: float  # seconds left in the training phase (vetting comes after)


class RankedClass(TypedDict):
    label: int
    class_name: str
    probability: float  # softmax probability on the original, through the checkpoint's view


class Prediction(TypedDict):
    label: int
    class_name: str
    confidence: float  # softmax probability of the label on the original
    top5: list[RankedClass]  # the min(5, classes) most probable classes, best first; [0] is the label


class Robustness(TypedDict):
    attack: str  # e.g. "pgd-20 ...; then targeted margin pgd-30 toward each of the top 3 ..."
    held: bool  # the attack failed on the output
    margin: float  # min over attack iterates of logit[label] - best other logit
    confidence_under_attack: float  # MSP at the attack's worst point


class ModelRef(TypedDict):
    name: str
    sha256: str
    checkpoint_id: str


class Timings(TypedDict):
    queued_s: float
    search_s: float
    total_s: float


class FilterResult(TypedDict):
    prediction: Prediction
    safe_spot_found: bool
    linf: float  # max |output - input| over pixels, in [0,1] units
    l2: float  # ||output - input||_2 over all pixels, [0,1] units
    psnr: float  # dB; null if identical (JSON has no inf): see docs
    robustness: Robustness
    # What "found" was verified against: the attack runs (loss, targets, steps,
    # restarts), the minimum margin, the checkpoint's view and the guarantee's scope.
    verification: dict[str, Any]
    # How the upload became the model's input: {"kind": "resize" | "resize-crop", ("resize",
    # "crop"), "input_size": [H, W], "description"} (the checkpoint's view, safespot/canvas.py).
    view: dict[str, Any]
    # Low means OOD: the checkpoint's stored detector's score of the upload as the model reads it
    # ("mahalanobis-layers"), else D(x) = mu*MSP(x) + (1-mu)*MSP(x_a*) ("safespot"); docs/ood.md
    ood_score: float | None
    ood_flag: bool | None  # ood_score below the checkpoint's calibrated threshold; null: none
    ood_method: str  # which score ood_score is: "safespot" or "mahalanobis-layers"
    model: ModelRef
    preset: str
    threat: dict[str, Any]  # {"norm", "eps", "delta"}
    config: dict[str, Any]  # the SearchConfig that ran
    grad_evals: int
    reencode: dict[str, Any] | None  # {"format", "quality", "survives": bool, ...}
    image: dict[str, Any]  # {"width", "height", "mode"}
    timings: Timings


# --------------------------------------------------------------------- errors
# Every ``code`` of an error body (HTTP answers, ``job.meta["error"]``, webhooks); a
# member's value is its lower-case name: ErrorCode.QUEUE_FULL == "queue_full".
ErrorCode = StrEnum("ErrorCode", (
    # the request or the upload, refused by the API
    "BAD_REQUEST VALIDATION_ERROR WEBHOOKS_DISABLED BAD_IMAGE EMPTY_FILE CORRUPT_IMAGE "
    "UNSUPPORTED_FORMAT UNSUPPORTED_PIXEL_FORMAT TOO_MANY_PIXELS PAYLOAD_TOO_LARGE FILE_TOO_LARGE "
    "UNSUPPORTED_MEDIA_TYPE UNSUPPORTED_CHECKPOINT UNAUTHORIZED FORBIDDEN METHOD_NOT_ALLOWED "
    # the state of the service
    "NOT_FOUND EXPIRED CONFLICT DUPLICATE_CHECKPOINT QUEUE_FULL TOO_MANY_REQUESTS NOT_READY "
    "QUEUE_UNAVAILABLE INTERNAL_ERROR DATA_MISSING "
    # a job that failed (the worker)
    "WORKER_ERROR JOB_FAILED JOB_CANCELED JOB_EXPIRED INVALID_REQUEST DUPLICATE_JOB UPLOAD_MISSING "
    "INVALID_IMAGE IMAGE_TOO_LARGE UNSUPPORTED_IMAGE_MODE MODEL_UNAVAILABLE WORKER_SHUTDOWN TIMEOUT "
    "TRAINING_FAILED "
    # a rejected checkpoint (vetting; models.errors' codes included)
    "CHECKPOINT_NOT_FOUND CHECKPOINT_MISSING CHECKPOINT_TOO_LARGE INVALID_PATH MISSING_METADATA "
    "UNSAFE_CHECKPOINT VETTING_FAILED MODEL_ERROR INVALID_CHECKPOINT UNKNOWN_MODEL "
    # activating a checkpoint that no vetting set measured, without the admin's override
    "CHECKPOINT_UNVETTED"
))


# ---------------------------------------------------------------- checkpoints
# validating -> ready | unvetted (no vetting set for its domain) | rejected; ready -> active;
# unvetted -> active only with an admin's override (recorded on the record).
CheckpointStatus = Literal["validating", "ready", "unvetted", "rejected", "active"]


class Override(TypedDict):
    at: float  # epoch seconds
    reason: str  # the admin's, or "activated without vetting"


class CheckpointRecord(TypedDict, total=False):
    id: str  # server-chosen (never the uploaded file name)
    name: str
    status: CheckpointStatus
    sha256: str
    path: str  # inside SAFESPOT_CHECKPOINT_DIR
    size_bytes: int
    uploaded_at: float
    info: dict[str, Any]  # the checkpoint's own metadata (models.checkpoint.ModelInfo)
    # {"clean_acc", "pgd_acc", "apgd_acc", "safe_spot_rate", "n", "domain", "seconds", ...}
    # or {"skipped": reason, "domain": ...} when unvetted
    vetting: dict[str, Any]
    override: Override  # set when an unvetted checkpoint was activated anyway
    error: dict[str, str] | None  # {"code", "message"} when rejected
    source: str  # "upload", "training:<job id>", "shipped"


class VetRequest(TypedDict):
    checkpoint_id: str


# The built-in training data sets: the files `safespot data download NAME` (or `safespot
# data import PATH`) writes into SAFESPOT_DATA_DIR, any one of which is enough.  The API
# refuses a run whose set is absent (409 data_missing) instead of queueing one that fails.
TRAINING_DATA: dict[str, tuple[str, ...]] = {
    "cifar10": ("cifar10_train.npz", "cifar-10-batches-py/data_batch_1"),
    "tinyimagenet": ("tinyimagenet_train.npz",),
}


def data_download_command(name: str) -> str:
    """The command that provides built-in training data set `name`."""
    return f"safespot data download {name}"


class TrainRequest(TypedDict):
    job_id: str
    recipe: Recipe
    norm: Norm
    eps: float
    epochs: int
    data: str  # a TRAINING_DATA name, or a path inside the data directory
    limit: int | None
    name: str
    arch: str


class WorkerStatus(TypedDict):
    name: str
    queues: list[str]
    model: ModelRef | None
    device: str
    pid: int
    host: str
    started_at: float
    last_seen: float
    busy: bool


# ------------------------------------------------------ the API's job backend
class JobView(TypedDict, total=False):
    id: str
    status: JobStatus
    progress: Progress
    result: FilterResult | None
    error: dict[str, str] | None
    created_at: float
    started_at: float | None
    ended_at: float | None


class JobBackend(Protocol):
    """What the API needs from the queue; Redis/RQ in production, in-process in
    the single-command mode (`safespot serve` without SAFESPOT_REDIS_URL)."""

    def submit_filter(self, request: FilterRequest, image_png: bytes) -> None: ...
    def get_job(self, job_id: str) -> JobView | None: ...
    def get_result_image(self, job_id: str) -> bytes | None: ...
    def queue_depth(self) -> int: ...
    def ready(self) -> tuple[bool, str]: ...  # (ready, reason)
    def list_checkpoints(self) -> list[CheckpointRecord]: ...
    def add_checkpoint(self, record: CheckpointRecord) -> None: ...  # then vetted by a worker
    def activate_checkpoint(self, checkpoint_id: str, override: bool = False,
                            reason: str | None = None) -> CheckpointRecord: ...  # override: unvetted too
    def delete_checkpoint(self, checkpoint_id: str) -> None: ...
    def submit_training(self, request: TrainRequest) -> None: ...
    def get_training(self, job_id: str) -> JobView | None: ...
