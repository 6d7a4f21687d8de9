"""The harness of the service benchmarks (:mod:`bench.soak`, :mod:`bench.e2e`):
the real service as separate processes, real photos as uploads, HTTP clients
that account for every job, and the statistics both benchmarks report.

- :class:`BenchService`: Redis (a private ``redis-server`` unless a URL is
  given), one ``python -m worker.rq_worker`` and one ``safespot serve`` (the
  API only, Redis mode), on :mod:`bench.stack` (the integration tests' too).
- :func:`photo_uploads`: random crops of the repository's test photographs,
  encoded as the uploads clients send.
- :class:`Ledger`, :func:`drive_uploads`, :func:`polling`: concurrent
  clients that submit and a poller that follows each accepted job to its end.
- :func:`percentiles`, :func:`slope_per_min`, :class:`MemorySampler`:
  latency percentiles and RSS over time with its slope (steady or a leak).
"""

from __future__ import annotations

import io
import math
import random
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.stack import REPO, RedisServer, Stack, free_port, service_env
from safespot_cli.bench_cmd import RssSampler

PHOTOS = REPO / "tests" / "fixtures" / "photos"
BENCH_KEY = "bench-" + uuid.uuid4().hex  # the only client key of the API this module starts
AUTH = {"Authorization": f"Bearer {BENCH_KEY}"}
TERMINAL = frozenset({"finished", "failed", "canceled", "expired"})


# ---------------------------------------------------------------- images
def photo_uploads(count: int, size: tuple[int, int], seed: int = 0) -> list[bytes]:
    """`count` PNG uploads of `size` cut from the test photographs: random crops,
    so no two requests carry the same pixels."""
    from PIL import Image

    sources: list[Image.Image] = []
    for path in sorted(PHOTOS.glob("*")):
        with Image.open(path) as im:
            sources.append(im.convert("RGB"))
    rng = random.Random(seed)
    uploads = []
    for i in range(count):
        source = sources[i % len(sources)]
        scale = rng.uniform(0.4, 1.0)
        w, h = max(size[0], int(source.width * scale)), max(size[1], int(source.height * scale))
        w, h = min(w, source.width), min(h, source.height)
        x, y = rng.randint(0, source.width - w), rng.randint(0, source.height - h)
        crop = source.crop((x, y, x + w, y + h)).resize(size, Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        crop.save(buffer, format="PNG")
        uploads.append(buffer.getvalue())
    return uploads


# ------------------------------------------------------------- processes
@dataclass
class BenchService:
    """The API (key BENCH_KEY) and one worker at a time on `redis_url` (a private Redis
    when None), in a temporary folder; `with` stops everything it started."""

    redis_url: str | None
    model: str
    threads: int = 1
    max_batch: int = 64
    worker_metrics_port: int = 0
    stack: Stack = field(default_factory=lambda: Stack(Path(tempfile.mkdtemp(prefix="safespot-bench-"))))
    redis: RedisServer | None = None

    def __enter__(self) -> BenchService:
        if self.redis_url is None:
            self.redis = RedisServer(self.stack.workdir / "redis").start()
            self.redis_url = self.redis.url
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.stop_all()
        if self.redis is not None:
            self.redis.stop()
        shutil.rmtree(self.stack.workdir, ignore_errors=True)

    def env(self, **settings: Any) -> dict[str, str]:
        return service_env(self.redis_url, threads=self.threads, data_dir=self.stack.workdir / "data",
                           checkpoint_dir=self.stack.workdir / "checkpoints", log_level="warning", **settings)

    def start_api(self, max_queue: int) -> None:
        self.stack.start_api(self.env(api_keys=BENCH_KEY, max_queue=max_queue, max_wait_s=60, seconds_per_job=0.5))

    def start_worker(self, max_batch: int | None = None) -> None:
        self.max_batch, self.worker_metrics_port = max_batch or self.max_batch, free_port()
        self.stack.start_worker(self.env(default_model=self.model, max_batch=self.max_batch, max_wait_ms=20,
                                         metrics_port=self.worker_metrics_port, log_json="true"), name="worker")
        self.stack.wait_http(self.stack.url + "readyz", 300, "a worker with a loaded model")

    def pids(self) -> dict[str, int | str]:
        procs = {**self.stack.procs, **({"redis": self.redis.proc} if self.redis and self.redis.proc else {})}
        return {name: p.pid for name, p in procs.items() if p.poll() is None}

    def worker_jobs_total(self) -> dict[str, float]:
        """safespot_worker_jobs_total by outcome, from the worker's /metrics."""
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"http://127.0.0.1:{self.worker_metrics_port}/metrics", timeout=5).text
        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "safespot_worker_jobs_total":
                    totals[sample.labels["outcome"]] = totals.get(sample.labels["outcome"], 0.0) + sample.value
        return totals


# ------------------------------------------------------------- statistics
def percentiles(values: list[float]) -> dict[str, Any]:
    """p50/p95/p99 (nearest rank) and the mean, in the values' unit."""
    if not values:
        return {"p50": None, "p95": None, "p99": None, "mean": None, "n": 0}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))], 4)

    return {"p50": rank(0.50), "p95": rank(0.95), "p99": rank(0.99),
            "mean": round(sum(ordered) / len(ordered), 4), "n": len(ordered)}


def slope_per_min(series: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MiB) samples, in MiB per minute."""
    if len(series) < 3 or len({t for t, _ in series}) < 2:
        return None
    times, values = zip(*series, strict=True)
    return round(60 * statistics.linear_regression(times, values).slope, 3)


class MemorySampler(RssSampler):
    """RSS of the service's processes over time, and its slope (steady or a leak)."""

    def __init__(self, service: BenchService, every_s: float) -> None:
        super().__init__(service.pids, every_s)

    def summary(self, warmup_fraction: float = 0.25) -> dict[str, Any]:
        """Per process: start/end/max MiB, the slope after warm-up, and the samples."""
        out: dict[str, Any] = {}
        for name, series in self.series.items():
            cut = series[0][0] + warmup_fraction * (series[-1][0] - series[0][0])
            steady = [s for s in series if s[0] >= cut]
            out[name] = {"start_mib": series[0][1], "end_mib": series[-1][1],
                         "max_mib": max(v for _, v in series),
                         "slope_mib_per_min": slope_per_min(series),
                         "slope_after_warmup_mib_per_min": slope_per_min(steady),
                         "samples": [[t, v] for t, v in series]}
        return out


# ------------------------------------------------------------------ clients
@dataclass
class Ledger:
    """Every submission and every job end, shared by the client threads."""

    answers: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    accepted: dict[str, float] = field(default_factory=dict)  # job id -> client clock at submit
    ended: dict[str, dict[str, Any]] = field(default_factory=dict)  # job id -> final JobView
    observed_s: dict[str, float] = field(default_factory=dict)  # submit -> seen ended, client side
    seen_twice: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def outstanding(self) -> list[str]:
        with self.lock:
            return [j for j in self.accepted if j not in self.ended]


def _poll(client: Any, ledger: Ledger, job_ids: list[str]) -> None:
    for job_id in job_ids:
        try:
            response = client.get(f"/v1/jobs/{job_id}")
        except Exception as e:  # count it; the next round asks again
            with ledger.lock:
                ledger.errors[f"poll:{type(e).__name__}"] += 1
            continue
        if response.status_code == 404:
            body = {"status": "lost"}
        elif response.status_code != 200:
            continue
        else:
            body = response.json()
        if body.get("status") in TERMINAL or body.get("status") == "lost":
            with ledger.lock:
                if job_id in ledger.ended:
                    ledger.seen_twice += 1
                    continue
                ledger.ended[job_id] = {k: body.get(k) for k in ("status", "error", "created_at",
                                                                 "started_at", "ended_at")}
                ledger.observed_s[job_id] = time.monotonic() - ledger.accepted[job_id]


def drive_uploads(stack: BenchService, ledger: Ledger, uploads: list[bytes], clients: int, preset: str,
           until: float | None, per_client: int | None) -> None:
    """`clients` threads submitting back to back (a 429 waits its Retry-After, at
    most 0.5 s) until the clock passes `until` or each sent `per_client`."""
    import httpx

    def client_loop(index: int) -> None:
        sent = 0
        with httpx.Client(base_url=stack.stack.url, timeout=120, headers=AUTH) as client:
            while (until is None or time.monotonic() < until) and (per_client is None or sent < per_client):
                data = uploads[(index + sent * clients) % len(uploads)]
                started = time.monotonic()
                try:
                    response = client.post("/v1/filter", data={"preset": preset},
                                           files={"image": ("photo.png", data, "image/png")})
                    status, headers = response.status_code, response.headers
                except Exception as e:
                    with ledger.lock:
                        ledger.errors[f"submit:{type(e).__name__}"] += 1
                    time.sleep(0.2)
                    continue
                with ledger.lock:
                    ledger.answers[status] += 1
                    if status in (200, 202):
                        ledger.accepted[response.json()["job_id"]] = started
                if status in (200, 202):
                    sent += 1
                elif status == 429:
                    time.sleep(min(0.5, float(headers.get("retry-after", "1"))))
                else:
                    time.sleep(0.2)

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@contextmanager
def polling(stack: BenchService, ledger: Ledger, interval_s: float = 0.25, per_round: int = 8) -> Iterator[None]:
    """While inside: follow the accepted jobs, oldest first, `per_round` of them every `interval_s`.

    Bounded on purpose: polling every outstanding job would load the API (and
    steal CPU from the worker on a shared machine).  Latencies are taken from the
    jobs' own timestamps, so the polling rate only affects `observed_latency_s`."""
    import httpx

    stop = threading.Event()

    def loop() -> None:
        with httpx.Client(base_url=stack.stack.url, timeout=30, headers=AUTH) as client:
            while not stop.is_set():
                _poll(client, ledger, ledger.outstanding()[:per_round])
                stop.wait(interval_s)

    thread = threading.Thread(target=loop, name="poller", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)


def server_latencies(ledger: Ledger) -> list[float]:
    """Server-side end-to-end latency (submission accepted -> job ended) of finished jobs."""
    return [v["ended_at"] - v["created_at"] for v in ledger.ended.values()
            if v.get("status") == "finished" and v.get("ended_at") and v.get("created_at")]
