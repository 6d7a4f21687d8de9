"""`safespot eval --attack` and `safespot model-card` on the tiny model: the yardstick in the JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from models.checkpoint import read_info
from safespot_cli import card_cmd, eval_cmd
from safespot_cli.errors import UsageError
from tests.cli.clikit import make_cli

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "tiny.safetensors"


cli = make_cli(eval_cmd, card_cmd)


def test_eval_records_each_suite_and_found_but_broken(test_set: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval.json"
    assert cli("eval", "--model", str(TINY), "--data", str(test_set), "--n", "24", "--methods",
               "none,s-full", "--preset", "fast", "--attack", "apgd", "--threads", "1",
               "--json", str(out)) == 0
    report = json.loads(out.read_text())
    full, none = report["methods"]["s-full"], report["methods"]["none"]
    assert set(full["attacks"]) == {"pgd20", "apgd"}
    apgd = full["attacks"]["apgd"]
    assert list(apgd["survivors"]) == ["apgd-ce", "apgd-t"]
    assert apgd["survivors"]["apgd-t"] <= apgd["survivors"]["apgd-ce"]
    assert 0 <= apgd["found_but_broken"] <= full["found"]
    assert apgd["adv_acc"] <= full["attacks"]["pgd20"]["adv_acc"] + 1 / 24
    assert full["verification"]["runs"][1]["targeted"] is True
    assert "safe_spot_rate" not in none["attacks"]["apgd"]
    table = capsys.readouterr().out
    assert "adv acc (APGD-CE+T)" in table and "found but broken" in table


def test_eval_refuses_an_unknown_suite(test_set: Path) -> None:
    with pytest.raises(UsageError, match="autoattack"):
        cli("eval", "--model", str(TINY), "--data", str(test_set), "--n", "4", "--attack", "pgd100")


@pytest.mark.slow
def test_model_card_reports_autoattack_beside_pgd20(tmp_path: Path, test_set: Path) -> None:
    ckpt = tmp_path / "tiny.safetensors"
    shutil.copy(TINY, ckpt)
    assert cli("model-card", str(ckpt), "--data", str(test_set), "--n", "40", "--autoattack-n", "20") == 0
    test = read_info(ckpt).metrics["test"]
    assert test["autoattack_n"] == 20
    assert test["autoattack_acc"] <= test["pgd20_acc_same_images"] + 0.05
    assert list(test["autoattack_survivors"]) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert "AutoAttack accuracy (20 of the images)" in ckpt.with_suffix(".md").read_text()


def test_set_overrides_search_fields_and_refuses_unknown_ones(test_set: Path, tmp_path: Path) -> None:
    from safespot_cli.common import parse_overrides

    assert parse_overrides(["outer_steps=90", "verify-margin=0.2", "inner_loss=margin", "early_exit=false"]) == {
        "outer_steps": 90, "verify_margin": 0.2, "inner_loss": "margin", "early_exit": False}
    for bad in ("nonsense=1", "eps=0.1", "outer_steps", "outer_steps=many"):
        with pytest.raises(UsageError):
            parse_overrides([bad])
    out = tmp_path / "eval.json"
    assert cli("eval", "--model", str(TINY), "--data", str(test_set), "--n", "8", "--methods", "s-full",
               "--preset", "fast", "--set", "verify_targets=1", "--set", "verify_margin=0.5",
               "--json", str(out)) == 0
    config = json.loads(out.read_text())["config"]
    assert config["verify_targets"] == 1 and config["verify_margin"] == 0.5


def test_eval_refuses_images_the_checkpoint_cannot_take(tmp_path: Path, cifar_mini: dict[str, np.ndarray]) -> None:
    small = tmp_path / "small.npz"  # 16x16 images for a 32x32 checkpoint: a set made for another model
    np.savez(small, x=cifar_mini["x_test"][:, ::2, ::2], y=cifar_mini["y_test"])
    with pytest.raises(UsageError, match=r"16x16.*takes 10 .* 32x32"):
        cli("eval", "--model", str(TINY), "--data", str(small), "--n", "4", "--methods", "none")


def test_eval_data_defaults_to_the_checkpoint_domains_set(tmp_path: Path, test_set: Path) -> None:
    from safespot_cli.eval_data import load_eval_data

    info = read_info(TINY)
    (tmp_path / "cifar10_test.npz").write_bytes(test_set.read_bytes())
    assert info.domain in ("", "cifar10")  # no domain, or CIFAR-10's: the CIFAR-10 test set
    assert len(load_eval_data(None, "test", str(tmp_path), info, 8).y) == 8
    info.domain = "tinyimagenet"  # a photo model's: its own set, missing here, named in the error
    with pytest.raises(UsageError, match="Tiny ImageNet"):
        load_eval_data(None, "test", str(tmp_path), info, 8)


def test_eval_confirm_records_the_extra_check_and_refuses_an_unknown_suite(test_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    assert cli("eval", "--model", str(TINY), "--data", str(test_set), "--n", "6", "--methods", "s-full",
               "--preset", "fast", "--confirm", "apgd", "--threads", "1", "--json", str(out)) == 0
    full = json.loads(out.read_text())["methods"]["s-full"]
    assert full["confirm"]["suite"] == "apgd" and full["confirm"]["attacks"] == ["apgd-ce", "apgd-t"]
    with pytest.raises(UsageError, match="autoattack"):
        cli("eval", "--model", str(TINY), "--data", str(test_set), "--n", "4", "--confirm", "pgd100")
