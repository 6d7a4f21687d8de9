"""Which precision is fast on this hardware: one rule for the search and the trainer.

bf16 autocast pays only where the hardware computes in bf16: a GPU that supports it,
or a CPU with AVX512-BF16 or AMX instructions.  Elsewhere PyTorch emulates bf16 and
the passes get much slower, not faster: on a 2-core AMD EPYC without AVX-512, one
training step of the PGD-7 recipe took 16 times as long under bf16 autocast as in
float32 (docs/performance.md).  ``auto`` therefore picks bf16 only where it is native,
and an explicit ``bf16`` on a CPU without it is honoured with a warning.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("safespot.models.hardware")

PRECISION_SETTINGS = ("auto", "fp32", "bf16")


def cpu_has_bf16() -> bool:
    """True when /proc/cpuinfo lists AVX512-BF16 or AMX-BF16 (False where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively (so autocast to bf16 is a speed-up)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu" and cpu_has_bf16()


def resolve_precision(setting: str, device: torch.device) -> str:
    """``fp32`` or ``bf16`` for `setting` (auto, fp32 or bf16) on `device`."""
    if setting not in PRECISION_SETTINGS:
        raise ValueError(f"precision must be one of {PRECISION_SETTINGS}, got {setting!r}")
    if setting == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if setting == "bf16" and not native_bf16(device):
        log.warning("bf16 was asked for on %s, which has no native bf16: autocast emulates it and "
                    "is much slower than fp32 here (use auto or fp32)", device)
    return setting
