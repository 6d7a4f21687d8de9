"""A worker's heartbeats, from a background thread so long search passes never delay them.

Every ``period_s`` seconds:

- the worker's WorkerStatus JSON goes into WORKERS_KEY and its alive key is
  refreshed with a TTL of WORKER_ALIVE_TTL_S (the API's /readyz reads both);
- every in-flight RQ execution (batched filter jobs, and the job a plain
  SimpleWorker path is performing) gets RQ's heartbeat, which pushes its
  expiry in the StartedJobRegistry ``job_heartbeat_ttl_s`` ahead.  When the
  process dies the heartbeats stop, the entries expire, and RQ's registry
  cleanup retries or fails the jobs (never "started" forever).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import Any

from worker.protocol import (
    WORKER_ALIVE_TTL_S,
    WORKER_HEARTBEAT_S,
    WORKERS_KEY,
    WorkerStatus,
    worker_alive_key,
)

log = logging.getLogger("safespot.worker.liveness")


class Liveness:
    """Start with :meth:`start`; :meth:`stop` removes the worker's status row."""

    def __init__(self, worker: Any, period_s: float) -> None:
        self.worker = worker  # a worker.rq_worker.BatchingWorker
        self.period_s = min(float(WORKER_HEARTBEAT_S), period_s)
        self.started_at = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.beat()
        self._thread = threading.Thread(target=self._run, name="safespot-liveness", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        name = self.worker.name
        try:
            with self.worker.connection.pipeline(transaction=False) as pipe:
                pipe.hdel(WORKERS_KEY, name).delete(worker_alive_key(name)).execute()
        except Exception:
            log.exception("could not clear the worker status")

    def status(self) -> WorkerStatus:
        w = self.worker
        processor = w.processor
        return {"name": w.name, "queues": w.queue_names(),
                "model": None if processor is None else processor.model_ref,
                "device": str(w.models.device), "pid": os.getpid(), "host": socket.gethostname(),
                "started_at": round(self.started_at, 3), "last_seen": round(time.time(), 3),
                "busy": w.busy}

    def beat(self) -> None:
        """The worker's row in WORKERS_KEY, its alive key, and RQ's execution heartbeats."""
        w, status = self.worker, self.status()
        with w.connection.pipeline(transaction=False) as pipe:
            pipe.hset(WORKERS_KEY, w.name, json.dumps(status))
            pipe.set(worker_alive_key(w.name), "1", ex=WORKER_ALIVE_TTL_S).execute()
        w.heartbeat_executions()

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.beat()
            except Exception:  # Redis away for a moment: try again next period
                log.exception("heartbeat failed")
