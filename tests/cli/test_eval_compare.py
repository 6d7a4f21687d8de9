"""`safespot eval-compare`: two measurements joined by test-set index, image by image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from safespot_cli import eval_cmd, eval_compare
from safespot_cli.errors import UsageError
from safespot_cli.eval_compare import compare, image_indices
from tests.cli.clikit import make_cli

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "tiny.safetensors"
cli = make_cli(eval_cmd, eval_compare)
THREAT = {"norm": "linf", "eps": 8 / 255, "delta": 8 / 255}


def report(correct: str, held: str, *, n_all: int, part: tuple[int, int] | None = None, total: int = 100,
           threat: dict[str, Any] = THREAT, sha: str = "ab") -> dict[str, Any]:
    """A minimal `safespot eval` report: one method, one suite, per-image strings."""
    out: dict[str, Any] = {"model": {"sha256": sha}, "data": "test.npz", "threat": threat, "n": len(correct),
                           "indices": f"stride {total / n_all:g} from 0", "config": {"outer_steps": 30},
                           "methods": {"s-full": {"per_image": {"correct_before": correct},
                                                  "attacks": {"autoattack": {"held": held}}}}}
    if part:
        out["part"] = {"k": part[0], "of": part[1], "n_all": n_all}
    return out


def test_indices_of_whole_runs_and_of_parts() -> None:
    assert image_indices(report("1" * 10, "1" * 10, n_all=10)) == list(range(0, 100, 10))
    assert image_indices(report("11", "11", n_all=10, part=(2, 5))) == [10, 60]
    assert image_indices(report("1" * 4, "1" * 4, n_all=4, total=10)) == [0, 2, 5, 7]  # stride 2.5
    with pytest.raises(UsageError, match="give 2 images"):
        image_indices(report("111", "111", n_all=10, part=(2, 5)))


def test_two_parts_against_a_whole_run_on_their_shared_images() -> None:
    # Side A: parts 1/5 and 2/5 of 10 images (indices 0, 50 and 10, 60); side B: all 10 images.
    a = [report("11", "10", n_all=10, part=(1, 5)), report("10", "10", n_all=10, part=(2, 5))]
    b = [report("1110110011", "0110010001", n_all=10)]
    result = compare(a, b, "s-full", "autoattack")
    # Shared: 0, 10, 50, 60; correct: 0, 10, 50 (60 is wrong in both).  A holds 0, 10; B holds 10, 50.
    assert result["shared_images"] == 4 and result["correct_originals"] == 3
    assert result["paired"] == {"both": 1, "a_only": 1, "b_only": 1, "neither": 0}
    assert result["a"]["held"] == result["b"]["held"] == 2 and result["a"]["safe_spot_rate"] == 0.6667


@pytest.mark.parametrize(("a", "b", "message"), [
    (report("1", "1", n_all=10, part=(1, 10)),
     report("1", "1", n_all=10, part=(1, 10), threat={"norm": "l2", "eps": 0.5, "delta": 0.5}), "threat"),
    (report("1", "1", n_all=10, part=(1, 10)), report("1", "1", n_all=10, part=(1, 10), sha="cd"), "checkpoints"),
    (report("1", "1", n_all=10, part=(1, 10)), report("0", "0", n_all=10, part=(1, 10)), "disagree"),
])
def test_reports_that_are_not_comparable_are_refused(a: dict[str, Any], b: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        compare([a], [b], "s-full", "autoattack")


def test_overlapping_reports_on_one_side_and_missing_suites_are_refused() -> None:
    whole = report("11", "11", n_all=2)
    with pytest.raises(UsageError, match="two reports of one side"):
        compare([whole, whole], [whole], "s-full", "autoattack")
    with pytest.raises(UsageError, match="suite 'pgd20'"):
        compare([whole], [whole], "s-full", "pgd20")


def test_a_real_part_report_names_the_images_it_measured(test_set: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "part.json"
    assert cli("eval", "--model", str(TINY), "--data", str(test_set), "--n", "12", "--methods", "s-fgsm",
               "--threads", "1", "--part", "2/3", "--json", str(out)) == 0
    measured = json.loads(out.read_text())
    indices = image_indices(measured)
    assert len(indices) == 4 and measured["total"] == 200
    labels = np.load(test_set)["y"]
    assert len(measured["methods"]["s-fgsm"]["per_image"]["correct_before"]) == 4
    assert indices == [int(i * 200 / 12) for i in range(1, 12, 3)] and all(0 <= labels[i] < 10 for i in indices)
    capsys.readouterr()
    assert cli("eval-compare", str(out), str(out), "--method", "s-fgsm", "--suite", "pgd20",
               "--json", str(tmp_path / "cmp.json")) == 0
    assert "4 images in both" in capsys.readouterr().out
    assert json.loads((tmp_path / "cmp.json").read_text())["a"]["reports"] == [str(out)]
