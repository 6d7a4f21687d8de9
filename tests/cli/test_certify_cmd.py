from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from safespot_cli import certify_cmd
from safespot_cli.errors import UsageError
from tests.cli.clikit import make_cli
from tests.conftest import TINY_MODEL

cli = make_cli(certify_cmd)


@pytest.fixture
def data(cifar_mini, tmp_path: Path) -> Path:
    path = tmp_path / "small.npz"
    np.savez(path, x=cifar_mini["x_test"][:40], y=cifar_mini["y_test"][:40])
    return path


def args(data: Path, out: Path, *more: str) -> list[str]:
    return ["certify", "--model", str(TINY_MODEL), "--data", str(data), "--n", "3", "--sigma", "0.25",
            "--samples", "2", "--n0", "20", "--num", "200", "--preset", "fast", "--set", "outer_steps=2",
            "--set", "verify_targets=0", "--threads", "1", "--out", str(out), *more]


def test_a_stopped_run_resumes_to_the_same_lines(data: Path, tmp_path: Path) -> None:
    out, summary = tmp_path / "run.jsonl", tmp_path / "summary.json"
    assert cli(*args(data, out, "--json", str(summary))) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["header"]
    full = json.loads(summary.read_text())["summary"]
    assert full["images"] == 3 and "certified_acc@0.5" in full["safe_spot"]

    # Stopped during the third image, half-way through writing its line.
    out.write_text("\n".join(lines[:3]) + "\n" + lines[3][:25])
    assert cli(*args(data, out)) == 0
    resumed = out.read_text().splitlines()
    assert len(resumed) == 4

    def strip(text: str) -> dict:
        line = json.loads(text)
        line.pop("seconds", None)
        return line

    assert [strip(t) for t in resumed] == [strip(t) for t in lines]


def test_other_settings_are_refused_and_summary_only_certifies_nothing(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run.jsonl"
    assert cli(*args(data, out)) == 0
    before = out.read_text()
    with pytest.raises(UsageError, match="another settings"):
        cli(*[a if a != "0.25" else "0.5" for a in args(data, out)])
    summary = tmp_path / "s.json"
    assert cli(*args(data, out, "--summary-only", "--json", str(summary))) == 0
    assert out.read_text() == before and json.loads(summary.read_text())["summary"]["images"] == 3
    (tmp_path / "alien.jsonl").write_text('{"index": 0}\n')
    with pytest.raises(UsageError, match="no header"):
        cli(*args(data, tmp_path / "alien.jsonl"))
