"""Soak benchmark: the service at saturation for a while, every job accounted
for (lost, duplicated, failed), latency percentiles and memory over time.
Run it through ``python -m bench soak``.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from typing import Any

from bench.harness import (
    BenchService,
    Ledger,
    MemorySampler,
    drive_uploads,
    percentiles,
    photo_uploads,
    polling,
    server_latencies,
)
from bench.stack import wait_until


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
    with BenchService(redis_url, model, threads=threads, max_batch=max_batch) as service:
        service.start_api(max_queue)
        service.start_worker()
        memory = MemorySampler(service, sample_every_s)
        with polling(service, ledger), memory:
            started, started_wall = time.monotonic(), time.time()
            drive_uploads(service, ledger, uploads, clients, preset, until=started + duration_s, per_client=None)
            load_ended, load_ended_wall = time.monotonic(), time.time()
            with contextlib.suppress(TimeoutError):
                wait_until(lambda: not ledger.outstanding(), drain_timeout_s, "the accepted jobs to end")
            drained = time.monotonic()
        worker_totals = service.worker_jobs_total()
        worker_alive = service.stack.procs["worker"].poll() is None

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
        "latency_s": percentiles(server_latencies(ledger)),
        "observed_latency_s": percentiles([ledger.observed_s[j] for j, v in ledger.ended.items()
                                           if v["status"] == "finished"]),
        "throughput_images_per_s": round(finished_in_window / max(1e-9, load_ended - started), 3),
        "drain_s": round(drained - load_ended, 2),
        "memory": memory.summary(),
    })
    return out
