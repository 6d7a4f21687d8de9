"""Checkpoint admin: list, upload, activate, delete (admin key only).

The rules (only a ready checkpoint activates, an unvetted one only with
`?override=true`; the active and the shipped ones cannot be deleted) are the registry's (worker.registry), whichever backend
holds it; its refusals arrive here as 404/409 through `call_backend`.

An upload is stored safely before a worker vets it.  The API never loads a
checkpoint (no torch here): it only recognises the container by its first
bytes, copies it under a server-chosen name into the shared checkpoint
directory while hashing it, and enforces the size limit.  The client's file
name is never used for anything (path traversal).  Validation (it loads,
shapes and class count match the metadata) and vetting happen on a worker."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, BinaryIO, Literal

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile as StarletteUploadFile

from service.auth import AdminRole
from service.deps import BackendDep, SettingsDep, call_backend
from service.errors import Conflict, PayloadTooLarge, UnsupportedMediaType, Validation
from service.schemas import CheckpointList, CheckpointResponse, error_responses
from worker.protocol import CheckpointRecord, ErrorCode
from worker.registry import looks_like_safetensors, looks_like_torch_save, new_checkpoint_id

router = APIRouter(prefix="/v1/checkpoints", tags=["checkpoints (admin)"])
logger = logging.getLogger("safespot.service")
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
    if looks_like_torch_save(head):
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


@router.get("", response_model=CheckpointList, summary="List checkpoints",
            responses=error_responses(401, 403, 503))
async def list_checkpoints(_role: AdminRole, backend: BackendDep) -> CheckpointList:
    records = await call_backend(backend.list_checkpoints)
    active = next((r["id"] for r in records if r.get("status") == "active"), None)
    return CheckpointList(checkpoints=[CheckpointResponse.model_validate(r) for r in records],
                          active=active)


_UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary",
                 "description": "a SafeSpot .safetensors file; or another layout with `metadata`: "
                                "a .pt/.pth or .safetensors state dict (torchvision, timm), a robustness-library "
                                "or RobustBench checkpoint (converted as `safespot import` does)"},
        "metadata": {"type": "string", "description": (
            "JSON object describing the model (required for .pt/.pth): arch, num_classes, "
            "input_size, class_names, mean, std, ...")},
        "name": {"type": "string", "description": "display name"}}}}}}}


@router.post("", status_code=202, response_model=CheckpointResponse,
             summary="Upload a checkpoint (validated and vetted by a worker)",
             openapi_extra=_UPLOAD_BODY,
             responses=error_responses(400, 401, 403, 409, 413, 415, 422, 503))
async def upload_checkpoint(request: Request, _role: AdminRole, settings: SettingsDep,
                            backend: BackendDep) -> CheckpointResponse:
    """Store the file under a server-chosen name in the shared checkpoint
    directory and register it as `validating`.  A worker then loads it (no
    pickle execution), checks it against its metadata and runs a short vetting
    evaluation; the record turns `ready` or `rejected`.  Poll
    `GET /v1/checkpoints`.  Activation is a separate step.

    The form is parsed here rather than declared as parameters so that the
    admin key is checked BEFORE the (large) body is read."""
    async with request.form(max_files=1, max_fields=3) as form:
        file, metadata, name = form.get("file"), form.get("metadata"), form.get("name")
        if not isinstance(file, StarletteUploadFile):
            raise Validation("file: required (multipart field 'file' with the checkpoint)")
        if not isinstance(metadata, str | None) or not isinstance(name, str | None):
            raise Validation("metadata and name must be text fields")
        checkpoint_id = new_checkpoint_id()
        stored = await run_in_threadpool(store_checkpoint, file.file, settings.checkpoint_path,
                                         checkpoint_id, settings.max_checkpoint_bytes)
    try:
        info = parse_metadata(metadata, stored.kind)
        for existing in await call_backend(backend.list_checkpoints):
            if existing.get("sha256") == stored.sha256:
                raise Conflict(f"this file is already registered as {existing.get('id')}",
                               code=ErrorCode.DUPLICATE_CHECKPOINT)
        record = CheckpointRecord(
            id=checkpoint_id, name=clean_name(name or str(info.get("name") or ""), checkpoint_id),
            status="validating", sha256=stored.sha256, path=stored.path.name,
            size_bytes=stored.size_bytes, uploaded_at=time.time(), info=info, error=None,
            source="upload")
        await call_backend(backend.add_checkpoint, record)
    except BaseException:
        stored.path.unlink(missing_ok=True)  # nothing registered: leave no file behind
        raise
    logger.info("checkpoint uploaded", extra={"checkpoint_id": checkpoint_id,
                                              "sha256": stored.sha256, "bytes": stored.size_bytes})
    return CheckpointResponse.model_validate(record)


@router.post("/{checkpoint_id}/activate", response_model=CheckpointResponse,
             summary="Make a ready checkpoint the active model (an unvetted one: with override=true)",
             responses=error_responses(401, 403, 404, 409, 422, 503))
async def activate_checkpoint(
        checkpoint_id: str, _role: AdminRole, backend: BackendDep,
        override: Annotated[bool, Query(description=(
            "activate an `unvetted` checkpoint (no vetting set for its domain: its accuracy and "
            "robustness are unknown); stored on the record as `override: {at, reason}` and "
            "logged.  Without it, an unvetted one is refused with 409 `checkpoint_unvetted`."))] = False,
        reason: Annotated[str | None, Query(max_length=200, description=(
            "why the override (stored with it); default \"activated without vetting\""))] = None,
) -> CheckpointResponse:
    """Workers switch to it between batches, without restarting or losing jobs.
    Activating the active checkpoint changes nothing."""
    reason = clean_name(reason, "") or None
    activated = await call_backend(backend.activate_checkpoint, checkpoint_id, override, reason)
    if activated.get("override") and override:
        logger.warning("checkpoint activated WITHOUT VETTING (admin override)",
                       extra={"checkpoint_id": checkpoint_id, "override": activated["override"]})
    else:
        logger.info("checkpoint activated", extra={"checkpoint_id": checkpoint_id})
    return CheckpointResponse.model_validate(activated)


@router.delete("/{checkpoint_id}", status_code=204, response_class=Response,
               summary="Delete a checkpoint that is neither active nor shipped",
               responses=error_responses(401, 403, 404, 409, 503))
async def delete_checkpoint(checkpoint_id: str, _role: AdminRole, backend: BackendDep) -> Response:
    await call_backend(backend.delete_checkpoint, checkpoint_id)
    logger.info("checkpoint deleted", extra={"checkpoint_id": checkpoint_id})
    return Response(status_code=204)
