"""Which checkpoint file a record names, and loading the active one.

Records (protocol.CheckpointRecord) store ``path`` relative to the shared
checkpoint directory (SAFESPOT_CHECKPOINT_DIR), so workers on other machines
that mount it elsewhere find the same file; a path that resolves outside
the directory is refused.  The shipped default model (``source:
"shipped"``) is found by name through :func:`models.resolve` instead, and is
what a worker serves while no checkpoint is active.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from models import display_name
from models.checkpoint import LoadedCheckpoint, load_checkpoint
from worker.errors import CheckpointNotFoundError, JobError
from worker.logs import fields
from worker.protocol import CheckpointRecord, ErrorCode
from worker.registry import SHIPPED_ID, CheckpointRegistry, json_safe
from worker.settings import WorkerSettings

log = logging.getLogger("safespot.worker.model")


def select_device(name: str | None = None) -> torch.device:
    """The device named, else CUDA when available, else CPU."""
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def checkpoint_file(record: Mapping[str, Any], checkpoint_dir: Path, default_model: str) -> Path:
    """The file a record names; JobError("invalid_path") for anything outside the directory."""
    if record.get("source") == "shipped":
        from models import resolve

        return resolve(default_model)
    raw = str(record.get("path") or "")
    if not raw:
        raise JobError(f"checkpoint {record.get('id')} has no file", code=ErrorCode.INVALID_PATH)
    root = checkpoint_dir.resolve()
    candidate = Path(raw)
    resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if resolved != root and root not in resolved.parents:
        raise JobError(f"checkpoint path {raw!r} is outside the checkpoint directory", code=ErrorCode.INVALID_PATH)
    return resolved


def relative_path(path: Path, checkpoint_dir: Path) -> str:
    """What a record stores: the path relative to the checkpoint directory when inside it."""
    try:
        return str(path.resolve().relative_to(checkpoint_dir.resolve()))
    except ValueError:
        return str(path)


def shipped_record(default_model: str) -> CheckpointRecord | None:
    """A registry record for the default model, or None when its file is not there yet."""
    from models import resolve
    from models.checkpoint import file_sha256, read_info
    from models.errors import ModelError

    try:
        path = resolve(default_model)
        info = read_info(path)
    except ModelError:
        return None
    return {"id": SHIPPED_ID, "name": display_name(path, info.name), "status": "ready",
            "sha256": file_sha256(path), "path": "", "size_bytes": path.stat().st_size,
            "uploaded_at": path.stat().st_mtime, "info": json_safe(asdict(info)), "vetting": {},
            "error": None, "source": "shipped"}


class ActiveModel:
    """The model a worker should serve: the registry's active checkpoint (the shipped
    default while nothing else was activated), reloaded when the activation version moves.
    ``device`` (SAFESPOT_DEVICE, else CUDA when available) and torch's CPU threads
    (SAFESPOT_THREADS) are chosen here, once per worker."""

    def __init__(self, registry: CheckpointRegistry, settings: WorkerSettings) -> None:
        self.registry = registry
        self.settings = settings
        self.device = select_device(settings.device)
        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.version: int | None = None  # activation version of the loaded model
        self.name = ""  # the loaded record's name, as the admin gave it (the shipped one: its file's)
        self._failed_version: int | None = None  # a version whose checkpoint would not load

    def changed(self) -> bool:
        """Has an activation happened since the model was loaded (and is it worth a try)?"""
        version, _ = self.registry.active_state()
        return version != self.version and version != self._failed_version

    def load(self) -> tuple[LoadedCheckpoint, str]:
        """(the loaded model, checkpoint id) of the active checkpoint.

        Raises when it cannot be loaded: a worker must not silently serve
        another model than the one admins activated.  The failed version is
        remembered so that it is not retried every pass.
        """
        version, active = self.registry.active_state()
        try:
            record = self.registry.get(active) or ({"source": "shipped"} if active == SHIPPED_ID else None)
            if record is None:
                raise CheckpointNotFoundError(f"active checkpoint {active} has no record")
            path = checkpoint_file(record, self.settings.checkpoint_path, self.settings.default_model)
            # The shipped file may be retrained in place; its record follows it.
            expected = None if record.get("source") == "shipped" else record.get("sha256") or None
            loaded = load_checkpoint(path, device=self.device, expected_sha256=expected)
        except Exception:
            self._failed_version = version
            raise
        self.version, self._failed_version = version, None
        shipped = record.get("source") == "shipped"
        self.name = display_name(path, loaded.info.name) if shipped else str(record.get("name") or "")
        log.info("model loaded", extra=fields(checkpoint_id=active, sha256=loaded.sha256,
                                              version=version, device=str(self.device)))
        return loaded, active
