"""Which checkpoint file a record names, and loading it.

Records (protocol.CheckpointRecord) store ``path`` relative to the shared
checkpoint directory (SAFESPOT_CHECKPOINT_DIR), so workers on other machines
that mount it elsewhere find the same file; a path that resolves outside
the directory is refused.  The shipped default model (``source:
"shipped"``) is found by name through :func:`models.resolve` instead, and is
what a worker serves while no checkpoint is active.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from worker.errors import JobError
from worker.protocol import CheckpointRecord, ErrorCode

SHIPPED_ID = "default"  # record id of the shipped model


def new_checkpoint_id() -> str:
    """A server-chosen id (never derived from an uploaded file name)."""
    return "ckpt-" + secrets.token_hex(8)


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


def load_record(record: Mapping[str, Any], checkpoint_dir: Path, default_model: str, device: Any) -> Any:
    """Load the model a record names (models.checkpoint.LoadedCheckpoint), checking its sha256."""
    from models.checkpoint import load_checkpoint

    path = checkpoint_file(record, checkpoint_dir, default_model)
    expected = record.get("sha256") or None
    if record.get("source") == "shipped":
        expected = None  # the shipped file may be retrained in place; its record follows it
    return load_checkpoint(path, device=device, expected_sha256=expected)


def load_default(default_model: str, device: Any) -> Any:
    """The shipped default (or SAFESPOT_DEFAULT_MODEL's path)."""
    from models import load_checkpoint

    return load_checkpoint(default_model, device)


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
    from dataclasses import asdict

    return {"id": SHIPPED_ID, "name": info.name or default_model, "status": "ready",
            "sha256": file_sha256(path), "path": "", "size_bytes": path.stat().st_size,
            "uploaded_at": path.stat().st_mtime, "info": json_safe(asdict(info)), "vetting": {},
            "error": None, "source": "shipped"}


def json_safe(value: Any) -> Any:
    """Replace non-finite floats by None (JSON has no NaN) and tuples by lists, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
