"""Precision by hardware: auto takes bf16 only where it is native; explicit settings win."""

from __future__ import annotations

import logging

import pytest
import torch

from models import hardware

CPU = torch.device("cpu")


def test_auto_follows_the_cpu_and_explicit_settings_win(monkeypatch) -> None:
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: True)
    assert hardware.resolve_precision("auto", CPU) == "bf16"
    assert hardware.resolve_precision("fp32", CPU) == "fp32"
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: False)
    assert hardware.resolve_precision("auto", CPU) == "fp32"
    assert hardware.resolve_precision("bf16", CPU) == "bf16"


def test_forced_bf16_without_native_support_warns(monkeypatch, caplog) -> None:
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="safespot.models.hardware"):
        hardware.resolve_precision("bf16", CPU)
    assert "emulates" in caplog.text
    caplog.clear()
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: True)
    with caplog.at_level(logging.WARNING, logger="safespot.models.hardware"):
        hardware.resolve_precision("bf16", CPU)
    assert caplog.text == ""


def test_unknown_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="precision must be one of"):
        hardware.resolve_precision("fp16", CPU)


def test_cpu_flags_are_read_from_proc_cpuinfo(monkeypatch, tmp_path) -> None:
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor : 0\nflags : fpu sse avx2 avx512f avx512_bf16\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: real_open(fake if p == "/proc/cpuinfo" else p, *a, **k))
    assert hardware.cpu_has_bf16()
    fake.write_text("processor : 0\nflags : fpu sse avx2\n")
    assert not hardware.cpu_has_bf16()
