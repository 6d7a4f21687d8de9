"""The service benchmarks' harness and both benchmarks, run briefly on the
tiny model: the figures they report must add up (every accepted job ends
once), so a broken harness cannot produce a flattering benchmark.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from bench.e2e import run_e2e
from bench.harness import percentiles, photo_uploads, slope_per_min
from bench.soak import run_soak
from safespot_cli import bench_cmd
from tests.cli.clikit import make_cli
from tests.conftest import TINY_MODEL


def test_percentiles_use_nearest_rank() -> None:
    stats = percentiles([float(v) for v in range(100, 0, -1)])  # 1..100, unordered
    assert (stats["p50"], stats["p95"], stats["p99"], stats["n"]) == (50.0, 95.0, 99.0, 100)
    assert stats["mean"] == pytest.approx(50.5)
    assert percentiles([])["p50"] is None


def test_slope_is_in_mib_per_minute_and_needs_three_samples() -> None:
    assert slope_per_min([(t, 100 + 2 * t) for t in (0.0, 1.0, 2.0, 5.0)]) == pytest.approx(120.0)
    assert slope_per_min([(0.0, 1.0), (1.0, 2.0)]) is None
    assert slope_per_min([(1.0, 1.0)] * 3) is None  # no spread in time


def test_photo_uploads_are_real_images_of_the_size_asked_and_repeatable() -> None:
    uploads = photo_uploads(3, (64, 48), seed=5)
    assert uploads == photo_uploads(3, (64, 48), seed=5)
    for data in uploads:
        with Image.open(io.BytesIO(data)) as img:
            assert img.size == (64, 48)


@pytest.mark.integration
def test_a_short_soak_accounts_for_every_job() -> None:
    out: dict = {}
    run_soak(4.0, 2, None, str(TINY_MODEL), out, sample_every_s=0.5, drain_timeout_s=60)
    assert out["accepted"] > 0
    assert out["completed"] == out["accepted"]
    assert (out["lost"], out["duplicated"], out["failed"]) == (0, 0, 0)
    assert out["worker_alive_at_end"] is True
    assert out["latency_s"]["n"] == out["completed"]
    assert set(out["memory"]) >= {"worker", "api"}


@pytest.mark.integration
def test_a_short_e2e_run_reports_both_ratios() -> None:
    out = run_e2e(4, 2, None, str(TINY_MODEL), {}, library_repeats=1)
    assert out["library"]["images"] == 4 and out["library"]["errors"] == 0
    for batch in (64, 1):
        assert out[f"service_batch_{batch}"]["images"] == 4
    assert out["e2e_vs_library"] == pytest.approx(
        out["service_batch_64"]["images_per_s"] / out["library"]["images_per_s"], rel=0.01)
    assert out["batching_gain"] > 0


@pytest.mark.integration
def test_safespot_bench_runs_the_service_section_as_python_m_bench(tmp_path: Path) -> None:
    # The installed package never imports bench/: it runs `python -m bench e2e` as a child.
    out = tmp_path / "bench.json"
    cli = make_cli(bench_cmd)
    assert cli("bench", "--model", str(TINY_MODEL), "--sections", "service", "--service-images", "2",
               "--service-clients", "1", "--threads", "1", "--json", str(out)) == 0
    service = json.loads(out.read_text())["service"]
    assert service["kind"] == "e2e" and service["images"] == 2 and service["library"]["errors"] == 0
    assert service["service_batch_64"]["images"] == 2 and service["e2e_vs_library"] > 0
