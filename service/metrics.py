"""Prometheus metrics of the API process.

Each app owns a `CollectorRegistry` (no global default registry), so tests and
several apps in one process do not share counters.  Labels are bounded: the
route is the route *template* (`/v1/jobs/{job_id}`, never a job id), status
is the HTTP status, reasons are our error codes, queues are the fixed queue
names.  Gauges about Redis and the workers are read at scrape time.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.routing import Match

from worker.protocol import FILTER_QUEUE, JobBackend

logger = logging.getLogger("safespot.service")

UNMATCHED_ROUTE = "unmatched"  # 404s of unknown paths: one label value, not the path
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
UPLOAD_ROUTES = frozenset({"/v1/filter", "/v1/checkpoints"})
_REASON = re.compile(r"^[a-z_]{1,40}$")


def route_template(scope: Mapping[str, Any]) -> str:
    """The matched route's path template, or `unmatched`."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path or "/"
    # Middleware runs before routing; match the app's routes ourselves.
    app = scope.get("app")
    for candidate in getattr(getattr(app, "router", None), "routes", ()):
        match, _ = candidate.matches(scope)
        if match is Match.FULL:
            return getattr(candidate, "path", UNMATCHED_ROUTE) or "/"
    return UNMATCHED_ROUTE


class ServiceMetrics:
    """The API's metrics on its own registry."""

    def __init__(self, backend: JobBackend) -> None:
        self.registry = CollectorRegistry()  # no auto_describe: the backend is read at scrape time only
        self.requests = Counter(
            "safespot_http_requests_total", "HTTP requests answered, by route template and status.",
            ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram(
            "safespot_http_request_duration_seconds", "Time to answer an HTTP request.",
            ["route", "method"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.jobs_submitted = Counter(
            "safespot_jobs_submitted_total", "Filter jobs accepted onto the queue, by preset.",
            ["preset"], registry=self.registry)
        self.uploads_rejected = Counter(
            "safespot_uploads_rejected_total", "Uploads refused before queueing, by reason.",
            ["reason"], registry=self.registry)
        self.registry.register(_BackendCollector(backend))
        # Single-process mode: the in-process worker's own registry joins this endpoint.
        self.worker_registry = getattr(backend, "metrics_registry", None)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, method=method, status=str(status)).inc()
        self.latency.labels(route=route, method=method).observe(seconds)

    def upload_rejected(self, scope: Mapping[str, Any], reason: str) -> None:
        if route_template(scope) in UPLOAD_ROUTES:
            self.uploads_rejected.labels(reason=reason if _REASON.match(reason) else "other").inc()

    def job_submitted(self, preset: str) -> None:
        self.jobs_submitted.labels(preset=preset).inc()

    def render(self) -> bytes:
        body = generate_latest(self.registry)
        if self.worker_registry is not None:
            body += generate_latest(self.worker_registry)
        return body


class _BackendCollector(Collector):
    """Queue depth, ready workers and Redis reachability, read when scraped.

    Backends may offer `queue_depths() -> {queue: depth}`, `ready_workers() ->
    int` and `redis_up() -> bool` (the Redis backend does); otherwise
    `queue_depth()` and `ready()` of the JobBackend protocol are used."""

    def __init__(self, backend: JobBackend) -> None:
        self.backend = backend

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("safespot_queue_depth", "Jobs waiting in each queue.",
                                  labels=["queue"])
        for queue, value in self._depths().items():
            depth.add_metric([queue], value)
        yield depth
        yield GaugeMetricFamily("safespot_workers_ready",
                                "Live workers with a loaded model.", value=self._ready_workers())
        redis_up = getattr(self.backend, "redis_up", None)
        if callable(redis_up):
            yield GaugeMetricFamily("safespot_redis_up", "1 when Redis answers a PING.",
                                    value=1.0 if _safe(redis_up, False) else 0.0)

    def _depths(self) -> dict[str, float]:
        depths = getattr(self.backend, "queue_depths", None)
        if callable(depths):
            return {str(k): float(v) for k, v in _safe(depths, {}).items()}
        value = _safe(self.backend.queue_depth, None)
        return {} if value is None else {FILTER_QUEUE: float(value)}

    def _ready_workers(self) -> float:
        count = getattr(self.backend, "ready_workers", None)
        if callable(count):
            return float(_safe(count, 0))
        ready = _safe(self.backend.ready, (False, ""))
        return 1.0 if ready[0] else 0.0


def _safe(call: Any, default: Any) -> Any:
    """A scrape must answer even when Redis is down: report the default."""
    try:
        return call()
    except Exception as e:
        logger.debug("metrics: %s failed: %s", getattr(call, "__name__", call), e)
        return default
