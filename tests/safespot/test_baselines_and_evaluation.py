from __future__ import annotations

import torch

from safespot import SearchConfig
from safespot.baselines import s_fgsm, s_pgd
from safespot.evaluation import evaluate_methods


def test_baselines_step_towards_the_prediction_within_budget(tiny_model, test_images) -> None:
    x = test_images[0][:32]
    cfg = SearchConfig.preset("standard")
    with torch.no_grad():
        y_hat = tiny_model(x).argmax(1)
        loss_before = torch.nn.functional.cross_entropy(tiny_model(x), y_hat)
    for result in (s_fgsm(tiny_model, x, cfg), s_pgd(tiny_model, x, cfg)):
        assert torch.equal(result.labels, y_hat)
        assert float((result.x_safe - x).abs().max()) <= cfg.budget + 1e-6
        assert torch.equal(result.x_safe * 255, (result.x_safe * 255).round())
        with torch.no_grad():
            assert torch.nn.functional.cross_entropy(tiny_model(result.x_safe), y_hat) < loss_before
    assert s_pgd(tiny_model, x, cfg).grad_evals == 20 * 32


def test_protocol_reports_every_method_and_the_expected_order(tiny_model, test_images) -> None:
    x, y = test_images[0][:60], test_images[1][:60]
    reports = evaluate_methods(tiny_model, x, y, SearchConfig.preset("standard"))
    assert list(reports) == ["none", "s-fgsm", "s-pgd", "s-full"]
    none, full = reports["none"], reports["s-full"]
    assert none.safe_spot_rate is None
    assert 0 <= none.adv_acc <= none.clean_acc <= 1
    # The paper's ordering on a robust model: the full search beats doing nothing.
    assert full.adv_acc > none.adv_acc
    assert full.safe_spot_rate is not None and 0 < full.safe_spot_rate <= 1
    assert full.grad_evals_per_image > reports["s-fgsm"].grad_evals_per_image
    assert set(full.to_dict()) >= {"clean_acc", "adv_acc", "safe_spot_rate", "grad_evals_per_image", "seconds"}
    # Per image outcomes add up to the rates, so a sub-stride of the images can be re-scored.
    per_image, held = full.extra["per_image"], full.attacks["pgd20"]["held"]
    before = [c == "1" for c in per_image["correct_before"]]
    assert len(before) == len(held) == len(per_image["found"]) == 60
    safe = sum(b and h == "1" for b, h in zip(before, held, strict=True)) / sum(before)
    assert abs(safe - full.safe_spot_rate) < 1e-9
    assert held.count("1") / 60 == full.adv_acc
