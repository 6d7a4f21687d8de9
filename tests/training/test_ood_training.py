"""The trainer's outlier terms (training.ood_training): split, sampling, modes, metadata."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import read_info
from safespot.training import Recipe
from training.data import DataError
from training.ood_training import outlier_loss, outlier_split
from training.trainer import TrainConfig, train, train_step


@pytest.fixture
def outliers_npz(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "outliers.npz"
    np.savez(path, x_outlier_train=rng.integers(0, 256, (60, 32, 32, 3), dtype=np.uint8),
             x_ood_test=np.zeros((5, 32, 32, 3), np.uint8))
    return path


def test_split_is_fixed_disjoint_and_complete() -> None:
    train_idx, val_idx = outlier_split(5000)
    assert len(val_idx) == 1000 and len(train_idx) == 4000
    assert not set(train_idx) & set(val_idx) and set(train_idx) | set(val_idx) == set(range(5000))
    again = outlier_split(5000)
    assert np.array_equal(again[0], train_idx) and np.array_equal(again[1], val_idx)
    with pytest.raises(DataError):
        outlier_split(10, val=10)


def test_outliers_must_come_from_x_outlier_train(tmp_path: Path) -> None:
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 32, 32, 3), np.uint8))
    with pytest.raises(DataError, match="x_outlier_train"):
        outlier_loss(tmp_path / "bad.npz", TrainConfig(), gamma=0.5, lam=0.1)


def test_extra_inputs_are_deterministic_per_step_and_leave_the_model_as_it_was(
        tiny_model, outliers_npz) -> None:
    model = copy.deepcopy(tiny_model).train()
    cfg = TrainConfig(recipe=Recipe(name="s-fgsm-adv"), batch_size=16)
    extra = outlier_loss(outliers_npz, cfg, gamma=0.5, lam=0.1, val=20)
    bn_before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    inputs_a, score_a = extra(model, 3)
    inputs_b, _ = extra(model, 3)
    inputs_c, _ = extra(model, 4)
    assert model.training  # switched to eval mode for the prediction and the attack, and back
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in bn_before.items())  # BN stats untouched
    assert inputs_a.shape == (16, 3, 32, 32)  # 8 outliers, then their 8 attacked points
    assert torch.equal(inputs_a, inputs_b) and not torch.equal(inputs_a, inputs_c)
    assert not torch.equal(inputs_a[:8], inputs_a[8:])
    loss, logs = score_a(model(inputs_a))
    assert {"ood_kl", "ood_adv_ce", "ood_safe"} <= set(logs)
    loss.backward()
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters())
    p = extra.params
    assert p["gamma"] == 0.5 and p["lambda"] == 0.1
    assert p["training"]["val_outliers"] == 20 and p["training"]["train_outliers"] == 40
    assert p["training"]["batch_size"] == 8 and p["training"]["attack"]["name"] == "s-fgsm-adv"
    oe_inputs, _ = outlier_loss(outliers_npz, cfg, gamma=0.5, lam=0.0, val=20)(model, 3)
    assert torch.equal(oe_inputs, inputs_a[:8])  # Outlier Exposure: the outliers alone


@pytest.mark.parametrize("lam", [0.0, 0.1])
def test_outliers_are_forwarded_in_train_mode_in_the_training_images_batch(
        tiny_model, outliers_npz, cifar_mini, lam: float) -> None:
    # Scored in eval mode while the cross-entropy trained in train mode, the outlier terms let
    # the network flatten its eval-mode outputs (the old ood/oe models lost their robustness).
    model = copy.deepcopy(tiny_model)
    cfg = TrainConfig(recipe=Recipe(name="adv-fast"), batch_size=16)
    extra = outlier_loss(outliers_npz, cfg, gamma=0.5, lam=lam, val=20)
    forwards: list[tuple[bool, int, bool]] = []
    model.register_forward_hook(lambda m, i, o: forwards.append((m.training, len(i[0]), torch.is_grad_enabled())))
    x = torch.from_numpy(cifar_mini["x_train"][:16]).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(cifar_mini["y_train"][:16]).long()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    _, logits, logs = train_step(model, model, opt, x, y, cfg.recipe, torch.Generator().manual_seed(0),
                                 extra_loss=extra, global_step=0)
    outliers = 8 if lam == 0 else 16
    assert [f for f in forwards if f[0]] == [(True, 16 + outliers, True)]
    assert logits.shape == (16, 10) and "ood_kl" in logs
    assert forwards[:-1] and not any(f[0] for f in forwards[:-1])  # prediction and attacks: eval mode


def test_a_short_run_with_outliers_records_them_in_the_checkpoint(
        tmp_path, cifar_mini, outliers_npz) -> None:
    data = tmp_path / "small.npz"
    np.savez(data, x=cifar_mini["x_train"][:160], y=cifar_mini["y_train"][:160])
    cfg = TrainConfig(recipe=Recipe(name="s-fgsm-adv"), arch_args={"width": 4, "hidden": 16}, data=str(data),
                      holdout=32, eval_pgd=8, epochs=1, batch_size=32, run_dir=str(tmp_path / "run"),
                      out=str(tmp_path / "ood.safetensors"), augment=True)
    out = train(cfg, extra_loss=outlier_loss(outliers_npz, cfg, gamma=0.5, lam=0.1, val=20), quiet=True)
    info = read_info(out)
    assert info.ood["gamma"] == 0.5 and info.ood["lambda"] == 0.1
    assert info.ood["training"]["outliers"] == "outliers.npz" and info.ood["training"]["val_outliers"] == 20


def test_outliers_are_attacked_like_the_training_images_of_the_same_epoch(
        tmp_path, cifar_mini, outliers_npz) -> None:
    data = tmp_path / "small.npz"
    np.savez(data, x=cifar_mini["x_train"][:160], y=cifar_mini["y_train"][:160])
    cfg = TrainConfig(recipe=Recipe(name="s-fgsm-adv", attack="pgd"), warmup=Recipe(name="adv-fast"),
                      warmup_epochs=2, data=str(data), holdout=32, batch_size=32, epochs=3)
    extra = outlier_loss(outliers_npz, cfg, gamma=0.5, lam=0.1, val=20)
    steps_per_epoch = (160 - 32) // 32
    assert extra.recipe_at(0) is cfg.warmup and extra.recipe_at(2 * steps_per_epoch - 1) is cfg.warmup
    assert extra.recipe_at(2 * steps_per_epoch) is cfg.recipe
    assert extra.params["training"]["warmup_attack"]["attack"] == "fast"
    assert extra.params["training"]["attack"]["attack"] == "pgd"
