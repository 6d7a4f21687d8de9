"""The model that filters images now, for clients: its name and the classes it tells apart.

The registry's active record already carries the checkpoint's metadata (``info``, read by a
worker), so this never opens a checkpoint (no torch here)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from models.formats import trained_threat
from service.auth import ClientRole
from service.deps import BackendDep, SettingsDep, call_backend
from service.errors import NotReady
from service.schemas import ModelResponse, error_responses
from worker.protocol import NORMS

router = APIRouter(prefix="/v1", tags=["filter"])


@router.get("/model", response_model=ModelResponse, summary="The active model and its classes",
            responses=error_responses(401, 503))
async def active_model(_role: ClientRole, backend: BackendDep, settings: SettingsDep) -> ModelResponse:
    """The checkpoint that answers filter jobs: its name, input size and class names
    (`prediction.label` and `top5[].label` index `class_names`), and the largest budget this
    server accepts per norm (the page warns before a request is refused)."""
    records = await call_backend(backend.list_checkpoints)
    active = next((r for r in records if r.get("status") == "active"), None)
    if active is None:
        raise NotReady("no model is registered yet: a worker registers the shipped one when it starts")
    return model_summary(active).model_copy(update={"max_eps": {n: settings.max_eps(n) for n in NORMS}})


def model_summary(record: Any) -> ModelResponse:
    info = record.get("info") or {}
    names = [str(n) for n in info.get("class_names") or []]
    return ModelResponse(checkpoint_id=str(record["id"]), name=str(record.get("name") or record["id"]),
                         sha256=str(record.get("sha256") or ""),
                         num_classes=int(info.get("num_classes") or len(names)), class_names=names,
                         input_size=[int(v) for v in info.get("input_size") or []],
                         domain=str(info.get("domain") or ""), threat=trained_threat(info.get("threat")))
