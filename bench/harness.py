"""The harness of the service benchmarks (bench_soak, bench_e2e): the real
service as separate processes, real photos as uploads, HTTP clients that
account for every job, and the statistics both benchmarks report.

- :class:`ServiceStack`: Redis (a private ``redis-server`` unless a URL is
  given), one ``python -m worker.rq_worker`` and one ``safespot serve`` (the
  API only, Redis mode); started, health-checked and stopped as processes.
- :func:`photo_uploads`: random crops of the repository's test photographs,
  encoded as the uploads clients send.
- :class:`Ledger`, :func:`drive_uploads`, :func:`start_poller`: concurrent
  clients that submit and a poller that follows each accepted job to its end.
- :func:`percentiles`, :func:`slope_per_min`, :class:`MemorySampler`:
  latency percentiles and RSS over time with its slope (steady or a leak).
"""

from __future__ import annotations

import io
import math
import os
import random
import shutil
import socket
import statistics
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
        wait_until(lambda: _port_open(port), 10, "redis-server to listen")

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

        wait_until(up, 60, "the API to answer")

    def wait_ready(self, timeout: float = 300) -> None:
        import httpx

        def ready() -> bool:
            if self.worker_proc is not None and self.worker_proc.poll() is not None:
                raise RuntimeError(f"the worker exited: {(self.workdir / 'worker.log').read_text()[-2000:]}")
            return httpx.get(f"{self.api_url}/readyz", timeout=5).status_code == 200

        wait_until(ready, timeout, "a worker with a loaded model")

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


def wait_until(condition: Any, timeout: float, what: str) -> None:
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
    if len(series) < 3 or len({t for t, _ in series}) < 2:
        return None
    times, values = zip(*series, strict=True)
    return round(60 * statistics.linear_regression(times, values).slope, 3)


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


def drive_uploads(stack: ServiceStack, ledger: Ledger, uploads: list[bytes], clients: int, preset: str,
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


def start_poller(stack: ServiceStack, ledger: Ledger, stop: threading.Event, interval_s: float = 0.25,
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


def server_latencies(ledger: Ledger, ids: list[str] | None = None) -> list[float]:
    """Server-side end-to-end latency (submission accepted -> job ended) of finished jobs."""
    picked = ledger.ended if ids is None else {j: ledger.ended[j] for j in ids if j in ledger.ended}
    return [v["ended_at"] - v["created_at"] for v in picked.values()
            if v.get("status") == "finished" and v.get("ended_at") and v.get("created_at")]
