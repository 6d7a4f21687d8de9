"""Figures in the docs are the JSON's, and the JSON measured the checkpoints we ship."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from models.checkpoint import file_sha256

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"


def table_rows(markdown: str, heading: str) -> list[list[str]]:
    """The cells of the first table under `heading`."""
    block: list[str] = []
    for line in markdown.split(heading, 1)[1].splitlines():
        if line.startswith("|"):
            block.append(line)
        elif block:
            break
    assert block, f"no table under {heading!r}"
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in block[2:]]


def number(cell: str) -> float:
    return float(re.sub(r"[*]", "", cell).split()[0])


def interval(cell: str) -> list[float]:
    found = re.search(r"\[([\d.]+), ([\d.]+)\]", cell)
    assert found, f"no interval in {cell!r}"
    return [float(found.group(1)), float(found.group(2))]


def test_the_ood_baselines_table_is_its_json_and_the_json_measured_the_shipped_ood_model() -> None:
    report = json.loads((RESULTS / "ood-eval-baselines-1000.json").read_text())
    assert report["model"]["sha256"] == file_sha256(ROOT / "models" / "zoo" / "ood.safetensors")
    rows = table_rows((ROOT / "docs" / "ood.md").read_text(), "## The baselines on 1,000 + 1,000 images")
    assert {r[0] for r in rows} == set(report["sets"])
    columns = [("msp", "auroc"), ("energy", "auroc"), ("mahalanobis", "auroc"),
               ("msp", "fpr95"), ("energy", "fpr95"), ("mahalanobis", "fpr95")]
    for name, *cells in rows:
        for (method, metric), cell in zip(columns, cells, strict=True):
            assert number(cell) == pytest.approx(report["sets"][name][method][metric] * 100, abs=0.051), (name, method)
            low, high = report["intervals"]["sets"][name][method][metric]
            assert interval(cell) == pytest.approx([low * 100, high * 100], abs=0.051), (name, method)
