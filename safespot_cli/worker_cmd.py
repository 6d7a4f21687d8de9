"""`safespot worker`: a batching RQ worker (and, with --queues safespot-train, the trainer sidecar)."""

from __future__ import annotations

import argparse
from typing import Any

from safespot_cli import common
from safespot_cli.errors import UsageError, usage_errors

HELP = """Process queued jobs from Redis (SAFESPOT_REDIS_URL).  The worker loads the active
checkpoint once (the shipped default model when none is active), searches the
images of many filter jobs together (continuous batching), and reloads between
batches when an admin activates another checkpoint.  Settings come from
SAFESPOT_* variables; the options below override them.

examples:
  SAFESPOT_REDIS_URL=redis://localhost:6379/0 safespot worker
  safespot worker --max-batch 32 --max-wait-ms 20 --metrics-port 9101
  safespot worker --queues safespot-train          the trainer sidecar
  safespot worker --burst                          exit once the queues are empty"""


def register(sub: Any) -> None:
    p = common.add_command(sub, "worker", "process queued filter, vetting and training jobs", HELP, run)
    p.add_argument("--queues", nargs="+", default=None, metavar="QUEUE",
                   help="queues to serve, in priority order (default: $SAFESPOT_QUEUES or "
                        "safespot-filter safespot-admin); commas work too")
    p.add_argument("--max-batch", type=int, default=None, help="images searched together (default 64)")
    p.add_argument("--max-wait-ms", type=int, default=None,
                   help="after the first job, wait this long for more to batch with it (default 50)")
    p.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    p.add_argument("--name", default=None, help="worker name (default safespot-<host>-<pid>)")
    common.add_options(p, "--device", "--threads")
    p.add_argument("--metrics-port", type=int, default=None, help="Prometheus port (default 9100; 0: off)")


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from worker.settings import WorkerSettings

    overrides: dict[str, Any] = {}
    if args.queues:
        overrides["queues"] = [q.strip() for item in args.queues for q in item.split(",") if q.strip()]
    for option in ("max_batch", "max_wait_ms", "name", "device", "threads", "metrics_port"):
        if getattr(args, option) is not None:
            overrides[option] = getattr(args, option)
    with usage_errors(ValidationError):
        settings = WorkerSettings(**overrides)
    if not settings.redis_url:
        raise UsageError("set SAFESPOT_REDIS_URL (without Redis, `safespot serve` runs its own worker)")
    from worker.rq_worker import run_worker

    return run_worker(settings, burst=args.burst)
