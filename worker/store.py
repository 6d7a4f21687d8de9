"""The Redis side of the contract (keys named in worker.protocol), as small functions.

Everything here takes a redis-py client; values are JSON (worker status) or
raw bytes (PNG images).  The checkpoint registry's keys belong to
:mod:`worker.registry_stores`.
"""

from __future__ import annotations

import json
from typing import Any

from worker.protocol import (
    WORKER_ALIVE_TTL_S,
    WORKERS_KEY,
    WorkerStatus,
    result_image_key,
    upload_key,
    worker_alive_key,
)


def load_upload(conn: Any, job_id: str) -> bytes | None:
    return conn.get(upload_key(job_id))


def store_result_image(conn: Any, job_id: str, png: bytes, ttl_s: int | None) -> None:
    """The output PNG, expiring with the job's result (``ttl_s`` <= 0 or None: RQ's "never")."""
    key = result_image_key(job_id)
    if ttl_s is not None and ttl_s > 0:
        conn.set(key, png, ex=int(ttl_s))
    else:
        conn.set(key, png)


def write_worker_status(conn: Any, status: WorkerStatus) -> None:
    """The worker's row in WORKERS_KEY and its alive key (read by the API's /readyz)."""
    with conn.pipeline(transaction=False) as pipe:
        pipe.hset(WORKERS_KEY, status["name"], json.dumps(status))
        pipe.set(worker_alive_key(status["name"]), "1", ex=WORKER_ALIVE_TTL_S)
        pipe.execute()


def clear_worker_status(conn: Any, name: str) -> None:
    with conn.pipeline(transaction=False) as pipe:
        pipe.hdel(WORKERS_KEY, name)
        pipe.delete(worker_alive_key(name))
        pipe.execute()
