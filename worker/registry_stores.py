"""The two stores behind :class:`worker.registry.CheckpointRegistry`.

- :class:`RedisStore` (a deployment): records in the hash CHECKPOINTS_KEY, the
  active id in ACTIVE_CHECKPOINT_KEY, ACTIVE_VERSION_KEY bumped on every
  activation.  A change runs under ``WATCH`` on the three keys and commits in
  ``MULTI``/``EXEC``: when an admin or a worker wrote meanwhile, the commit
  fails and the decision is taken again on fresh data.
- :class:`JsonFileStore` (``safespot serve`` without Redis): the same state in
  memory behind a lock, written through to one JSON file (a temporary file
  then ``os.replace``, so a crash never leaves half a registry).
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from worker.protocol import ACTIVE_CHECKPOINT_KEY, ACTIVE_VERSION_KEY, CHECKPOINTS_KEY
from worker.registry import Change, CheckpointRegistry, Snapshot, json_safe

REGISTRY_FILE = "registry.json"


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class RedisStore:
    def __init__(self, conn: Any) -> None:
        self.conn = conn  # a redis-py client

    def snapshot(self) -> Snapshot:
        with self.conn.pipeline() as pipe:  # MULTI/EXEC: the three keys at one moment
            pipe.hgetall(CHECKPOINTS_KEY)
            pipe.get(ACTIVE_CHECKPOINT_KEY)
            pipe.get(ACTIVE_VERSION_KEY)
            return self._snapshot(*pipe.execute())

    def active_state(self) -> tuple[int, str | None]:
        with self.conn.pipeline(transaction=False) as pipe:
            pipe.get(ACTIVE_VERSION_KEY)
            pipe.get(ACTIVE_CHECKPOINT_KEY)
            version, active = pipe.execute()
        return int(version or 0), _text(active) or None

    def change(self, decide: Callable[[Snapshot], Change]) -> Change:
        with self.conn.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(CHECKPOINTS_KEY, ACTIVE_CHECKPOINT_KEY, ACTIVE_VERSION_KEY)
                    change = decide(self._snapshot(pipe.hgetall(CHECKPOINTS_KEY), pipe.get(ACTIVE_CHECKPOINT_KEY),
                                                   pipe.get(ACTIVE_VERSION_KEY)))
                    pipe.multi()
                    for record in change.put:
                        pipe.hset(CHECKPOINTS_KEY, str(record["id"]), json.dumps(json_safe(dict(record))))
                    for checkpoint_id in change.delete:
                        pipe.hdel(CHECKPOINTS_KEY, checkpoint_id)
                    if change.activate is not None:
                        pipe.set(ACTIVE_CHECKPOINT_KEY, change.activate)
                        pipe.incr(ACTIVE_VERSION_KEY)
                    pipe.execute()
                    return change
                except redis.WatchError:
                    continue  # another writer got there first: decide again on what it wrote

    @staticmethod
    def _snapshot(raw: dict[Any, Any], active: Any, version: Any) -> Snapshot:
        records = {str(_text(k)): json.loads(v) for k, v in raw.items()}
        return Snapshot(records, _text(active) or None, int(version or 0))


class JsonFileStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        saved: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
        records = {str(r["id"]): dict(r) for r in saved.get("records", []) if r.get("id")}
        self._state = Snapshot(records, saved.get("active") or None, int(saved.get("version") or 0))

    def snapshot(self) -> Snapshot:
        with self._lock:
            return copy.deepcopy(self._state)

    def active_state(self) -> tuple[int, str | None]:
        with self._lock:
            return self._state.version, self._state.active_key

    def change(self, decide: Callable[[Snapshot], Change]) -> Change:
        with self._lock:
            state = copy.deepcopy(self._state)
            change = decide(copy.deepcopy(state))
            state.records.update({str(r["id"]): json_safe(dict(r)) for r in change.put})
            for checkpoint_id in change.delete:
                state.records.pop(checkpoint_id, None)
            if change.activate is not None:
                state.active_key, state.version = change.activate, state.version + 1
            if change.put or change.delete or change.activate:
                self._write(state)
                self._state = state  # only once it is on disk
            return change

    def _write(self, state: Snapshot) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = {"active": state.active_key, "version": state.version, "records": list(state.records.values())}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(body, f, indent=1)
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def redis_registry(conn: Any, directory: Path) -> CheckpointRegistry:
    return CheckpointRegistry(RedisStore(conn), directory)


def file_registry(directory: Path) -> CheckpointRegistry:
    """The registry of the single-process mode: ``directory``/registry.json."""
    return CheckpointRegistry(JsonFileStore(directory / REGISTRY_FILE), directory)
