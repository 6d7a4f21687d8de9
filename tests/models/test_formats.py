"""Checkpoint containers recognised by their first bytes (models/formats.py)."""

from __future__ import annotations

import io
import json
import struct

import torch
from safetensors.torch import save

from models.formats import HEAD_BYTES, looks_like_safetensors, looks_like_torch_save


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
