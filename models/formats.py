"""What kind of checkpoint file a head of bytes is, decided by content, never by name.

Torch-free on purpose: the API sniffs uploads with it, the worker and the importers
before they open anything.
"""

from __future__ import annotations

MAX_SAFETENSORS_HEADER = 100 * 1000 * 1000  # the safetensors library's own cap on its JSON header
HEAD_BYTES = 9  # enough for both checks


def looks_like_safetensors(head: bytes) -> bool:
    """An 8-byte little-endian header length within the format's limit, then a JSON object."""
    if len(head) < HEAD_BYTES:
        return False
    length = int.from_bytes(head[:8], "little")
    return 2 <= length <= MAX_SAFETENSORS_HEADER and head[8:9] == b"{"


def looks_like_torch_save(head: bytes) -> bool:
    """A torch.save file: a zip archive, or the legacy pickle stream (both of which
    `torch.load(weights_only=True)` reads without executing code)."""
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"
