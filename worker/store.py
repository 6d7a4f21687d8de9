"""The Redis side of the contract (keys named in worker.protocol), as small functions.

Everything here takes a redis-py client; values are JSON (records, worker
status) or raw bytes (PNG images).
"""

from __future__ import annotations

import json
from typing import Any

from worker.checkpoints import SHIPPED_ID, json_safe
from worker.protocol import (
    ACTIVE_CHECKPOINT_KEY,
    ACTIVE_VERSION_KEY,
    CHECKPOINTS_KEY,
    WORKER_ALIVE_TTL_S,
    WORKERS_KEY,
    CheckpointRecord,
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


def active_state(conn: Any) -> tuple[int, str | None]:
    """(activation version, active checkpoint id or None)."""
    with conn.pipeline(transaction=False) as pipe:
        pipe.get(ACTIVE_VERSION_KEY)
        pipe.get(ACTIVE_CHECKPOINT_KEY)
        version, active = pipe.execute()
    return int(version or 0), (active.decode() if isinstance(active, bytes) else active) or None


def read_record(conn: Any, checkpoint_id: str) -> CheckpointRecord | None:
    raw = conn.hget(CHECKPOINTS_KEY, checkpoint_id)
    return None if raw is None else json.loads(raw)


def write_record(conn: Any, record: CheckpointRecord) -> None:
    conn.hset(CHECKPOINTS_KEY, str(record["id"]), json.dumps(json_safe(dict(record))))


def ensure_shipped_record(conn: Any, record: CheckpointRecord | None) -> None:
    """Register the shipped model once (HSETNX), marked active while nothing else is."""
    if record is None:
        return
    _, active = active_state(conn)
    entry = dict(record, status="active" if active in (None, SHIPPED_ID) else "ready")
    conn.hsetnx(CHECKPOINTS_KEY, SHIPPED_ID, json.dumps(json_safe(entry)))


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
