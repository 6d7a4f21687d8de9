"""The job-processing core shared by the RQ worker, ``filter_job`` and the embedded worker.

A :class:`FilterProcessor` owns the loaded model and one continuous-batching
search engine (:class:`safespot.SafeSpotSearch`) per distinct threat
configuration (norm, eps, delta, preset).  Callers :meth:`~FilterProcessor.add`
jobs whenever they like and call :meth:`~FilterProcessor.step`, which runs
one forward+backward pass of one engine and returns the jobs that finished,
each with its FilterResult and output PNG.

Every engine sees the model through the checkpoint's view
(:func:`safespot.canvas.make_view`: a differentiable resize to the model's
input size, or ImageNet's resize-then-centre-crop), so the perturbation lives
at the upload's full resolution.  Images of one engine share a zero-padded
canvas, which costs (images x largest H x largest W) memory and compute, so
engines are also split by size class (the bit length of the longer side:
a 32x32 thumbnail never pays for a 4000x3000 photo's canvas), and a pixel
budget holds back images that would blow a canvas up (first come, first
served).

A checkpoint that carries an OOD detector (``safespot ood-calibrate --score
mahalanobis``) has it score each upload once, as the view shows it to the
model, when its job finishes: one forward pass, no second search.

Threading: one thread drives a processor (it is not thread-safe).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from models.checkpoint import LoadedCheckpoint, ModelInfo
from models.hardware import resolve_precision
from models.ood_detector import detector_score
from safespot import SafeSpotSearch, SearchConfig
from safespot.attacks import pgd
from safespot.canvas import make_view
from safespot.publish import Reencode
from worker import results
from worker.errors import JobError
from worker.imaging import DecodedImage, decode_png, encode_png, jpeg_roundtrip
from worker.protocol import ErrorCode, FilterRequest, FilterResult, ModelRef, Progress

log = logging.getLogger("safespot.worker.processor")

EngineKey = tuple[str, float, float, str, int, int]  # (norm, eps, delta, preset, size class, jpeg q or 0)
ProgressCallback = Callable[[str, Progress], None]  # (job id, progress)


@dataclass
class FinishedJob:
    """One job leaving the processor: a result and its PNG, or an error."""

    job_id: str
    result: FilterResult | None = None
    png: bytes | None = None
    error: JobError | None = None
    batch_size: int = 0  # the largest batch the job was searched in


@dataclass
class _Job:
    job_id: str
    request: FilterRequest
    image: DecodedImage
    key: EngineKey
    cfg: SearchConfig
    added_at: float
    submitted: bool = False  # handed to its engine (else held back by the pixel budget)
    abandoned: bool = False  # its caller gave up on it (timeout); its result is dropped
    passes: int = 0
    batch_size: int = 0
    progress: dict[str, Any] = field(default_factory=dict)


def search_config(request: FilterRequest, batch_size: int, precision: str = "fp32",
                  info: ModelInfo | None = None) -> tuple[tuple[str, float, float, str], SearchConfig]:
    """The threat key and SearchConfig of a request; JobError("invalid_request") when out of range.
    A request without eps gets the budget the checkpoint (`info`) was trained for."""
    preset = str(request.get("preset") or "standard")
    norm = str(request.get("norm") or "linf")
    try:
        asked_eps, asked_delta = request.get("eps"), request.get("delta")
        eps = float(asked_eps) if asked_eps is not None else (info.budget(norm) if info is not None else None)
        delta = None if asked_delta is None else float(asked_delta)
        cfg = SearchConfig.preset(preset, norm=norm, eps=eps, batch_size=batch_size,  # type: ignore[arg-type]
                                  precision=precision, **({} if delta is None else {"delta": delta}))
    except (TypeError, ValueError) as e:
        raise JobError(f"invalid search settings: {e}", code=ErrorCode.INVALID_REQUEST) from e
    return (cfg.norm, float(cfg.eps), float(cfg.budget), preset), cfg


def reencode_quality(request: FilterRequest) -> int:
    """The JPEG quality the platform re-encodes with (checked by the API), or 0 for none."""
    spec = request.get("reencode")
    return int(spec["quality"]) if spec else 0


def build_processor(settings: Any, checkpoint: LoadedCheckpoint, checkpoint_id: str, *,
                    progress: ProgressCallback | None = None, **limits: Any) -> FilterProcessor:
    """The one way a FilterProcessor is made: batch limits from worker settings (``None``:
    the defaults), overridden by ``limits`` (the command line's own)."""
    if settings is not None:
        limits = {"max_batch": settings.max_batch, "max_batch_pixels": settings.max_batch_pixels,
                  "precision": getattr(settings, "search_precision", "fp32"), **limits}
    return FilterProcessor(checkpoint, checkpoint_id, progress=progress, **limits)


class FilterProcessor:
    """Loaded model + search engines; add jobs, step, collect finished jobs."""

    def __init__(
        self,
        checkpoint: LoadedCheckpoint,
        checkpoint_id: str,
        *,
        max_batch: int = 64,
        max_batch_pixels: int = 32 * 1024 * 1024,
        max_image_pixels: int | None = None,
        progress: ProgressCallback | None = None,
        clock: Callable[[], float] = time.time,
        name: str = "",
        precision: str = "fp32",
    ) -> None:
        self.checkpoint = checkpoint
        self.checkpoint_id = checkpoint_id
        self.name = name  # the registry record's name (what the admin called it); "" = the file's
        self.max_batch = max_batch
        self.max_batch_pixels = max_batch_pixels
        self.max_image_pixels = max_image_pixels
        self.progress = progress
        self.clock = clock
        param = next(checkpoint.model.parameters(), None)
        self.device = param.device if param is not None else torch.device("cpu")
        self.dtype = param.dtype if param is not None else torch.float32
        self.view = make_view(checkpoint.info.view, checkpoint.info.input_size)
        self.precision = resolve_precision(precision, self.device)
        self._engines: dict[EngineKey, SafeSpotSearch] = {}
        self._jobs: dict[str, _Job] = {}
        self.passes = 0  # forward+backward passes run, all engines
        self.last_batch = 0  # images in the most recent pass

    @property
    def model_ref(self) -> ModelRef:
        info = self.checkpoint.info
        return {"name": self.name or info.name or self.checkpoint_id, "sha256": self.checkpoint.sha256,
                "checkpoint_id": self.checkpoint_id}

    @property
    def in_flight(self) -> int:
        """Jobs added and not finished (each holds a batch slot)."""
        return len(self._jobs)

    @property
    def free_slots(self) -> int:
        return max(0, self.max_batch - len(self._jobs))

    # ------------------------------------------------------------------ jobs
    def add(self, job_id: str, request: FilterRequest, png: bytes | None) -> None:
        """Decode the upload and queue it for its engine; raises JobError for a bad request."""
        if job_id in self._jobs:
            raise JobError(f"job {job_id} is already in flight", code=ErrorCode.DUPLICATE_JOB)
        quality = reencode_quality(request)
        threat, cfg = search_config(request, self.max_batch, self.precision, self.checkpoint.info)
        image = decode_png(png, self.max_image_pixels)
        key = (*threat, max(image.height, image.width).bit_length(), quality)
        self._jobs[job_id] = _Job(job_id, request, image, key, cfg, self.clock())

    def abandon(self, job_id: str) -> None:
        """Stop reporting a job (its caller failed it, e.g. on a timeout).  Its image stays in
        its batch until the engine lets it go, so the slot frees a little later; an engine
        left with only abandoned images is dropped at once (nobody waits for its answers)."""
        job = self._jobs.get(job_id)
        if job is None:
            return
        job.abandoned = True
        searched = self._engine_jobs(job.key)
        if not job.submitted:
            del self._jobs[job_id]
        elif all(j.abandoned for j in searched):
            for j in searched:
                del self._jobs[j.job_id]
            self._engines.pop(job.key, None)

    def step(self) -> list[FinishedJob]:
        """One pass of the engine holding the oldest job; returns the jobs that finished."""
        if not self._jobs:
            return []
        key = next(iter(self._jobs.values())).key  # the oldest: _jobs keeps the order jobs were added in
        self._submit_held(key)
        engine = self._engines[key]
        members = self._engine_jobs(key)
        self.last_batch = len(members)
        try:
            finished = engine.step()
        except Exception as e:  # the engine's state is unknown now: fail its jobs, start afresh
            log.exception("search pass failed; failing %d jobs of engine %s", len(members), key)
            del self._engines[key]
            for j in members:
                del self._jobs[j.job_id]
            error = JobError(f"search failed: {type(e).__name__}: {e}", code=ErrorCode.INTERNAL_ERROR, retryable=True)
            return [FinishedJob(j.job_id, error=error) for j in members if not j.abandoned]
        self.passes += engine.cost
        outer = {p.key: p.outer_steps for p in engine.progress()}
        for j in members:
            j.passes += engine.cost
            j.batch_size = max(j.batch_size, len(members))
        out = [self._finish(r) for r in finished]
        self._report_progress(members, outer, len(members))
        return [f for f in out if f is not None]

    def drain(self) -> list[FinishedJob]:
        """Step until every job has finished (benchmarks and tests)."""
        out: list[FinishedJob] = []
        while self._jobs:
            out.extend(self.step())
        return out

    # ------------------------------------------------------------- internals
    def _engine_jobs(self, key: EngineKey, submitted: bool = True) -> list[_Job]:
        """The jobs of one engine in its batch (or, ``submitted=False``, held back), oldest first."""
        return [j for j in self._jobs.values() if j.key == key and j.submitted == submitted]

    def _submit_held(self, key: EngineKey) -> None:
        """Hand this engine's held-back jobs to it, oldest first, while the batch and the
        canvas pixel budget allow (an empty engine always takes one)."""
        engine = self._engines.get(key)
        if engine is None:
            cfg = next(j.cfg for j in self._jobs.values() if j.key == key)
            quality = key[5]
            reencode = Reencode(quality, exact=jpeg_roundtrip(quality)) if quality else None
            engine = self._engines[key] = SafeSpotSearch(self.checkpoint.model, cfg, view=self.view,
                                                         reencode=reencode)
        members = self._engine_jobs(key)
        for job in self._engine_jobs(key, submitted=False):
            candidate = [*members, job]
            height = max(j.image.height for j in candidate)
            width = max(j.image.width for j in candidate)
            if members and (len(candidate) > self.max_batch
                            or len(candidate) * height * width > self.max_batch_pixels):
                break  # first come, first served: later jobs wait behind this one
            engine.submit([job.image.pixels(self.device, self.dtype)], keys=[job.job_id])
            job.submitted = True
            members.append(job)

    def _finish(self, found: Any) -> FinishedJob | None:
        job = self._jobs.pop(found.key, None)
        if job is None or job.abandoned:
            return None
        try:
            output = job.image.answer_levels(found.x_safe)
            png = encode_png(output, job.image.alpha, job.image.mode)
            result = results.build_result(
                request=job.request, image=job.image, found=found, output=output, cfg=job.cfg,
                preset=job.key[3], info=self.checkpoint.info, model=self.model_ref,
                started_at=job.added_at, finished_at=self.clock(),
                reencode=self._reencode_report(job, found) if job.key[5] else None,
                detector_score=self._detector_score(job))
        except Exception as e:
            if not isinstance(e, JobError):
                log.exception("could not build the result of job %s", job.job_id)
            return FinishedJob(job.job_id, error=JobError.of(e), batch_size=job.batch_size)
        return FinishedJob(job.job_id, result=result, png=png, batch_size=job.batch_size)

    def _detector_score(self, job: _Job) -> float | None:
        """The stored OOD detector's score of the original upload through the checkpoint's view
        (what the model classified), or None without a detector.  A failure here costs the
        result its OOD verdict (null), not the protected image."""
        detector = self.checkpoint.ood_detector
        if detector is None:
            return None
        try:
            pixels = job.image.pixels(self.device, self.dtype)
            x = self.view(pixels[None], [tuple(pixels.shape)])
            max_layers = int(self.checkpoint.info.ood["detector"]["max_layers"])
            return float(detector_score(self.checkpoint.model, detector, x, max_layers)[0])
        except Exception:
            log.exception("OOD detector failed on job %s; its ood_score is null", job.job_id)
            return None

    def _reencode_report(self, job: _Job, found: Any) -> dict[str, Any]:
        """With a planned re-encode, "found" is the verdict on the re-encoded image; also say
        whether the PNG itself (published without re-encoding) holds, by one more attack."""
        cfg, size = job.cfg, [tuple(found.x_safe.shape)]
        model, view = self.checkpoint.model, self.view

        def classify(z: torch.Tensor) -> torch.Tensor:
            return model(view(z, size))

        attack = pgd(classify, found.x_safe[None], torch.tensor([found.label], device=self.device),
                     norm=cfg.norm, eps=cfg.eps, alpha=cfg.verify_alpha, steps=cfg.verify_steps,
                     restarts=cfg.verify_restarts,
                     generator=torch.Generator(device=self.device).manual_seed(cfg.seed + 1))
        return {"format": "jpeg", "quality": job.key[5], "survives": bool(found.found),
                "verified_with": "Pillow JPEG encoder",
                "safe_without_reencode": not bool(attack.success[0]),
                "extra_grad_evals": attack.grad_evals}

    def _report_progress(self, members: list[_Job], outer: dict[Any, int], batch: int) -> None:
        if self.progress is None:
            return
        for j in members:
            if j.job_id not in self._jobs or j.abandoned:
                continue
            fraction = min(0.99, j.passes / _pass_budget(j.cfg))
            progress: Progress = {"phase": "searching", "fraction": round(fraction, 3),
                                  "grad_evals": j.passes, "outer_steps": outer.get(j.job_id, 0),
                                  "batch_size": batch}
            try:
                self.progress(j.job_id, progress)
            except Exception:  # progress is best effort: never let it break a batch
                log.exception("progress callback failed for job %s", j.job_id)


def _pass_budget(cfg: SearchConfig) -> int:
    """Roughly the most passes an image can take: the search plus one verification."""
    return max(1, cfg.outer_steps * cfg.passes_per_outer_step + cfg.verify_passes)

