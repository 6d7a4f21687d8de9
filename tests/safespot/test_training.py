"""Training recipes: TRADES' adversary and loss (the other recipes are covered through the trainer)."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from safespot.training import (
    Recipe,
    trades_adversary,
    training_batch,
    training_inputs,
    training_loss,
)
from training.data import to_tensor

EPS = 4 / 255


@pytest.fixture()
def batch(cifar_mini) -> tuple[torch.Tensor, torch.Tensor]:
    return to_tensor(cifar_mini["x_test"][:16]), torch.from_numpy(cifar_mini["y_test"][:16]).long()


def _kl(model, x, x_adv) -> torch.Tensor:
    with torch.no_grad():
        return F.kl_div(F.log_softmax(model(x_adv), 1), F.softmax(model(x), 1), reduction="none").sum(1)


def test_the_trades_adversary_stays_in_the_ball_and_moves_the_prediction_away(tiny_model, batch) -> None:
    x, y = batch
    recipe = Recipe("trades", eps=EPS, attack_steps=3, attack_step=0.5)
    x_adv = trades_adversary(tiny_model, x, recipe, torch.Generator().manual_seed(0))
    assert (x_adv - x).abs().max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert not x_adv.requires_grad
    # Against a random sign point of the same size, the KL ascent moves the prediction much further.
    noise = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(1)).float() * 2 - 1
    x_random = (x + EPS * noise).clamp(0, 1)
    assert _kl(tiny_model, x, x_adv).mean() > 2 * _kl(tiny_model, x, x_random).mean()
    # training_inputs dispatches to it (same generator, same point).
    again = training_inputs(tiny_model, x, y, recipe, torch.Generator().manual_seed(0))
    assert torch.equal(again, x_adv)


def test_the_trades_loss_is_clean_cross_entropy_plus_beta_kl(tiny_model, batch) -> None:
    x, y = batch
    recipe = Recipe("trades", eps=EPS, attack_steps=2, attack_step=0.5, beta=3.0)
    x_adv = trades_adversary(tiny_model, x, recipe, torch.Generator().manual_seed(0))
    forwarded = training_batch(x, x_adv, recipe)
    assert torch.equal(forwarded, torch.cat([x, x_adv]))
    with torch.no_grad():
        logits = tiny_model(forwarded)
        loss, adv_logits = training_loss(logits, y, recipe)
        clean = tiny_model(x)
    expected = F.cross_entropy(clean, y) + 3.0 * _kl(tiny_model, x, x_adv).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    assert torch.allclose(adv_logits, tiny_model(x_adv).detach(), atol=1e-5)
    # No perturbation, no KL: the loss is the clean cross-entropy alone.
    with torch.no_grad():
        same, _ = training_loss(tiny_model(torch.cat([x, x])), y, recipe)
    assert same.item() == pytest.approx(F.cross_entropy(clean, y).item(), rel=1e-5)


def test_other_recipes_train_on_their_inputs_with_cross_entropy(tiny_model, batch) -> None:
    x, y = batch
    recipe = Recipe("adv-pgd", eps=EPS, attack_steps=1)
    assert training_batch(x, x + 0.01, recipe).shape == x.shape
    with torch.no_grad():
        logits = tiny_model(x)
    loss, same = training_loss(logits, y, recipe)
    assert same is logits and loss.item() == pytest.approx(F.cross_entropy(logits, y).item())


def test_trades_counts_its_two_training_passes() -> None:
    assert Recipe("trades", attack_steps=2).passes_per_image == 2
    assert Recipe("trades").training_passes == 2 and Recipe("adv-pgd").training_passes == 1
