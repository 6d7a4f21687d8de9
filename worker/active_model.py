"""The model a Redis-backed worker should serve: the active checkpoint, else the default.

Admins activate a checkpoint through the API, which sets
ACTIVE_CHECKPOINT_KEY and increments ACTIVE_VERSION_KEY.  A worker compares
the version with the one it loaded (cheap, between search passes) and
reloads when it changed, once its in-flight jobs have finished.
"""

from __future__ import annotations

import logging
from typing import Any

from worker import store
from worker.checkpoints import SHIPPED_ID, load_default, load_record
from worker.errors import CheckpointNotFoundError
from worker.logs import fields
from worker.settings import WorkerSettings

log = logging.getLogger("safespot.worker.model")


class ActiveModel:
    """Reads the activation state from Redis and loads the checkpoint it names."""

    def __init__(self, conn: Any, settings: WorkerSettings, device: Any) -> None:
        self.conn = conn
        self.settings = settings
        self.device = device
        self.version: int | None = None  # activation version of the loaded model
        self._failed_version: int | None = None  # a version whose checkpoint would not load

    def changed(self) -> bool:
        """Has an activation happened since the model was loaded (and is it worth a try)?"""
        version, _ = store.active_state(self.conn)
        return version != self.version and version != self._failed_version

    def load(self) -> tuple[Any, str]:
        """(LoadedCheckpoint, checkpoint id) of the active checkpoint, or of the default model.

        Raises when the active checkpoint cannot be loaded: a worker must not
        silently serve another model than the one admins activated.  The
        failed version is remembered so that it is not retried every pass.
        """
        version, active = store.active_state(self.conn)
        try:
            if active is None or active == SHIPPED_ID:
                loaded, checkpoint_id = load_default(self.settings.default_model, self.device), SHIPPED_ID
            else:
                record = store.read_record(self.conn, active)
                if record is None:
                    raise CheckpointNotFoundError(f"active checkpoint {active} has no record")
                loaded = load_record(record, self.settings.checkpoint_path, self.settings.default_model,
                                     self.device)
                checkpoint_id = active
        except Exception:
            self._failed_version = version
            raise
        self.version, self._failed_version = version, None
        log.info("model loaded", extra=fields(checkpoint_id=checkpoint_id, sha256=loaded.sha256,
                                              version=version, device=str(self.device)))
        return loaded, checkpoint_id
