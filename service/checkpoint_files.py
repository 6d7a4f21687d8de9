"""Storing an uploaded checkpoint file, safely, before a worker vets it.

The API never loads a checkpoint (no torch here): it only recognises the
container by its first bytes, copies it under a server-chosen name into the
shared checkpoint directory while hashing it, and enforces the size limit.
The client's file name is never used for anything (path traversal).
Validation (it loads, shapes and class count match the metadata) and
vetting happen on a worker.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from service.errors import PayloadTooLarge, UnsupportedMediaType, Validation
from worker.protocol import ErrorCode
from worker.registry import looks_like_safetensors

CHUNK_BYTES = 1024 * 1024
MAX_METADATA_CHARS = 64 * 1024
Kind = Literal["safetensors", "pt"]
SUFFIX: dict[Kind, str] = {"safetensors": ".safetensors", "pt": ".pt"}


@dataclass(frozen=True)
class StoredFile:
    path: Path
    sha256: str
    size_bytes: int
    kind: Kind


def sniff_kind(head: bytes) -> Kind:
    """Recognise safetensors (8-byte little-endian header length, then JSON) or a
    torch.save file (zip archive, or the legacy pickle stream that
    `torch.load(weights_only=True)` also reads without executing code)."""
    if looks_like_safetensors(head):
        return "safetensors"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "pt"
    raise UnsupportedMediaType(
        "not a checkpoint: expected a .safetensors file or a PyTorch state dict (.pt/.pth)",
        code=ErrorCode.UNSUPPORTED_CHECKPOINT)


def store_checkpoint(source: BinaryIO, directory: Path, checkpoint_id: str,
                     max_bytes: int) -> StoredFile:
    """Copy `source` to DIRECTORY/<id>.<kind> in chunks, hashing as it goes.

    Blocking: run it in a threadpool.  Writes to a hidden temporary file first
    and renames it, so a worker never sees half a checkpoint."""
    head = source.read(16)
    kind = sniff_kind(head)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{checkpoint_id}{SUFFIX[kind]}"
    temporary = directory / f".upload-{checkpoint_id}.tmp"
    digest = hashlib.sha256(head)
    size = len(head)
    try:
        with open(temporary, "xb") as out:
            out.write(head)
            while chunk := source.read(CHUNK_BYTES):
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLarge(f"the checkpoint is larger than {max_bytes} bytes",
                                          code=ErrorCode.FILE_TOO_LARGE)
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, final)
    finally:
        temporary.unlink(missing_ok=True)
    return StoredFile(path=final, sha256=digest.hexdigest(), size_bytes=size, kind=kind)


def parse_metadata(raw: str | None, kind: Kind) -> dict[str, Any]:
    """The `metadata` form field: a JSON object (required for a bare state dict,
    which, unlike our safetensors files, does not describe itself)."""
    if raw is None or not raw.strip():
        if kind == "pt":
            raise Validation("metadata: required for a PyTorch state dict (arch, num_classes, "
                             "input_size, class_names, mean, std)")
        return {}
    if len(raw) > MAX_METADATA_CHARS:
        raise Validation(f"metadata: longer than {MAX_METADATA_CHARS} characters")
    try:
        value = json.loads(raw)
    except ValueError as e:
        raise Validation(f"metadata: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise Validation("metadata: expected a JSON object")
    return value


def clean_name(raw: str | None, fallback: str) -> str:
    """A display name: printable, at most 100 characters."""
    name = "".join(ch for ch in (raw or "") if ch.isprintable()).strip()[:100]
    return name or fallback
