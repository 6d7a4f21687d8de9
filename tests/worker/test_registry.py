"""The checkpoint registry's rules, against both stores: a JSON file and a real Redis.

Only a ready checkpoint activates (an unvetted one with the admin's override, kept on the
record); exactly one is active, derived from one key;
the active and the shipped ones cannot be deleted; concurrent admins cannot
break any of this.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from worker.errors import (
    CheckpointNotFoundError,
    CheckpointStateError,
    CheckpointUnvettedError,
    ConflictError,
)
from worker.protocol import ACTIVE_CHECKPOINT_KEY, CHECKPOINTS_KEY
from worker.registry import SHIPPED_ID, CheckpointRegistry, Snapshot, new_checkpoint_id
from worker.registry_stores import REGISTRY_FILE, file_registry, redis_registry


@pytest.fixture(params=["json-file", "redis"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> CheckpointRegistry:
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    if request.param == "redis":
        return redis_registry(request.getfixturevalue("redis_conn"), directory)  # its own flushed db
    return file_registry(directory)


def record(checkpoint_id: str, status: str = "ready", **extra: Any) -> dict[str, Any]:
    return {"id": checkpoint_id, "name": checkpoint_id, "status": status, "sha256": "0" * 64,
            "path": f"{checkpoint_id}.safetensors", "size_bytes": 1, "uploaded_at": time.time(),
            "info": {}, "vetting": {}, "error": None, "source": "upload", **extra}


def statuses(registry: CheckpointRegistry) -> dict[str, str]:
    return {r["id"]: r["status"] for r in registry.records()}


def test_ids_are_chosen_by_the_server_in_one_format() -> None:
    ids = {new_checkpoint_id() for _ in range(100)}
    assert len(ids) == 100 and all(re.fullmatch(r"ckpt_[0-9a-f]{16}", i) for i in ids)


def test_an_upload_is_validating_until_vetted_and_only_a_ready_one_activates(registry) -> None:
    registry.add(record("ckpt_0000000000000001", status="ready"))  # an upload cannot claim ready
    assert statuses(registry) == {"ckpt_0000000000000001": "validating"}
    with pytest.raises(CheckpointStateError, match="only a ready"):
        registry.activate("ckpt_0000000000000001")
    with pytest.raises(ConflictError):
        registry.add(record("ckpt_0000000000000001"))  # the id exists
    with pytest.raises(ConflictError):
        registry.add(record("../escape"))
    registry.put(record("ckpt_0000000000000002", status="rejected"))
    with pytest.raises(CheckpointStateError):
        registry.activate("ckpt_0000000000000002")
    with pytest.raises(CheckpointNotFoundError):
        registry.activate("ckpt_ffffffffffffffff")
    assert registry.active_state() == (0, SHIPPED_ID)  # nothing moved

    registry.put(record("ckpt_0000000000000001"))  # the worker's verdict
    assert registry.activate("ckpt_0000000000000001")["status"] == "active"
    assert registry.active_state() == (1, "ckpt_0000000000000001")
    assert registry.activate("ckpt_0000000000000001")["status"] == "active"
    assert registry.active_state()[0] == 1, "activating the active checkpoint changes nothing"


def test_an_unvetted_checkpoint_activates_only_with_the_override_which_it_keeps(registry, caplog) -> None:
    unvetted = record("ckpt_0000000000000003", status="unvetted",
                      vetting={"skipped": "no vetting set for domain 'toy-shapes'", "domain": "toy-shapes"})
    registry.put(unvetted)
    with pytest.raises(CheckpointUnvettedError, match="no vetting set for domain 'toy-shapes'") as refused:
        registry.activate("ckpt_0000000000000003")
    assert refused.value.code == "checkpoint_unvetted" and "override" in str(refused.value)
    assert registry.active_state() == (0, SHIPPED_ID) and "override" not in registry.get("ckpt_0000000000000003")

    before = time.time()
    with caplog.at_level(logging.WARNING, logger="safespot.registry"):
        activated = registry.activate("ckpt_0000000000000003", override=True)
    assert activated["status"] == "active" and registry.active_state() == (1, "ckpt_0000000000000003")
    stored = registry.get("ckpt_0000000000000003")
    assert stored is not None and stored["override"] == activated["override"]
    assert stored["override"]["reason"] == "activated without vetting" and stored["override"]["at"] >= before - 1
    assert any("WITHOUT VETTING" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)

    registry.put(record("ckpt_0000000000000007"))
    registry.activate("ckpt_0000000000000007")  # once another is active, it shows its stored status again
    assert statuses(registry)["ckpt_0000000000000003"] == "unvetted"
    again = registry.activate("ckpt_0000000000000003", override=True, reason="a trial on our own photos")
    assert again["override"]["reason"] == "a trial on our own photos"


def test_a_record_left_ready_by_a_skipped_vetting_is_unvetted(registry) -> None:
    """What versions before the unvetted status stored (the vetting skipped, the record ready)."""
    registry.put(record("ckpt_0000000000000008", vetting={"skipped": "no vetting data at data/x.npz"}))
    assert statuses(registry)["ckpt_0000000000000008"] == "unvetted"
    with pytest.raises(CheckpointUnvettedError):
        registry.activate("ckpt_0000000000000008")


def test_the_override_opens_no_other_door(registry) -> None:
    registry.add(record("ckpt_0000000000000004"))
    registry.put(record("ckpt_0000000000000005", status="rejected"))
    for checkpoint_id in ("ckpt_0000000000000004", "ckpt_0000000000000005"):
        with pytest.raises(CheckpointStateError, match="only a ready"):
            registry.activate(checkpoint_id, override=True)
    registry.put(record("ckpt_0000000000000006"))
    ready = registry.activate("ckpt_0000000000000006", override=True)  # nothing to override
    assert ready["status"] == "active" and "override" not in ready
    assert registry.active_state() == (1, "ckpt_0000000000000006")


def test_exactly_one_is_active_and_it_comes_from_the_active_key(registry, redis_conn_or_none) -> None:
    registry.register_shipped(record("ignored", source="upload"))
    for name in ("a", "b"):
        registry.put(record(name))
    assert statuses(registry) == {SHIPPED_ID: "active", "a": "ready", "b": "ready"}
    registry.activate("a")
    registry.activate("b")
    assert statuses(registry) == {SHIPPED_ID: "ready", "a": "ready", "b": "active"}
    # A record that claims "active" (written before the status was derived) is not.
    registry.put(record("a", status="active"))
    assert statuses(registry)["a"] == "ready" and registry.get("b")["status"] == "active"
    assert [r["status"] for r in registry.records()].count("active") == 1
    if redis_conn_or_none is not None:  # what workers read: the same key
        assert redis_conn_or_none.get(ACTIVE_CHECKPOINT_KEY) == b"b"
        stored = [json.loads(v) for v in redis_conn_or_none.hvals(CHECKPOINTS_KEY)]
        assert "active" not in {r["status"] for r in stored}


def test_the_active_and_the_shipped_checkpoints_cannot_be_deleted(registry) -> None:
    registry.register_shipped({"name": "shipped", "status": "ready", "path": "", "uploaded_at": 0.0})
    registry.put(record("mine"))
    (registry.directory / "mine.safetensors").write_bytes(b"x")
    with pytest.raises(CheckpointStateError, match="active"):
        registry.delete(SHIPPED_ID)  # active while nothing else is
    registry.activate("mine")
    with pytest.raises(CheckpointStateError, match="shipped"):
        registry.delete(SHIPPED_ID)  # not active, still shipped
    with pytest.raises(CheckpointStateError, match="active"):
        registry.delete("mine")
    assert set(statuses(registry)) == {SHIPPED_ID, "mine"}
    assert (registry.directory / "mine.safetensors").exists()
    registry.activate(SHIPPED_ID)
    registry.delete("mine")
    assert set(statuses(registry)) == {SHIPPED_ID}
    assert not (registry.directory / "mine.safetensors").exists()
    with pytest.raises(CheckpointNotFoundError):
        registry.delete("mine")


def test_old_ids_still_work(registry) -> None:
    old = "ckpt-0123456789abcdef"  # the trained checkpoints' ids before the formats were unified
    registry.put(record(old))
    registry.activate(old)
    registry.put(record("ckpt_0123456789abcdef"))
    registry.activate("ckpt_0123456789abcdef")
    registry.delete(old)
    assert set(statuses(registry)) == {"ckpt_0123456789abcdef"}


def test_delete_never_leaves_the_checkpoint_directory(registry, tmp_path) -> None:
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    registry.put(record("evil", path="../precious.txt"))
    registry.delete("evil")
    assert outside.read_text() == "keep me"


def test_a_verdict_does_not_bring_back_a_deleted_record(registry) -> None:
    registry.add(record("gone"))
    registry.delete("gone")
    assert registry.put(record("gone"), only_if_present=True) is False
    assert registry.get("gone") is None and registry.ids_with_status("validating") == []


def test_the_state_survives_a_new_registry_on_the_same_store(registry, tmp_path) -> None:
    registry.put(record("a"))
    registry.activate("a")
    store = registry.store
    again = (file_registry(registry.directory) if not hasattr(store, "conn")
             else redis_registry(store.conn, registry.directory))
    assert again.active_state() == (1, "a") and statuses(again) == {"a": "active"}
    if not hasattr(store, "conn"):
        saved = json.loads((registry.directory / REGISTRY_FILE).read_text())
        assert saved["active"] == "a" and saved["version"] == 1
        assert not list(registry.directory.glob(".*.tmp")), "the temporary file is replaced, not left"


def test_a_delete_racing_an_activation_never_removes_the_active_record(registry, monkeypatch) -> None:
    """The deleter has read its snapshot ("x is not active") when an activation of x
    comes in.  Redis: the activation commits, the deleter's transaction fails on its
    WATCH, decides again and refuses.  JSON file: the activation waits for the lock,
    then finds x gone.  Never: x deleted while active."""
    registry.put(record("x"))
    registry.put(record("y"))
    registry.activate("y")
    decided, proceed = threading.Event(), threading.Event()
    change = registry.store.change

    def change_pausing_the_deleter(decide: Callable[[Snapshot], Any]) -> Any:
        def paused(snap: Snapshot) -> Any:
            outcome = decide(snap)
            if threading.current_thread().name == "deleter" and not decided.is_set():
                decided.set()
                proceed.wait(10)
            return outcome
        return change(paused)

    monkeypatch.setattr(registry.store, "change", change_pausing_the_deleter)
    results: dict[str, Any] = {}

    def attempt(name: str, action: Callable[[], Any]) -> None:
        try:
            action()
            results[name] = "done"
        except (CheckpointStateError, CheckpointNotFoundError) as e:
            results[name] = type(e).__name__

    deleter = threading.Thread(target=attempt, args=("delete", lambda: registry.delete("x")), name="deleter")
    activator = threading.Thread(target=attempt, args=("activate", lambda: registry.activate("x")))
    deleter.start()
    assert decided.wait(10)
    activator.start()
    activator.join(0.5)  # Redis: committed by now; JSON file: waiting for the lock
    proceed.set()
    deleter.join(10)
    activator.join(10)
    _, active = registry.active_state()
    assert registry.get(active) is not None, "the active checkpoint was deleted"
    assert [r["id"] for r in registry.records() if r["status"] == "active"] == [active]
    if hasattr(registry.store, "conn"):
        assert results == {"activate": "done", "delete": "CheckpointStateError"} and active == "x"
    else:
        assert results == {"delete": "done", "activate": "CheckpointNotFoundError"} and active == "y"


def test_concurrent_activations_leave_exactly_one_active(registry) -> None:
    names = [f"c{i}" for i in range(4)]
    for name in names:
        registry.put(record(name))

    def admin(offset: int) -> None:
        for i in range(25):
            registry.activate(names[(i + offset) % len(names)])

    threads = [threading.Thread(target=admin, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    version, active = registry.active_state()
    assert [r["id"] for r in registry.records() if r["status"] == "active"] == [active]
    assert 25 <= version <= 50  # every activation that moved the active id counted once


@pytest.fixture
def redis_conn_or_none(request: pytest.FixtureRequest) -> Any:
    """The Redis client behind a redis-backed `registry` (for reading its keys), else None."""
    store = request.getfixturevalue("registry").store
    return getattr(store, "conn", None)
