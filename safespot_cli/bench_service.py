"""Service benchmarks: a soak run at saturation, and end-to-end throughput.

Both start the real thing as separate processes: Redis (a private
``redis-server`` unless a URL is given), one ``python -m worker.rq_worker``
and one ``safespot serve`` (the API only, Redis mode), then drive the API over
HTTP with concurrent clients uploading real photographs.

- :func:`run_soak`: clients keep the bounded queue full for ``duration_s``;
  records submissions, 429s, completions, failures, lost jobs (accepted, never
  ended), duplicated results (a job finished twice), latency percentiles,
  throughput, and the RSS of the worker, the API and Redis over time with its
  slope (steady memory or a leak).
- :func:`run_e2e`: images per second through the service versus the library
  (:class:`worker.processor.FilterProcessor`, what the worker runs) called
  directly on the same images, latency percentiles, and the gain of
  cross-request batching (``max_batch=64``) over ``max_batch=1``.

Both return JSON-able dicts and fill ``out`` in place as they go (a caller
keeps partial figures if a run is interrupted)::

    python -m safespot_cli.bench_service soak --duration 300 --json soak.json
    python -m safespot_cli.bench_service e2e --json e2e.json

Run them on an otherwise idle machine for figures worth comparing: clients,
API, worker and Redis share its CPUs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO / "tests" / "fixtures" / "photos"
BENCH_KEY = "bench-" + uuid.uuid4().hex  # the only client key of the API this module starts
TERMINAL = frozenset({"finished", "failed", "canceled", "expired"})
FILTER_QUEUE = "safespot-filter"  # worker.protocol.FILTER_QUEUE (kept import-free here)


# ---------------------------------------------------------------- images
def photo_uploads(count: int, size: tuple[int, int], seed: int = 0) -> list[bytes]:
    """`count` PNG uploads of `size` cut from real photographs (the test
    fixtures, else scikit-image's copies of the same photos): random crops,
    so no two requests carry the same pixels."""
    from PIL import Image

    sources: list[Image.Image] = []
    for path in sorted(PHOTOS.glob("*")) if PHOTOS.is_dir() else []:
        with Image.open(path) as im:
            sources.append(im.convert("RGB"))
    if not sources:
        from skimage import data

        sources = [Image.fromarray(getattr(data, name)()).convert("RGB")
                   for name in ("astronaut", "chelsea", "coffee")]
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
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float | None:
    """Resident memory of a process (VmRSS from /proc; psutil when /proc is absent)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import psutil

        return float(psutil.Process(pid).memory_info().rss) / 2**20
    except Exception:
        return None


@dataclass
class ServiceStack:
    """Redis + one worker + the API, as processes; `with` stops what it started."""

    redis_url: str | None
    model: str
    max_batch: int = 64
    max_queue: int = 64
    threads: int = 1
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="safespot-bench-")))
    redis_proc: subprocess.Popen[bytes] | None = None
    worker_proc: subprocess.Popen[bytes] | None = None
    api_proc: subprocess.Popen[bytes] | None = None
    api_port: int = 0
    worker_metrics_port: int = 0

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def _env(self, **settings: Any) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SAFESPOT_")}
        env.update({"PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                    "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads),
                    "SAFESPOT_REDIS_URL": str(self.redis_url),
                    "SAFESPOT_DATA_DIR": str(self.workdir / "data"),
                    "SAFESPOT_CHECKPOINT_DIR": str(self.workdir / "checkpoints"),
                    "SAFESPOT_LOG_LEVEL": "warning"})
        env.update({f"SAFESPOT_{k.upper()}": str(v) for k, v in settings.items()})
        return env

    def _spawn(self, args: list[str], env: dict[str, str], log: str) -> subprocess.Popen[bytes]:
        with open(self.workdir / log, "ab") as out:
            return subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)

    def start_redis(self) -> None:
        if self.redis_url is not None:
            return
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("no redis-server on PATH: install it or pass a Redis URL")
        port = _free_port()
        self.redis_proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        _wait(lambda: _port_open(port), 10, "redis-server to listen")

    def start_worker(self, max_batch: int | None = None) -> None:
        self.max_batch = max_batch or self.max_batch
        self.worker_metrics_port = _free_port()
        env = self._env(default_model=self.model, max_batch=self.max_batch, threads=self.threads,
                        metrics_port=self.worker_metrics_port, log_json="true", max_wait_ms=20)
        self.worker_proc = self._spawn([sys.executable, "-m", "worker.rq_worker"], env, "worker.log")

    def stop_worker(self) -> None:
        _stop(self.worker_proc)
        self.worker_proc = None

    def start_api(self) -> None:
        import httpx

        self.api_port = _free_port()
        env = self._env(api_keys=BENCH_KEY, max_queue=self.max_queue, max_wait_s=60,
                        seconds_per_job=0.5)
        self.api_proc = self._spawn([sys.executable, "-m", "safespot_cli.main", "serve", "--port",
                                     str(self.api_port), "--log-level", "warning"], env, "api.log")

        def up() -> bool:
            if self.api_proc is not None and self.api_proc.poll() is not None:
                raise RuntimeError(f"the API exited: {(self.workdir / 'api.log').read_text()[-2000:]}")
            try:
                return httpx.get(f"{self.api_url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(up, 60, "the API to answer")

    def wait_ready(self, timeout: float = 300) -> None:
        import httpx

        def ready() -> bool:
            if self.worker_proc is not None and self.worker_proc.poll() is not None:
                raise RuntimeError(f"the worker exited: {(self.workdir / 'worker.log').read_text()[-2000:]}")
            return httpx.get(f"{self.api_url}/readyz", timeout=5).status_code == 200

        _wait(ready, timeout, "a worker with a loaded model")

    def pids(self) -> dict[str, int]:
        procs = {"worker": self.worker_proc, "api": self.api_proc, "redis": self.redis_proc}
        return {name: p.pid for name, p in procs.items() if p is not None and p.poll() is None}

    def worker_jobs_total(self) -> dict[str, float]:
        """safespot_worker_jobs_total by outcome, from the worker's /metrics."""
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"http://127.0.0.1:{self.worker_metrics_port}/metrics", timeout=5).text
        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "safespot_worker_jobs_total":
                    outcome = sample.labels["outcome"]
                    totals[outcome] = totals.get(outcome, 0.0) + sample.value
        return totals

    def __enter__(self) -> ServiceStack:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in (self.api_proc, self.worker_proc, self.redis_proc):
            _stop(proc)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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
    if len(series) < 3:
        return None
    n = len(series)
    mean_t = sum(t for t, _ in series) / n
    mean_v = sum(v for _, v in series) / n
    var = sum((t - mean_t) ** 2 for t, _ in series)
    if var == 0:
        return None
    return round(60 * sum((t - mean_t) * (v - mean_v) for t, v in series) / var, 3)


class MemorySampler:
    """RSS of the stack's processes every `every_s` seconds, in a thread."""

    def __init__(self, stack: ServiceStack, every_s: float) -> None:
        self.stack, self.every_s = stack, every_s
        self.t0 = time.monotonic()
        self.series: dict[str, list[tuple[float, float]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while True:
            clock = round(time.monotonic() - self.t0, 2)
            for name, pid in self.stack.pids().items():
                value = rss_mib(pid)
                if value is not None:
                    self.series.setdefault(name, []).append((clock, round(value, 2)))
            if self._stop.wait(self.every_s):
                return

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def summary(self, warmup_fraction: float = 0.25) -> dict[str, Any]:
        """Per process: start/end/max MiB, the slope after warm-up, and the samples."""
        out: dict[str, Any] = {}
        for name, series in self.series.items():
            if not series:
                continue
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


def _submit(client: Any, data: bytes, preset: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    response = client.post("/v1/filter", headers={"Authorization": f"Bearer {BENCH_KEY}"},
                           data={"preset": preset}, files={"image": ("photo.png", data, "image/png")})
    try:
        body = response.json()
    except ValueError:
        body = {}
    return response.status_code, body, dict(response.headers)


def _poll(client: Any, ledger: Ledger, job_ids: list[str]) -> None:
    for job_id in job_ids:
        try:
            response = client.get(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {BENCH_KEY}"})
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


def _drive(stack: ServiceStack, ledger: Ledger, uploads: list[bytes], clients: int, preset: str,
           until: float | None, per_client: int | None) -> None:
    """`clients` threads submitting back to back (a 429 waits its Retry-After, at
    most 0.5 s) until the clock passes `until` or each sent `per_client`."""
    import httpx

    def client_loop(index: int) -> None:
        sent = 0
        with httpx.Client(base_url=stack.api_url, timeout=120) as client:
            while (until is None or time.monotonic() < until) and (per_client is None or sent < per_client):
                data = uploads[(index + sent * clients) % len(uploads)]
                started = time.monotonic()
                try:
                    status, body, headers = _submit(client, data, preset)
                except Exception as e:
                    with ledger.lock:
                        ledger.errors[f"submit:{type(e).__name__}"] += 1
                    time.sleep(0.2)
                    continue
                with ledger.lock:
                    ledger.answers[status] += 1
                    if status in (200, 202):
                        ledger.accepted[body["job_id"]] = started
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


def _poller(stack: ServiceStack, ledger: Ledger, stop: threading.Event, interval_s: float = 0.25,
            per_round: int = 8) -> threading.Thread:
    """Follow the accepted jobs, oldest first, `per_round` of them every `interval_s`.

    Bounded on purpose: polling every outstanding job would load the API (and
    steal CPU from the worker on a shared machine).  Latencies are taken from the
    jobs' own timestamps, so the polling rate only affects `observed_latency_s`."""
    import httpx

    def loop() -> None:
        with httpx.Client(base_url=stack.api_url, timeout=30) as client:
            while not stop.is_set():
                _poll(client, ledger, ledger.outstanding()[:per_round])
                stop.wait(interval_s)

    thread = threading.Thread(target=loop, name="poller", daemon=True)
    thread.start()
    return thread


def _latencies(ledger: Ledger, ids: list[str] | None = None) -> list[float]:
    """Server-side end-to-end latency (submission accepted -> job ended) of finished jobs."""
    picked = ledger.ended if ids is None else {j: ledger.ended[j] for j in ids if j in ledger.ended}
    return [v["ended_at"] - v["created_at"] for v in picked.values()
            if v.get("status") == "finished" and v.get("ended_at") and v.get("created_at")]


# --------------------------------------------------------------------- soak
def run_soak(duration_s: float, clients: int, redis_url: str | None, model: str, out: dict[str, Any],
             *, image_size: tuple[int, int] = (64, 48), preset: str = "standard", max_queue: int = 32,
             max_batch: int = 64, threads: int = 1, sample_every_s: float = 2.0,
             drain_timeout_s: float = 180.0) -> dict[str, Any]:
    """Drive the service at saturation for `duration_s` seconds and account for every job.

    `clients` threads submit real photos (random `image_size` crops) back to
    back; the queue is bounded at `max_queue`, so at saturation part of the
    submissions get 429 (counted, retried after Retry-After capped at 0.5 s).
    A poller follows every accepted job until it ends; after the load stops,
    the run drains for at most `drain_timeout_s`.

    `redis_url=None` starts a private redis-server (nothing persisted); with
    a URL, that Redis is used as it is (its active checkpoint is served).
    `model`: the default model the worker loads (a shipped name or a
    .safetensors path).  Returns (and fills `out` with) a JSON-able dict:
    submissions and answers by status, accepted / finished / failed / lost /
    duplicated counts, latency percentiles (server side: accepted -> ended;
    and as the client observed it), throughput, and RSS over time with its
    slope per process (worker, api, redis).
    """
    out.update(kind="soak", duration_s=duration_s, clients=clients, model=model, preset=preset,
               image_size=list(image_size), max_queue=max_queue, max_batch=max_batch, threads=threads)
    uploads = photo_uploads(max(32, clients * 4), image_size)
    ledger = Ledger()
    with ServiceStack(redis_url, model, max_batch=max_batch, max_queue=max_queue, threads=threads) as stack:
        stack.start_redis()
        stack.start_worker()
        stack.start_api()
        stack.wait_ready()
        stop_polling = threading.Event()
        poller = _poller(stack, ledger, stop_polling)
        with MemorySampler(stack, sample_every_s) as memory:
            started, started_wall = time.monotonic(), time.time()
            _drive(stack, ledger, uploads, clients, preset, until=started + duration_s, per_client=None)
            load_ended, load_ended_wall = time.monotonic(), time.time()
            with contextlib.suppress(TimeoutError):
                _wait(lambda: not ledger.outstanding(), drain_timeout_s, "the accepted jobs to end")
            drained = time.monotonic()
        stop_polling.set()
        poller.join(timeout=30)
        worker_totals = stack.worker_jobs_total()
        worker_alive = stack.worker_proc is not None and stack.worker_proc.poll() is None

    statuses = Counter(v["status"] for v in ledger.ended.values())
    finished_in_window = sum(1 for v in ledger.ended.values() if v["status"] == "finished"
                             and started_wall <= (v.get("ended_at") or 0) <= load_ended_wall)
    finished = statuses.get("finished", 0)
    out.update({
        "submissions": sum(ledger.answers.values()) + sum(ledger.errors.values()),
        "answers_by_status": {str(k): v for k, v in sorted(ledger.answers.items())},
        "client_errors": dict(ledger.errors),
        "accepted": len(ledger.accepted),
        "rejected_429": ledger.answers.get(429, 0),
        "completed": finished,
        "failed": statuses.get("failed", 0),
        "failed_codes": dict(Counter((v.get("error") or {}).get("code", "?") for v in ledger.ended.values()
                                     if v["status"] == "failed")),
        "lost": len(ledger.accepted) - sum(statuses.get(s, 0) for s in ("finished", "failed")),
        "lost_detail": {"never_ended": len(ledger.outstanding()), "404_after_accept": statuses.get("lost", 0),
                        "expired": statuses.get("expired", 0), "canceled": statuses.get("canceled", 0)},
        "duplicated": max(0, int(worker_totals.get("finished", 0)) - finished) + ledger.seen_twice,
        "worker_jobs_total": worker_totals,
        "worker_alive_at_end": worker_alive,
        "latency_s": percentiles(_latencies(ledger)),
        "observed_latency_s": percentiles([ledger.observed_s[j] for j, v in ledger.ended.items()
                                           if v["status"] == "finished"]),
        "throughput_images_per_s": round(finished_in_window / max(1e-9, load_ended - started), 3),
        "drain_s": round(drained - load_ended, 2),
        "memory": memory.summary(),
    })
    return out


# ---------------------------------------------------------------------- e2e
def _library_rate(model: str, uploads: list[bytes], preset: str, max_batch: int, threads: int,
                  repeats: int = 3) -> dict[str, Any]:
    """The library on the same images: FilterProcessor (the worker's search core), in this
    process; the median of `repeats` runs."""
    import torch

    from models import load_checkpoint
    from service.images import decode_upload
    from worker.processor import FilterProcessor, select_device

    torch.set_num_threads(threads)
    loaded = load_checkpoint(model, select_device())  # the device the worker picks (CUDA when present)
    pngs = [decode_upload(data, max_pixels=40_000_000) for data in uploads]  # what the API stores
    processor = FilterProcessor(loaded, "bench", max_batch=max_batch)

    def request(i: int, info: Any) -> Any:
        return {"job_id": f"lib{i}", "preset": preset, "norm": "linf", "eps": 8 / 255, "delta": 8 / 255,
                "reencode": None, "webhook_url": None, "submitted_at": time.time(), "image": info}

    processor.add("warmup", request(-1, pngs[0].info), pngs[0].png)  # one pass to warm up
    processor.drain()
    runs = []
    for _ in range(max(1, repeats)):  # a shared machine is noisy: report every run and the median
        started = time.perf_counter()
        for i, decoded in enumerate(pngs):
            processor.add(f"lib{i}", request(i, decoded.info), decoded.png)
        done = processor.drain()
        runs.append((time.perf_counter() - started, len(done), sum(1 for d in done if d.error is not None)))
    seconds, images, errors = sorted(runs)[len(runs) // 2]
    return {"images": images, "seconds": round(seconds, 3), "images_per_s": round(images / seconds, 3),
            "max_batch": max_batch, "errors": errors,
            "runs_images_per_s": [round(n / t, 3) for t, n, _ in runs]}


def _service_rate(stack: ServiceStack, uploads: list[bytes], clients: int, preset: str) -> dict[str, Any]:
    """All `uploads` through the API by `clients` concurrent clients; the clock runs
    from the first submission to the last job's end."""
    ledger = Ledger()
    stop_polling = threading.Event()
    poller = _poller(stack, ledger, stop_polling)
    per_client = math.ceil(len(uploads) / clients)
    started = time.monotonic()
    _drive(stack, ledger, uploads, clients, preset, until=None, per_client=per_client)
    _wait(lambda: not ledger.outstanding(), 900, "the service to filter every image")
    stop_polling.set()
    poller.join(timeout=30)
    ends = [v["ended_at"] for v in ledger.ended.values() if v.get("ended_at")]
    starts = [v["created_at"] for v in ledger.ended.values() if v.get("created_at")]
    seconds = max(ends) - min(starts) if ends and starts else time.monotonic() - started
    finished = sum(1 for v in ledger.ended.values() if v["status"] == "finished")
    return {"images": finished, "submitted": len(ledger.accepted), "seconds": round(seconds, 3),
            "images_per_s": round(finished / seconds, 3), "max_batch": stack.max_batch,
            "rejected_429": ledger.answers.get(429, 0),
            "latency_s": percentiles(_latencies(ledger)),
            "observed_latency_s": percentiles(list(ledger.observed_s.values()))}


def run_e2e(images: int, clients: int, redis_url: str | None, model: str, out: dict[str, Any],
            *, image_size: tuple[int, int] = (64, 48), preset: str = "standard", threads: int = 1,
            batch_sizes: tuple[int, int] = (64, 1), library_repeats: int = 3) -> dict[str, Any]:
    """End-to-end images/s under `clients` concurrent clients versus the library.

    The same `images` photos (random `image_size` crops) go (1) straight into
    a FilterProcessor in this process (max_batch = batch_sizes[0], `threads`
    torch threads: the library as the worker runs it, no HTTP, no queue), and
    (2) through the API to one worker with max_batch = batch_sizes[0], then
    (3) with max_batch = batch_sizes[1] (a fresh worker, same Redis and API).

    Returns (and fills `out` with) ``e2e_vs_library`` = (2) / (1) images per
    second (target >= 0.9; (1) is the median of `library_repeats` runs), ``batching_gain`` = (2) / (3), and the details of
    each run: images/s, seconds, and p50/p95/p99 latency (server side:
    accepted -> ended; and client-observed).
    """
    out.update(kind="e2e", images=images, clients=clients, model=model, preset=preset,
               image_size=list(image_size), threads=threads)
    uploads = photo_uploads(images, image_size, seed=1)
    out["library"] = _library_rate(model, uploads, preset, batch_sizes[0], threads, library_repeats)
    with ServiceStack(redis_url, model, max_queue=images + 16, threads=threads) as stack:
        stack.start_redis()
        stack.start_api()
        for batch in batch_sizes:
            stack.start_worker(max_batch=batch)
            stack.wait_ready()
            _service_rate(stack, uploads[:2], 1, preset)  # warm-up: model and code paths
            out[f"service_batch_{batch}"] = _service_rate(stack, uploads, clients, preset)
            stack.stop_worker()
    big, small = (out[f"service_batch_{b}"]["images_per_s"] for b in batch_sizes)
    out["e2e_vs_library"] = round(big / out["library"]["images_per_s"], 3)
    out["batching_gain"] = round(big / small, 3) if small else None
    return out


# ---------------------------------------------------------------------- CLI
def _size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(w), int(h)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m safespot_cli.bench_service", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="kind", required=True)
    for name in ("soak", "e2e"):
        p = sub.add_parser(name)
        p.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients (default 8)")
        p.add_argument("--redis-url", default=None, help="use this Redis (default: start a private one)")
        p.add_argument("--model", default="default", help="shipped model name or .safetensors path")
        p.add_argument("--image-size", type=_size, default=(64, 48), help="WxH of the uploads (64x48)")
        p.add_argument("--preset", default="standard", help="search preset (default standard)")
        p.add_argument("--threads", type=int, default=1, help="torch threads of the worker/library")
        p.add_argument("--json", type=Path, default=None, help="write the figures here")
    soak, e2e = sub.choices["soak"], sub.choices["e2e"]
    soak.add_argument("--duration", type=float, default=300.0, help="seconds at saturation (300)")
    soak.add_argument("--max-queue", type=int, default=32, help="the API's queue bound (32)")
    soak.add_argument("--max-batch", type=int, default=64, help="the worker's batch (64)")
    soak.add_argument("--sample-every", type=float, default=2.0, help="RSS sampling period, s")
    e2e.add_argument("--images", type=int, default=64, help="images per run (64)")
    args = parser.parse_args(argv)

    out: dict[str, Any] = {}
    common = {"image_size": args.image_size, "preset": args.preset, "threads": args.threads}
    if args.kind == "soak":
        run_soak(args.duration, args.clients, args.redis_url, args.model, out, max_queue=args.max_queue,
                 max_batch=args.max_batch, sample_every_s=args.sample_every, **common)
    else:
        run_e2e(args.images, args.clients, args.redis_url, args.model, out, **common)
    text = json.dumps(out, indent=1)
    if args.json:
        args.json.write_text(text)
    summary = {k: v for k, v in out.items() if k != "memory"}
    if "memory" in out:
        summary["memory"] = {k: {m: v[m] for m in v if m != "samples"} for k, v in out["memory"].items()}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
