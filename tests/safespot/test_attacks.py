from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from safespot.attacks import fgsm, pgd
from safespot.threat import flat_norm

EPS = {"linf": 8 / 255, "l2": 0.5}


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_and_fgsm_stay_in_budget_and_box(tiny_model, test_images, norm) -> None:
    x, y = test_images[0][:32], test_images[1][:32]
    for adv in (pgd(tiny_model, x, y, norm=norm, eps=EPS[norm], steps=5).x_adv,
                fgsm(tiny_model, x, y, norm=norm, eps=EPS[norm], random_start=True, alpha=1.25 * EPS[norm])):
        assert float(flat_norm(adv - x, norm).max()) <= EPS[norm] * (1 + 1e-5)
        assert adv.min() >= 0 and adv.max() <= 1


def test_untargeted_pgd_raises_the_loss_and_targeted_lowers_it(tiny_model, test_images) -> None:
    x, y = test_images[0][:64], test_images[1][:64]
    with torch.no_grad():
        before = F.cross_entropy(tiny_model(x), y, reduction="none")
    up = pgd(tiny_model, x, y, steps=10, stop_on_success=False)
    down = pgd(tiny_model, x, y, steps=10, targeted=True, random_start=False)
    assert float(up.loss.mean()) > float(before.mean())
    assert float(down.loss.mean()) < float(before.mean())
    assert up.grad_evals == 11


def test_restarts_never_weaken_the_attack(tiny_model, test_images) -> None:
    x, y = test_images[0][:64], test_images[1][:64]
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    once = pgd(tiny_model, x, y, steps=5, restarts=1, generator=g1)
    thrice = pgd(tiny_model, x, y, steps=5, restarts=3, generator=g2)
    assert bool((thrice.success | ~once.success).all())  # the first restart is the same draw


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_our_pgd_is_at_least_as_strong_as_torchattacks(tiny_model, test_images, norm) -> None:
    import torchattacks  # dev extra: an independent implementation to compare with
    x, y = test_images[0], test_images[1]
    eps, alpha = EPS[norm], EPS[norm] / 4
    if norm == "linf":
        theirs = torchattacks.PGD(tiny_model, eps=eps, alpha=alpha, steps=10, random_start=False)
    else:
        theirs = torchattacks.PGDL2(tiny_model, eps=eps, alpha=alpha, steps=10, random_start=False)
    their_adv = theirs(x, y)
    with torch.no_grad():
        their_success = tiny_model(their_adv).argmax(1) != y
    ours = pgd(tiny_model, x, y, norm=norm, eps=eps, alpha=alpha, steps=10, random_start=False).success
    # Same deterministic trajectory; ours also counts intermediate iterates, so it can only add.
    assert int(ours.sum()) >= int(their_success.sum())
    assert int((their_success & ~ours).sum()) <= 1
