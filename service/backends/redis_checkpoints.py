"""The checkpoint registry in Redis: records in the hash CHECKPOINTS_KEY, the
active id in ACTIVE_CHECKPOINT_KEY, and ACTIVE_VERSION_KEY bumped on every
activation (workers poll it between batches and reload when it moves).

Changes use WATCH/MULTI: a worker finishing a vetting, or another admin,
may write the same hash at the same moment; a lost race simply re-reads.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import redis

from service.errors import Conflict, NotFound
from worker.protocol import (
    ACTIVE_CHECKPOINT_KEY,
    ACTIVE_VERSION_KEY,
    CHECKPOINTS_KEY,
    CheckpointRecord,
)

logger = logging.getLogger("safespot.service")


def list_records(connection: redis.Redis) -> list[CheckpointRecord]:
    records = [json.loads(raw) for raw in connection.hvals(CHECKPOINTS_KEY)]
    return sorted(records, key=lambda r: (r.get("uploaded_at") or 0, r.get("id", "")))


def activate(connection: redis.Redis, checkpoint_id: str) -> CheckpointRecord:
    """Make a `ready` checkpoint the active one (the previous one returns to `ready`)."""
    with connection.pipeline() as pipe:
        while True:
            try:
                pipe.watch(CHECKPOINTS_KEY, ACTIVE_CHECKPOINT_KEY)
                record = _record(pipe, checkpoint_id)
                if record.get("status") not in ("ready", "active"):
                    raise Conflict(f"checkpoint {checkpoint_id} is {record.get('status')}, "
                                   "only a ready checkpoint can be activated")
                # Demote every other record marked active (not only the one the active key
                # names): a worker registers the shipped default as active without the key.
                demoted = [r for r in (json.loads(raw) for raw in pipe.hvals(CHECKPOINTS_KEY))
                           if r.get("status") == "active" and r.get("id") != checkpoint_id]
                pipe.multi()
                for previous_record in demoted:
                    previous_record["status"] = "ready"
                    pipe.hset(CHECKPOINTS_KEY, previous_record["id"], json.dumps(previous_record))
                record["status"] = "active"
                pipe.hset(CHECKPOINTS_KEY, checkpoint_id, json.dumps(record))
                pipe.set(ACTIVE_CHECKPOINT_KEY, checkpoint_id)
                pipe.incr(ACTIVE_VERSION_KEY)
                pipe.execute()
                logger.info("checkpoint %s activated", checkpoint_id)
                return record
            except redis.WatchError:
                continue


def delete(connection: redis.Redis, checkpoint_id: str, checkpoint_dir: Path) -> None:
    """Remove a record that is not active, then its file."""
    with connection.pipeline() as pipe:
        while True:
            try:
                pipe.watch(CHECKPOINTS_KEY, ACTIVE_CHECKPOINT_KEY)
                record = _record(pipe, checkpoint_id)
                active = pipe.get(ACTIVE_CHECKPOINT_KEY)
                if record.get("status") == "active" or (active and _text(active) == checkpoint_id):
                    raise Conflict(f"checkpoint {checkpoint_id} is active; activate another first")
                pipe.multi()
                pipe.hdel(CHECKPOINTS_KEY, checkpoint_id)
                pipe.execute()
                break
            except redis.WatchError:
                continue
    _remove_file(record, checkpoint_dir)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _record(pipe: Any, checkpoint_id: str, missing_ok: bool = False) -> Any:
    raw = pipe.hget(CHECKPOINTS_KEY, checkpoint_id)
    if raw is None:
        if missing_ok:
            return None
        raise NotFound(f"no checkpoint {checkpoint_id}")
    return json.loads(raw)


def _remove_file(record: CheckpointRecord, checkpoint_dir: Path) -> None:
    """Delete the checkpoint's file, only ever directly inside the checkpoint
    directory (a record's `path` is data, not to be trusted as a path)."""
    root = checkpoint_dir.resolve()
    name = Path(record.get("path") or "").name
    if not name or record.get("source") == "shipped":
        return
    target = (root / name).resolve()
    if target.parent == root:
        target.unlink(missing_ok=True)
