"""Checkpoint containers recognised by their first bytes, and the recorded threat a checkpoint's
metadata makes usable (models/formats.py)."""

from __future__ import annotations

import io
import json
import struct

import pytest
import torch
from safetensors.torch import save

from models.formats import HEAD_BYTES, looks_like_safetensors, looks_like_torch_save, trained_threat


def test_real_files_of_each_kind_are_recognised_and_only_as_that_kind() -> None:
    safetensors_head = save({"w": torch.zeros(2)})[:HEAD_BYTES]
    zipped = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, zipped)
    legacy = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    assert looks_like_safetensors(safetensors_head) and not looks_like_torch_save(safetensors_head)
    for head in (zipped.getvalue()[:HEAD_BYTES], legacy.getvalue()[:HEAD_BYTES]):
        assert looks_like_torch_save(head) and not looks_like_safetensors(head)


def test_short_oversized_or_non_json_headers_are_not_safetensors() -> None:
    header = json.dumps({"__metadata__": {}}).encode()
    assert looks_like_safetensors(struct.pack("<Q", len(header)) + header[:1])
    assert not looks_like_safetensors(struct.pack("<Q", len(header)))  # too short to tell
    assert not looks_like_safetensors(struct.pack("<Q", 10**12) + b"{")  # a header no reader accepts
    assert not looks_like_safetensors(struct.pack("<Q", len(header)) + b"[")
    assert not looks_like_torch_save(b"GIF89a...") and not looks_like_torch_save(b"")


def test_a_recorded_threat_of_a_known_norm_and_positive_eps_is_usable() -> None:
    assert trained_threat({"norm": "l2", "eps": 1, "delta": 9}) == {"norm": "l2", "eps": 1.0}
    assert trained_threat({"norm": "linf", "eps": 4 / 255}) == {"norm": "linf", "eps": 4 / 255}


@pytest.mark.parametrize("threat", [
    {"norm": "linf", "eps": True},  # a bool is an int to Python, not a budget
    {"norm": "linf", "eps": "8/255"}, {"norm": "linf", "eps": 0}, {"norm": "linf", "eps": -1},
    {"norm": "l3", "eps": 0.1}, {"eps": 0.1}, {"norm": "linf"}, "linf", None, [("norm", "linf")],
])
def test_a_garbled_recorded_threat_is_not_usable(threat: object) -> None:
    assert trained_threat(threat) == {}
