"""Figures in the docs are the JSON's, and the JSON measured the checkpoints we ship."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from models.checkpoint import file_sha256, read_info
from safespot.certification import summarize

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
    return float(re.sub(r"[*%]", "", cell).split()[0])


def interval(cell: str) -> list[float]:
    found = re.search(r"\[(-?[\d.]+), (-?[\d.]+)\]", cell)
    assert found, f"no interval in {cell!r}"
    return [float(found.group(1)), float(found.group(2))]


PHOTO_FLAG_SETS = {"Gaussian noise": "gaussian", "uniform noise": "uniform", "texture": "texture", "text": "text",
                   "screenshot": "screenshot", "Fashion-MNIST": "fashion-mnist",
                   "held-out photos (gorilla, groom)": "photos"}


def test_the_photo_flag_table_is_its_json_and_the_json_measured_the_shipped_photo_model() -> None:
    report = json.loads((RESULTS / "ood-eval-default-photo-flag.json").read_text())
    shipped = ROOT / "models" / "zoo" / "default.safetensors"
    assert report["model"]["sha256"] == file_sha256(shipped)
    calibration = json.loads((RESULTS / "ood-calibrate-default-photo.json").read_text())
    assert calibration["model"]["sha256"] == file_sha256(shipped)
    assert report["flag"]["threshold"] == calibration["ood"]["threshold"]
    lines = (ROOT / "docs" / "ood.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| test set (1,000 each"))
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[start + 2:] if line.startswith("|")]
    rows = rows[:len(PHOTO_FLAG_SETS) + 1]
    assert number(rows[0][1]) == pytest.approx((1 - report["flag"]["tpr"]) * 100, abs=0.051)
    assert {r[0] for r in rows[1:]} == set(PHOTO_FLAG_SETS)
    for name, flagged, auroc, msp in rows[1:]:
        key = PHOTO_FLAG_SETS[name]
        assert number(flagged) == pytest.approx((1 - report["flag"]["fpr"][key]) * 100, abs=0.051)
        assert number(auroc) == pytest.approx(report["sets"][key]["flag"]["auroc"] * 100, abs=0.051), name
        assert interval(auroc) == pytest.approx([v * 100 for v in report["intervals"]["sets"][key]["flag"]["auroc"]],
                                                abs=0.051), name
        assert number(msp) == pytest.approx(report["sets"][key]["msp"]["auroc"] * 100, abs=0.051), name


OOD_COLUMNS = ("safespot", "msp", "oe", "energy", "mahalanobis")


def test_the_ood_table_is_its_json_and_the_json_measured_the_shipped_ood_and_oe_models() -> None:
    report = json.loads((RESULTS / "ood-eval-1000.json").read_text())
    assert report["model"]["sha256"] == file_sha256(ROOT / "models" / "zoo" / "ood.safetensors")
    assert report["oe_model"]["sha256"] == file_sha256(ROOT / "models" / "zoo" / "oe.safetensors")
    assert report["safespot"]["mu_source"].startswith("checkpoint")  # the shipped calibration, not a default
    markdown = (ROOT / "docs" / "ood.md").read_text()
    for metric, heading in (("auroc", "AUROC (%) on 1,000 + 1,000"), ("fpr95", "FPR at 95% TPR (%) on 1,000 + 1,000")):
        rows = table_rows(markdown, heading)
        assert {r[0] for r in rows} == set(report["sets"])
        for name, *cells in rows:
            for method, cell in zip(OOD_COLUMNS, cells, strict=True):
                assert number(cell) == pytest.approx(report["sets"][name][method][metric] * 100, abs=0.051), \
                    (metric, name, method)
                low, high = report["intervals"]["sets"][name][method][metric]
                assert interval(cell) == pytest.approx([low * 100, high * 100], abs=0.051), (metric, name, method)
    rows = table_rows(markdown, "safe-spot score minus each baseline, AUROC points")
    assert {r[0] for r in rows} == set(report["sets"])
    for name, *cells in rows:
        for method, cell in zip(("msp", "oe"), cells, strict=True):
            low, high = report["intervals"]["sets"][name]["safespot_minus"][method]["auroc"]
            difference = report["sets"][name]["safespot"]["auroc"] - report["sets"][name][method]["auroc"]
            assert number(cell) == pytest.approx(difference * 100, abs=0.051), (name, method)
            assert interval(cell) == pytest.approx([low * 100, high * 100], abs=0.051), (name, method)
            # "better" only where the interval excludes zero
            assert ("better" in cell) == (low > 0), (name, method, cell)


CERTIFY_COLUMNS = ("certified_acc@0", "certified_acc@0.25", "certified_acc@0.5", "certified_acc@0.75",
                   "certified_acc@1", "abstain_rate", "empirical_robust_acc")


def test_the_certification_table_is_its_json_and_the_json_sums_every_line_of_the_shipped_gaussian() -> None:
    report = json.loads((RESULTS / "certify-gaussian.json").read_text())
    header, *lines = [json.loads(line) for line in (RESULTS / "certify-gaussian.jsonl").read_text().splitlines()]
    shipped = file_sha256(ROOT / "models" / "zoo" / "gaussian.safetensors")
    assert header["header"] and header["model"]["sha256"] == report["model"]["sha256"] == shipped
    assert header["settings"] == report["settings"] and report["settings"]["num"] == 100_000
    assert report["settings"]["alpha"] == 0.001
    # complete: one line per image of the strided subset, none twice
    assert len({line["index"] for line in lines}) == len(lines) == report["n"] == 200
    assert summarize(lines) == report["summary"]
    rows = table_rows((ROOT / "docs" / "results.md").read_text(), "Certified accuracy (%) on 200 JPEG-derived")
    assert [r[0] for r in rows] == ["originals", "safe spots (S-Full)"]
    for (_, *cells, mean_radius), part in zip(rows, ("original", "safe_spot"), strict=True):
        for key, cell in zip(CERTIFY_COLUMNS, cells, strict=True):
            assert number(cell) == pytest.approx(report["summary"][part][key] * 100, abs=0.051), (part, key)
        assert number(mean_radius) == pytest.approx(report["summary"][part]["mean_radius_correct"], abs=0.0006)


def test_the_wider_photo_candidate_row_is_its_own_card_and_training_record() -> None:
    info = read_info(ROOT / "models" / "candidates" / "default-photo-w48.safetensors")
    measured, training = info.metrics["test"], info.training
    assert measured["n"] == 10000 and measured["autoattack_n"] == 1000 and info.arch_args == {"width": 48}
    assert training["kept"] == "last" and training["kept_epoch"] == training["epochs"] == 15
    rows = table_rows((ROOT / "docs" / "models.md").read_text(),
                      "On the 10,000 val images (card `docs/results/card-default-photo-w48.md`")
    row = next(r for r in rows if "width 48" in r[0])
    for cell, value in zip(row[1:5], ("clean_acc", "pgd20_acc", "autoattack_acc", "pgd20_acc_same_images"),
                           strict=True):
        assert number(cell) == pytest.approx(measured[value] * 100, abs=0.005), value
    assert number(row[5]) == pytest.approx(training["seconds"] / 60, abs=0.05)


def test_the_trades_row_is_its_card_and_the_kept_epoch_its_log() -> None:
    card = (RESULTS / "card-default-photo-w48-trades.md").read_text()
    measured = dict(row[:2] for row in table_rows(card, "## Accuracy"))
    log = [json.loads(line) for line in
           (ROOT / "models" / "candidates" / "default-photo-w48-trades.log.jsonl").read_text().splitlines()]
    assert "Recipe: `trades`" in card and '"beta": 6.0' in card and "(10000 images)" in card
    docs = (ROOT / "docs" / "models.md").read_text()
    # The val table is the one after the per-epoch table, whose last row is the kept epoch.
    row = next(r for r in table_rows(docs, "trades, lr at zero: kept") if "TRADES" in r[0])
    assert number(row[1]) == number(measured["clean accuracy"])
    assert number(row[2]) == number(measured["PGD-20 accuracy"])
    assert number(row[3]) == number(measured["AutoAttack accuracy (1000 of the images)"])
    epochs = next(r for r in table_rows(docs, "**A different recipe on top: TRADES") if "kept" in r[1])
    assert number(epochs[3]) == pytest.approx(log[-1]["holdout_clean_acc"] * 100)
    assert number(epochs[4]) == pytest.approx(log[-1]["holdout_pgd_acc"] * 100)
