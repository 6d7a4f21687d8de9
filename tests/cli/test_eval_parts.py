"""`safespot eval --part K/M` and `safespot eval-merge`: one table from M processes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from safespot_cli import eval_cmd, eval_parts
from safespot_cli.errors import UsageError
from safespot_cli.eval_parts import interleave, parse_part
from tests.cli.clikit import make_cli

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "tiny.safetensors"
cli = make_cli(eval_cmd, eval_parts)


def evaluate(test_set: Path, out: Path, *extra: str) -> dict[str, Any]:
    assert cli("eval", "--model", str(TINY), "--data", str(test_set), "--n", "12", "--methods", "none,s-full",
               "--preset", "fast", "--attack", "apgd", "--threads", "1", "--json", str(out), *extra) == 0
    return dict(json.loads(out.read_text()))


@pytest.fixture(scope="module")
def runs(test_set: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The table on all 12 images, and as parts 1/3 to 3/3."""
    folder = tmp_path_factory.mktemp("runs")
    evaluate(test_set, folder / "whole.json")
    for k in (1, 2, 3):
        evaluate(test_set, folder / f"p{k}.json", "--part", f"{k}/3")
    return folder


@pytest.mark.slow
def test_three_parts_merge_into_the_table_of_all_images(runs: Path, tmp_path: Path) -> None:
    whole = json.loads((runs / "whole.json").read_text())
    parts = [json.loads((runs / f"p{k}.json").read_text()) for k in (1, 2, 3)]
    assert [p["n"] for p in parts] == [4, 4, 4] and parts[2]["part"] == {"k": 3, "of": 3, "n_all": 12}
    assert cli("eval-merge", *(str(runs / f"p{k}.json") for k in (2, 3, 1)),
               "--json", str(tmp_path / "merged.json")) == 0
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert merged["n"] == 12 and "part" not in merged and len(merged["merged_from"]) == 3
    assert merged["indices"] == whole["indices"]
    full, full_whole = merged["methods"]["s-full"], whole["methods"]["s-full"]
    # The same images in the same order: the classifier's verdicts on the originals agree exactly
    # (the searches and attacks draw other random numbers in other batches, so their outcomes may not).
    assert full["per_image"]["correct_before"] == full_whole["per_image"]["correct_before"]
    assert merged["methods"]["none"]["clean_acc"] == pytest.approx(whole["methods"]["none"]["clean_acc"], abs=1e-4)
    before = full["per_image"]["correct_before"]
    for suite, entry in full["attacks"].items():
        held = entry["held"]
        assert held == interleave([p["methods"]["s-full"]["attacks"][suite]["held"] for p in parts])
        kept = [h for h, b in zip(held, before, strict=True) if b == "1"]
        assert entry["safe_spot_rate"] == pytest.approx(kept.count("1") / len(kept), abs=1e-4)
        assert entry["found_but_broken"] == sum(p["methods"]["s-full"]["attacks"][suite]["found_but_broken"]
                                                for p in parts)
        for attack, survivors in entry["survivors"].items():
            assert survivors == sum(p["methods"]["s-full"]["attacks"][suite]["survivors"][attack] for p in parts)
    assert full["found"] == sum(p["methods"]["s-full"]["found"] for p in parts)
    assert full["safe_spot_rate"] == full["attacks"]["pgd20"]["safe_spot_rate"]


@pytest.mark.slow
def test_merge_refuses_what_is_not_one_measurement(runs: Path, tmp_path: Path) -> None:
    p1, p2, p3 = (str(runs / f"p{k}.json") for k in (1, 2, 3))
    other = json.loads(Path(p3).read_text())
    other["threat"]["eps"] = 0.02
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(UsageError, match="threat"):
        cli("eval-merge", p1, p2, str(tmp_path / "other.json"))
    with pytest.raises(UsageError, match="parts 1/3 to 3/3"):
        cli("eval-merge", p1, p2, p2)
    with pytest.raises(UsageError, match="--part K/M"):
        cli("eval-merge", p1, p2, str(runs / "whole.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UsageError, match="not a readable JSON"):
        cli("eval-merge", str(tmp_path / "bad.json"))


@pytest.mark.parametrize("text", ["0/2", "3/2", "2", "a/b", "1/0"])
def test_part_must_be_k_of_m(text: str) -> None:
    with pytest.raises(UsageError, match="--part"):
        parse_part(text)
    assert parse_part("2/5") == (2, 5)


def test_interleave_restores_image_order() -> None:
    assert interleave(["adg", "be", "cf"]) == "abcdefg"
