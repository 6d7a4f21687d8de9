"""Checkpoints for the admin page tests: the tiny model under other names, an unvettable
model, and waiting for the registry's verdict."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import TINY_MODEL


def with_domain(info: Any, domain: str) -> Any:
    """`info` with its domain set, where this version's metadata has one (issue 18's vetting)."""
    if "domain" in {f.name for f in dataclasses.fields(info)}:
        return dataclasses.replace(info, domain=domain)
    return info


def variant_checkpoint(path: Path, name: str = "tiny variant") -> Path:
    """The tiny model under another name: another file, another sha256, the same weights
    (a CIFAR-10 model, so it is vetted on the fixture's CIFAR-10 images)."""
    from models.checkpoint import load_checkpoint, save_checkpoint

    loaded = load_checkpoint(TINY_MODEL)
    save_checkpoint(loaded.model, with_domain(dataclasses.replace(loaded.info, name=name), "cifar10"), path)
    return path


def unvettable_checkpoint(path: Path, name: str = "five classes") -> Path:
    """A randomly initialised 5-class model of a domain no vetting set covers."""
    import torch

    from models.checkpoint import build_model, load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    info = dataclasses.replace(load_checkpoint(TINY_MODEL).info, name=name, num_classes=5,
                               class_names=[f"shape {i}" for i in range(5)], metrics={}, ood={})
    info = with_domain(info, "toy-shapes")
    save_checkpoint(build_model(info).eval(), info, path)
    return path


def wait_until_vetted(client: httpx.Client, checkpoint_id: str, timeout_s: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    record: dict[str, Any] = {}
    while time.monotonic() < deadline:
        records = client.get("v1/checkpoints").json()["checkpoints"]
        record = next(r for r in records if r["id"] == checkpoint_id)
        if record["status"] != "validating":
            return record
        time.sleep(0.25)
    raise AssertionError(f"checkpoint {checkpoint_id} still validating after {timeout_s} s: {record}")
