"""The search sections of `safespot bench`: the limit and the engine, per precision, in one run."""

from __future__ import annotations

import pytest

from safespot_cli.bench_search import measure_limit, measure_search


def test_limit_is_measured_per_batch_in_both_precisions(tiny_model) -> None:
    import torch

    for precision in ("fp32", "bf16"):
        out = measure_limit(tiny_model, (3, 32, 32), torch.device("cpu"), [8, 16], seconds=0.05,
                            precision=precision)
        assert [r["batch"] for r in out["per_batch"]] == [8, 16]
        assert out["best_passes_per_s"] == max(r["passes_per_s"] for r in out["per_batch"]) > 0


def test_search_rows_interleave_precisions_with_ratios_to_fp32_and_batch_1(tiny_model, tmp_path) -> None:
    import torch

    rows = measure_search(tiny_model, (3, 32, 32), torch.device("cpu"), [1, 8], limit=1000.0, seconds=0.8,
                          norm="linf", data=str(tmp_path / "none.npz"), data_dir=None,
                          precisions=("fp32", "bf16"))
    assert [(r["batch"], r["precision"]) for r in rows] == [(1, "fp32"), (1, "bf16"), (8, "fp32"), (8, "bf16")]
    assert all(r["passes_per_s"] > 0 and r["efficiency"] == pytest.approx(r["passes_per_s"] / 1000, abs=1e-4)
               for r in rows)
    by = {(r["batch"], r["precision"]): r for r in rows}
    for b in (1, 8):
        if by[(b, "fp32")]["images_per_s"]:
            assert by[(b, "bf16")]["vs_fp32"] == pytest.approx(
                by[(b, "bf16")]["images_per_s"] / by[(b, "fp32")]["images_per_s"], abs=0.01)
    assert "vs_fp32" not in by[(8, "fp32")]
    assert all(r["limit_adjacent"] > 0 and r["efficiency_adjacent"] == pytest.approx(
        r["passes_per_s"] / r["limit_adjacent"], rel=1e-2) for r in rows)


def test_an_unknown_precision_stops_the_bench_before_it_measures(tmp_path, capsys) -> None:
    from safespot_cli.main import main

    out = tmp_path / "bench.json"
    assert main(["bench", "--arch", "cifar-cnn", "--sections", "limit,search", "--precisions", "fp16",
                 "--json", str(out)]) == 2
    assert not out.exists() and "--precisions takes fp32 and/or bf16" in capsys.readouterr().err
