"""Prometheus metrics of a worker, on their own registry (:data:`REGISTRY`).

``safespot worker`` serves it on SAFESPOT_METRICS_PORT; in the single-process
mode the API includes it in its /metrics (``EmbeddedBackend.metrics_registry``).
Labels are bounded: outcome, preset, model name, found; never a job id.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)  # memory and CPU of the worker process
PlatformCollector(registry=REGISTRY)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)

BATCH_SIZE = Histogram("safespot_worker_batch_size", "Images searched together per forward+backward pass",
                       buckets=BATCH_BUCKETS, registry=REGISTRY)
JOBS = Counter("safespot_worker_jobs_total", "Filter jobs ended, by outcome (finished, failed, retried)",
               ["outcome", "preset", "model"], registry=REGISTRY)
QUEUE_WAIT = Histogram("safespot_worker_queue_wait_seconds", "Time from submission to the search starting",
                       buckets=WAIT_BUCKETS, registry=REGISTRY)
JOB_DURATION = Histogram("safespot_worker_job_duration_seconds",
                         "Time from the search starting to the job ending", ["preset"],
                         buckets=DURATION_BUCKETS, registry=REGISTRY)
SEARCH_PASSES = Counter("safespot_worker_search_passes_total", "Forward+backward passes run by the search",
                        ["model"], registry=REGISTRY)
SAFE_SPOTS = Counter("safespot_worker_safe_spots_total", "Filtered images by whether a safe spot was found",
                     ["found", "model"], registry=REGISTRY)
OOD_FLAGS = Counter("safespot_worker_ood_flags_total", "Filtered images flagged out-of-distribution",
                    ["model"], registry=REGISTRY)
BUSY_SECONDS = Counter("safespot_worker_busy_seconds_total", "Seconds spent running search passes",
                       registry=REGISTRY)
MODEL_INFO = Gauge("safespot_worker_model_info", "The loaded model (value 1)",
                   ["name", "sha256", "checkpoint_id"], registry=REGISTRY)
TRAINING_JOBS = Counter("safespot_training_jobs_total", "Training runs ended, by outcome", ["outcome"],
                        registry=REGISTRY)

def set_model(name: str, sha256: str, checkpoint_id: str) -> None:
    """Exactly one model_info series: the model loaded now."""
    MODEL_INFO.clear()
    MODEL_INFO.labels(name=name, sha256=sha256, checkpoint_id=checkpoint_id).set(1)


def serve(port: int) -> None:
    """Expose /metrics on ``port`` (0: not at all)."""
    if port:
        start_http_server(port, registry=REGISTRY)


def pass_ran(model: str, batch: int, seconds: float, passes: int) -> None:
    """One search pass: its batch size, busy time and forward+backward passes."""
    BATCH_SIZE.observe(batch)
    BUSY_SECONDS.inc(seconds)
    SEARCH_PASSES.labels(model=model).inc(passes)


def job_ended(outcome: str, preset: str, model: str, seconds: float, result: dict | None = None) -> None:
    """A filter job ended (``outcome``: finished or failed); ``result`` when it finished."""
    JOBS.labels(outcome=outcome, preset=preset, model=model).inc()
    JOB_DURATION.labels(preset=preset).observe(seconds)
    if result is not None:
        SAFE_SPOTS.labels(found=str(bool(result.get("safe_spot_found"))).lower(), model=model).inc()
        if result.get("ood_flag"):
            OOD_FLAGS.labels(model=model).inc()
