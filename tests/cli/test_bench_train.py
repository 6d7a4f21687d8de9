"""The trainer's speed section of `safespot bench`: every configuration measured, ratios in one run."""

from __future__ import annotations

import pytest
import torch

from safespot.training import Recipe
from safespot_cli.bench_train import TRAIN_RECIPES, measure_training
from training.data import to_tensor


def test_every_recipe_precision_and_layout_is_measured_against_the_default(tiny_model, cifar_mini) -> None:
    x, y = to_tensor(cifar_mini["x_test"][:8]), torch.from_numpy(cifar_mini["y_test"][:8]).long()
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    out = measure_training(tiny_model, x, y, list(TRAIN_RECIPES), limit=1000.0, rounds=2, seconds=0.01)
    rows = {(r["recipe"], r["precision"], r["channels_last"]): r for r in out["rows"]}
    assert len(rows) == 2 * len(TRAIN_RECIPES) * 2 and out["batch"] == 8
    assert all(r["images_per_s"] > 0 for r in rows.values())
    assert rows[("adv-fast", "fp32", True)]["vs_default"] == 1.0
    assert rows[("adv-fast", "bf16", False)]["passes_per_image"] == 2  # FGSM-RS + the training pass
    assert rows[("s-fgsm-adv-pgd5", "fp32", True)]["passes_per_image"] == pytest.approx(0.25 + 5 + 1)
    assert rows[("adv-pgd2", "bf16", True)]["passes_per_image"] == 3  # the photo model's PGD-2 + the training pass
    assert TRAIN_RECIPES["adv-pgd2"].eps == pytest.approx(4 / 255)
    assert rows[("trades2", "fp32", True)]["passes_per_image"] == 4  # 2 KL steps + x and x' trained on
    r = rows[("s-fgsm-adv-pgd5", "bf16", True)]
    assert r["vs_fp32_limit"] == pytest.approx(r["images_per_s"] * r["passes_per_image"] / 1000.0, rel=1e-2)
    # Each configuration trains its own copy: the model under measurement is untouched.
    assert all(torch.equal(before[k], v) for k, v in tiny_model.state_dict().items())


def test_unknown_recipes_are_refused_by_name(tiny_model, cifar_mini) -> None:
    x, y = to_tensor(cifar_mini["x_test"][:4]), torch.from_numpy(cifar_mini["y_test"][:4]).long()
    with pytest.raises(ValueError, match="madry"):
        measure_training(tiny_model, x, y, ["madry"])


def test_passes_per_image_counts_only_the_safe_fraction_of_the_batch() -> None:
    assert Recipe("natural").passes_per_image == 0
    assert Recipe("adv-pgd", attack_steps=10).passes_per_image == 10
    assert Recipe("s-fgsm-adv", safe_fraction=0.5).passes_per_image == 1.5
    assert Recipe("s-pgd-adv", attack="pgd", attack_steps=10, safe_steps=10).passes_per_image == 20


def test_a_mistyped_recipe_stops_the_bench_before_it_measures_anything(tmp_path, capsys) -> None:
    from safespot_cli.main import main

    out = tmp_path / "bench.json"
    code = main(["bench", "--arch", "cifar-cnn", "--sections", "limit,train", "--train-recipes", "adv-fats",
                 "--json", str(out)])
    assert code == 2 and not out.exists()
    assert "unknown --train-recipes ['adv-fats']" in capsys.readouterr().err
