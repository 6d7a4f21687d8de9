"""The checkpoint registry of the single-process mode: records in memory, persisted to
``CHECKPOINT_DIR/registry.json`` (so uploads and the active choice survive a restart).

The Redis deployment keeps the same records in CHECKPOINTS_KEY instead; the
rules are the same: one active record (the shipped default while nothing
else is), only a ``ready`` record can be activated, the active and the
shipped records cannot be deleted.  Thread-safe.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from worker.checkpoints import SHIPPED_ID, json_safe, shipped_record
from worker.errors import CheckpointNotFoundError, CheckpointStateError, ConflictError
from worker.protocol import CheckpointRecord

REGISTRY_FILE = "registry.json"


class CheckpointRegistry:
    def __init__(self, directory: Path, default_model: str) -> None:
        self.directory = directory
        self.default_model = default_model
        self.activation = 0  # bumped on every activation: the worker reloads when it moves
        self._lock = threading.RLock()
        self._records: dict[str, dict[str, Any]] = {}
        self._active_id = SHIPPED_ID

    def load(self) -> None:
        """Read the saved registry (if any) and add the shipped model's record."""
        path = self.directory / REGISTRY_FILE
        saved: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
        records = {str(r["id"]): dict(r) for r in saved.get("records", []) if r.get("id")}
        shipped = shipped_record(self.default_model)
        if shipped is not None:
            records[SHIPPED_ID] = dict(shipped)
        active = str(saved.get("active") or SHIPPED_ID)
        if active not in records:
            active = SHIPPED_ID
        for record in records.values():  # exactly one active record
            if record["id"] == active:
                record["status"] = "active"
            elif record.get("status") == "active":
                record["status"] = "ready"
        with self._lock:
            self._records, self._active_id = records, active

    # ---------------------------------------------------------------- reads
    def records(self) -> list[CheckpointRecord]:
        with self._lock:
            records = [dict(r) for r in self._records.values()]
        return cast(list[CheckpointRecord], sorted(records, key=lambda r: r.get("uploaded_at") or 0.0))

    def get(self, checkpoint_id: str) -> dict[str, Any] | None:
        with self._lock:
            record = self._records.get(checkpoint_id)
            return None if record is None else dict(record)

    def active(self) -> tuple[str, dict[str, Any] | None, int]:
        """(active id, a copy of its record, activation count) read together."""
        with self._lock:
            record = self._records.get(self._active_id)
            return self._active_id, None if record is None else dict(record), self.activation

    def ids_with_status(self, status: str) -> list[str]:
        with self._lock:
            return [i for i, r in self._records.items() if r.get("status") == status]

    # --------------------------------------------------------------- writes
    def add(self, record: Mapping[str, Any]) -> None:
        """A new upload, to be vetted."""
        checkpoint_id = str(record["id"])
        with self._lock:
            if checkpoint_id in self._records:
                raise ConflictError(f"checkpoint {checkpoint_id} exists")
            self._records[checkpoint_id] = {**record, "status": "validating"}
            self._save()

    def put(self, record: Mapping[str, Any], only_if_present: bool = False) -> bool:
        """Store a record (a training result, a vetting verdict); False when ``only_if_present``
        and it was deleted meanwhile."""
        checkpoint_id = str(record["id"])
        with self._lock:
            if only_if_present and checkpoint_id not in self._records:
                return False
            self._records[checkpoint_id] = dict(record)
            self._save()
            return True

    def activate(self, checkpoint_id: str) -> CheckpointRecord:
        with self._lock:
            record = self._existing(checkpoint_id)
            if record.get("status") not in ("ready", "active"):
                raise CheckpointStateError(f"checkpoint {checkpoint_id} is {record.get('status')}, not ready")
            previous = self._records.get(self._active_id)
            if previous is not None and previous is not record:
                previous["status"] = "ready"
            record["status"] = "active"
            self._active_id = checkpoint_id
            self.activation += 1
            self._save()
            return cast(CheckpointRecord, dict(record))

    def delete(self, checkpoint_id: str) -> dict[str, Any]:
        """Remove a record (not the active one, not the shipped one); returns it."""
        with self._lock:
            record = self._existing(checkpoint_id)
            if checkpoint_id == self._active_id:
                raise CheckpointStateError("the active checkpoint cannot be deleted; activate another first")
            if record.get("source") == "shipped":
                raise CheckpointStateError("the shipped model cannot be deleted")
            del self._records[checkpoint_id]
            self._save()
            return record

    def _existing(self, checkpoint_id: str) -> dict[str, Any]:
        record = self._records.get(checkpoint_id)
        if record is None:
            raise CheckpointNotFoundError(f"no checkpoint {checkpoint_id!r}")
        return record

    def _save(self) -> None:
        """Uploaded/trained records and the active id, written atomically (lock held)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        body = {"active": self._active_id,
                "records": [json_safe(r) for r in self._records.values() if r.get("source") != "shipped"]}
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{REGISTRY_FILE}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(body, f, indent=1)
        os.replace(tmp, self.directory / REGISTRY_FILE)
