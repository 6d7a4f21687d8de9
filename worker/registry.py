"""The checkpoint registry's rules, written once (standard library only: the API imports it).

- A record is ``validating`` (not vetted yet), ``ready``, ``unvetted`` (no vetting
  set for its domain) or ``rejected``; a ``ready`` one can be activated, an
  ``unvetted`` one only with an admin's explicit override, which the record keeps
  (``override: {at, reason}``) and the log shows.  Ids are chosen by the server.
- Exactly one record is active, derived from one stored key (the shipped model
  while nothing was ever activated); records never store ``active`` themselves.
- The active record and the shipped one cannot be deleted.

Every change reads a :class:`Snapshot`, decides a :class:`Change` and applies it
atomically (:mod:`worker.registry_stores`: Redis under ``WATCH``, or a locked JSON
file), so concurrent admins and workers cannot break these rules.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

# Re-exported: the API sniffs uploads with them and may not import models/ itself.
from models.formats import looks_like_safetensors, looks_like_torch_save  # noqa: F401
from worker.errors import (
    CheckpointNotFoundError,
    CheckpointStateError,
    CheckpointUnvettedError,
    ConflictError,
)
from worker.protocol import CheckpointRecord

log = logging.getLogger("safespot.registry")

SHIPPED_ID = "default"  # record id of the shipped model
OVERRIDE_REASON = "activated without vetting"  # an override's reason when the admin gave none
# Ids the registry accepts on read: new ones are ckpt_<16 hex>; records written before the
# ids were unified (ckpt-<16 hex>, test fixtures, "default") keep working.
CHECKPOINT_ID = re.compile(r"^[A-Za-z0-9_.-]{1,80}$")


def new_checkpoint_id() -> str:
    """A server-chosen id (never derived from an uploaded file name)."""
    return "ckpt_" + secrets.token_hex(8)



def json_safe(value: Any) -> Any:
    """Replace non-finite floats by None (JSON has no NaN) and tuples by lists, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


@dataclass
class Snapshot:
    """What a store holds, read at one moment."""

    records: dict[str, dict[str, Any]]
    active_key: str | None  # the stored active id; None while nothing was ever activated
    version: int  # bumped on every activation: workers reload when it moves

    @property
    def active_id(self) -> str:
        return self.active_key or SHIPPED_ID


@dataclass
class Change:
    """What one decision writes; ``result`` is handed back to the caller."""

    put: list[Mapping[str, Any]] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    activate: str | None = None  # set the active id and bump the version
    result: Any = None


class RegistryStore(Protocol):
    def snapshot(self) -> Snapshot: ...
    def active_state(self) -> tuple[int, str | None]: ...  # (version, stored active id): cheap
    def change(self, decide: Callable[[Snapshot], Change]) -> Change: ...  # atomic; decide may raise


class CheckpointRegistry:
    """The rules over a store; ``directory`` holds the checkpoint files."""

    def __init__(self, store: RegistryStore, directory: Path) -> None:
        self.store = store
        self.directory = directory

    # ---------------------------------------------------------------- reads
    def records(self) -> list[CheckpointRecord]:
        snap = self.store.snapshot()
        ordered = sorted(snap.records.values(), key=lambda r: (r.get("uploaded_at") or 0.0, str(r["id"])))
        return [_view(r, snap.active_id) for r in ordered]

    def get(self, checkpoint_id: str) -> CheckpointRecord | None:
        snap = self.store.snapshot()
        record = snap.records.get(checkpoint_id)
        return None if record is None else _view(record, snap.active_id)

    def active_state(self) -> tuple[int, str]:
        """(activation version, active id)."""
        version, active = self.store.active_state()
        return version, active or SHIPPED_ID

    def ids_with_status(self, status: str) -> list[str]:
        return [str(r["id"]) for r in self.records() if r.get("status") == status]

    # --------------------------------------------------------------- writes
    def add(self, record: Mapping[str, Any]) -> None:
        """A new upload, to be vetted."""
        checkpoint_id = _checked_id(str(record.get("id") or ""))

        def decide(snap: Snapshot) -> Change:
            if checkpoint_id in snap.records:
                raise ConflictError(f"checkpoint {checkpoint_id} exists")
            return Change(put=[{**record, "status": "validating"}])

        self.store.change(decide)

    def put(self, record: Mapping[str, Any], only_if_present: bool = False) -> bool:
        """Store a record (a training result, a vetting verdict); False when ``only_if_present``
        and it was deleted meanwhile.  Never changes which record is active."""
        checkpoint_id = _checked_id(str(record.get("id") or ""))

        def decide(snap: Snapshot) -> Change:
            if only_if_present and checkpoint_id not in snap.records:
                return Change(result=False)
            return Change(put=[{**record, "status": _stored_status(record)}], result=True)

        return bool(self.store.change(decide).result)

    def register_shipped(self, record: Mapping[str, Any] | None) -> None:
        """The shipped model's record, describing its file as it is now (None: no file yet)."""
        if record is not None:
            self.put({**record, "id": SHIPPED_ID, "source": "shipped"})

    def activate(self, checkpoint_id: str, override: bool = False,
                 reason: str | None = None) -> CheckpointRecord:
        """Make a ready record the active one; activating the active one changes nothing.
        An unvetted record (no vetting set for its domain) needs ``override``, which is
        stored on it (``override: {at, reason}``) and logged as a warning."""
        def decide(snap: Snapshot) -> Change:
            record = _existing(snap, checkpoint_id)
            if checkpoint_id == snap.active_id:
                return Change(result=_view(record, snap.active_id))
            status = _stored_status(record)
            if status == "unvetted" and override:
                overridden = {**record, "override": {"at": round(time.time(), 3),
                                                     "reason": reason or OVERRIDE_REASON}}
                return Change(put=[overridden], activate=checkpoint_id,
                              result=_view(overridden, checkpoint_id))
            if status == "unvetted":
                raise CheckpointUnvettedError(
                    f"checkpoint {checkpoint_id} is unvetted ({_skipped(record)}); activating it "
                    "needs the admin's explicit override (POST .../activate?override=true)")
            if status != "ready":
                raise CheckpointStateError(
                    f"checkpoint {checkpoint_id} is {record.get('status')}; "
                    "only a ready (validated and vetted) checkpoint can be activated")
            return Change(activate=checkpoint_id, result=_view(record, checkpoint_id))

        activated = cast(CheckpointRecord, self.store.change(decide).result)
        if override and "override" in activated:
            log.warning("checkpoint %s activated WITHOUT VETTING by an admin's override: %s",
                        checkpoint_id, activated["override"]["reason"])
        return activated

    def delete(self, checkpoint_id: str) -> CheckpointRecord:
        """Remove a record (never the active one, never the shipped one), then its file."""
        def decide(snap: Snapshot) -> Change:
            record = _existing(snap, checkpoint_id)
            if checkpoint_id == snap.active_id:
                raise CheckpointStateError(
                    f"checkpoint {checkpoint_id} is active; activate another one first")
            if checkpoint_id == SHIPPED_ID or record.get("source") == "shipped":
                raise CheckpointStateError("the shipped model cannot be deleted")
            return Change(delete=[checkpoint_id], result=_view(record, snap.active_id))

        record = cast(CheckpointRecord, self.store.change(decide).result)
        remove_file(record, self.directory)
        return record


def remove_file(record: Mapping[str, Any], directory: Path) -> None:
    """Delete a record's file, only ever directly inside the checkpoint directory
    (a record's ``path`` is data, not to be trusted as a path)."""
    name = Path(str(record.get("path") or "")).name
    if not name or record.get("source") == "shipped":
        return
    root = directory.resolve()
    target = (root / name).resolve()
    if target.parent == root:
        target.unlink(missing_ok=True)


def _checked_id(checkpoint_id: str) -> str:
    if not CHECKPOINT_ID.match(checkpoint_id):
        raise ConflictError(f"invalid checkpoint id {checkpoint_id[:80]!r}")
    return checkpoint_id


def _existing(snap: Snapshot, checkpoint_id: str) -> dict[str, Any]:
    record = snap.records.get(checkpoint_id)
    if record is None:
        raise CheckpointNotFoundError(f"no checkpoint {checkpoint_id[:80]!r}")
    return record


def _skipped(record: Mapping[str, Any]) -> str:
    vetting = record.get("vetting")
    return str(vetting.get("skipped") or "not vetted") if isinstance(vetting, dict) else "not vetted"


def _stored_status(record: Mapping[str, Any]) -> str:
    """Records written before the active status was derived may say "active": they are ready.
    Records vetted before the unvetted status existed say "ready" even when their vetting was
    skipped: they are unvetted."""
    status = str(record.get("status") or "validating")
    status = "ready" if status == "active" else status
    vetting = record.get("vetting")
    if status == "ready" and isinstance(vetting, dict) and vetting.get("skipped"):
        return "unvetted"
    return status


def _view(record: Mapping[str, Any], active_id: str) -> CheckpointRecord:
    status = "active" if record.get("id") == active_id else _stored_status(record)
    return cast(CheckpointRecord, {**record, "status": status})
