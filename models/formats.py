"""The torch-free parts of the checkpoint format: what kind of checkpoint file a head of bytes
is (decided by content, never by name), which threat a checkpoint's metadata records, and the
paper's budgets that stand in when it records none.

Torch-free on purpose: the API sniffs uploads with it, reports the active model's threat and
defaults a training run's budget; the worker and the importers sniff before they open anything;
the search (safespot.config) takes its default budgets from here, so they are written once.
"""

from __future__ import annotations

from typing import Any

MAX_SAFETENSORS_HEADER = 100 * 1000 * 1000  # the safetensors library's own cap on its JSON header
HEAD_BYTES = 9  # enough for both checks
# The paper's budgets (pixel units): a search's default, a training run's, and a filter job's
# when the checkpoint records no usable budget of the asked norm.
PAPER_EPS: dict[str, float] = {"linf": 8 / 255, "l2": 0.5}


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


def trained_threat(threat: object) -> dict[str, Any]:
    """The ``{norm, eps}`` a checkpoint's metadata says it was trained for when it is usable (a
    norm the search knows, eps a positive number), else {}.  Metadata is untrusted: a record
    that is not a dict, a bool or a string ("8/255") as eps is not usable."""
    if not isinstance(threat, dict):
        return {}
    norm, eps = threat.get("norm"), threat.get("eps")
    if norm in PAPER_EPS and isinstance(eps, (int, float)) and not isinstance(eps, bool) and eps > 0:
        return {"norm": norm, "eps": float(eps)}
    return {}
