from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from safespot import SafeSpotSearch, SearchConfig, SlotState, find_safe_spots
from safespot.attacks import pgd
from safespot.search import image_seed
from safespot.threat import project, random_in_ball, steepest_direction

PRESET_CASES = [("fast", "linf"), ("standard", "linf"), ("standard", "l2"), ("paper", "linf"), ("paper", "l2")]


def _cfg(preset: str, norm: str, **kw) -> SearchConfig:
    if preset == "paper":
        kw.setdefault("outer_steps", 3)  # the paper's 100 are slow; the rules are the same
    return SearchConfig.preset(preset, norm=norm, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("preset", "norm"), PRESET_CASES)
def test_output_is_8bit_inside_budget_and_box(tiny_model, test_images, preset, norm) -> None:
    x = test_images[0][:24]
    cfg = _cfg(preset, norm)
    res = find_safe_spots(tiny_model, x, cfg)
    levels = res.x_safe * 255
    assert torch.equal(levels, levels.round()), "output must be on the 8-bit grid"
    assert res.x_safe.min() >= 0 and res.x_safe.max() <= 1
    diff = (levels.round() - (x * 255).round()).flatten(1)
    if norm == "linf":
        assert int(diff.abs().max()) <= round(cfg.budget * 255)
    else:
        assert float((diff / 255).norm(dim=1).max()) <= cfg.budget + 1e-6
    assert res.grad_evals == int(res.grad_evals_per_image.sum()) > 0
    assert res.x_safe.shape == x.shape and res.x_safe.dtype == x.dtype


def test_same_seed_same_result_and_seed_matters(tiny_model, test_images) -> None:
    x = test_images[0][:16]
    cfg = SearchConfig.preset("standard", seed=1)
    a, b = find_safe_spots(tiny_model, x, cfg), find_safe_spots(tiny_model, x, cfg)
    assert torch.equal(a.x_safe, b.x_safe) and torch.equal(a.found, b.found)
    assert torch.equal(a.grad_evals_per_image, b.grad_evals_per_image)
    c = find_safe_spots(tiny_model, x, cfg.replace(seed=2))
    assert not torch.equal(a.grad_evals_per_image, c.grad_evals_per_image)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_result_does_not_depend_on_batch_neighbours(tiny_model64, test_images, norm) -> None:
    x = test_images[0][:12].double()
    cfg = SearchConfig.preset("standard", norm=norm, batch_size=5)  # refills: slots change mid-run
    together = find_safe_spots(tiny_model64, x, cfg)
    for i in (0, 7, 11):
        alone = find_safe_spots(tiny_model64, x[i:i + 1], cfg.replace(batch_size=1))
        assert torch.equal(alone.x_safe[0], together.x_safe[i])
        assert bool(alone.found[0]) == bool(together.found[i])
        assert int(alone.grad_evals_per_image[0]) == int(together.grad_evals_per_image[i])


def test_engine_keeps_at_most_batch_size_in_flight(tiny_model, test_images) -> None:
    engine = SafeSpotSearch(tiny_model, SearchConfig.preset("fast", batch_size=4))
    engine.submit(test_images[0][:10], keys=[f"img{i}" for i in range(10)])
    seen, finished = 0, []
    while engine.pending:
        finished += engine.step()
        seen = max(seen, engine.active)
    assert seen <= 4
    assert sorted(r.key for r in finished) == sorted(f"img{i}" for i in range(10))


def test_progress_reports_each_images_state_outer_steps_and_passes(tiny_model, test_images) -> None:
    cfg = SearchConfig.preset("paper", outer_steps=2, inner_steps=3, batch_size=2)
    engine = SafeSpotSearch(tiny_model, cfg)
    engine.submit(test_images[0][:3])
    assert engine.progress() == []
    engine.step()
    assert [p.key for p in engine.progress()] == [0, 1]  # the third waits for a free slot
    assert {(p.state, p.outer_steps, p.grad_evals) for p in engine.progress()} == {(SlotState.SEARCHING, 0, 1)}
    for _ in range(cfg.passes_per_outer_step - 1):
        engine.step()
    assert {(p.state, p.outer_steps) for p in engine.progress()} == {(SlotState.SEARCHING, 1)}
    for _ in range(cfg.passes_per_outer_step):
        engine.step()
    assert {(p.state, p.outer_steps, p.grad_evals) for p in engine.progress()} == {(SlotState.VERIFYING_ANSWER, 2, 8)}
    standard = SafeSpotSearch(tiny_model, SearchConfig.preset("standard"))
    standard.submit(test_images[0][:2])
    standard.step()
    assert {p.state for p in standard.progress()} == {SlotState.VERIFYING_ORIGINAL}


def test_results_rank_the_most_probable_classes_on_the_original(tiny_model, test_images) -> None:
    x = test_images[0][:6]
    engine = SafeSpotSearch(tiny_model, SearchConfig.preset("fast"))
    engine.submit(x)
    with torch.no_grad():
        expected = tiny_model(x).softmax(dim=1).topk(5, dim=1)
    for r in engine.run():
        classes, probs = [c for c, _ in r.top], [p for _, p in r.top]
        assert classes == expected.indices[r.key].tolist() and classes[0] == r.label
        assert probs == pytest.approx(expected.values[r.key].tolist(), abs=1e-6)
        assert probs == sorted(probs, reverse=True) and probs[0] == pytest.approx(r.msp)


def test_a_model_with_fewer_than_five_classes_ranks_them_all(test_images) -> None:
    torch.manual_seed(0)
    three = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 3)).eval()
    engine = SafeSpotSearch(three, SearchConfig.preset("fast"))
    engine.submit(test_images[0][:1])
    (r,) = engine.run()
    assert sorted(c for c, _ in r.top) == [0, 1, 2]
    assert sum(p for _, p in r.top) == pytest.approx(1.0, abs=1e-5)


def test_rejects_images_off_the_8bit_grid(tiny_model) -> None:
    with pytest.raises(ValueError, match="8-bit"):
        find_safe_spots(tiny_model, torch.full((1, 3, 32, 32), 0.5001))


def test_found_means_a_fresh_attack_fails(tiny_model, test_images) -> None:
    x = test_images[0][:64]
    res = find_safe_spots(tiny_model, x, SearchConfig.preset("standard"))
    assert res.found.sum() >= 10
    safe = res.x_safe[res.found]
    fresh = pgd(tiny_model, safe, res.labels[res.found], steps=20,
                generator=torch.Generator().manual_seed(12345))
    assert float(fresh.success.float().mean()) <= 0.1  # independent starts: a few may differ


def test_safe_spots_are_never_less_robust_than_originals(tiny_model, test_images) -> None:
    x = test_images[0][:64]
    res = find_safe_spots(tiny_model, x, SearchConfig.preset("standard"))
    # An original that already passes verification is returned unchanged.
    assert torch.equal(res.x_safe[res.safe_at_start], x[res.safe_at_start])
    g = torch.Generator().manual_seed(7)
    held_before = ~pgd(tiny_model, x, res.labels, steps=20, generator=g).success
    held_after = ~pgd(tiny_model, res.x_safe, res.labels, steps=20, generator=g).success
    assert int(held_after.sum()) >= int(held_before.sum())


def _unrolled_first_order_gradient(model, x_s, y, noise, cfg):
    """Autograd through T PGD steps, treating each step direction as a constant
    (the first-order approximation), plus which coordinates were ever clipped to
    [0,1] and which ever landed exactly on the L-inf ball's face (a tie, where the
    derivative is not defined and autograd splits it)."""
    x_s = x_s.clone().requires_grad_(True)
    raw = x_s + noise
    clipped = (raw < 0) | (raw > 1)
    tie = torch.zeros_like(clipped)
    x_a = raw.clamp(0, 1)
    for _ in range(cfg.inner_steps):
        z = x_a.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(z), y, reduction="sum"), z)
        stepped = x_a + cfg.inner_alpha * steepest_direction(g, cfg.norm).detach()
        tie |= ((stepped - x_s).abs() - cfg.eps).abs() < 1e-9
        moved = project(stepped, x_s, cfg.eps, cfg.norm)
        clipped |= (moved < 0) | (moved > 1)
        x_a = moved.clamp(0, 1)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_a), y, reduction="sum"), x_s)
    return grad, clipped, tie


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_first_order_outer_gradient_matches_autograd(tiny_model64, test_images, norm) -> None:
    x = test_images[0][20:23].double()
    lr = 1e-5  # a tiny plain-gradient step, so x_s - lr * g is never projected
    cfg = SearchConfig(norm=norm, eps=0.5 if norm == "l2" else 8 / 255, outer_steps=1, inner_steps=5,
                       optimizer="sgd", lr=lr, init="original", early_exit=False, keep="last")
    engine = SafeSpotSearch(tiny_model64, cfg)
    engine.submit(x)
    for _ in range(cfg.inner_steps + 1):  # exactly one inner attack, then the outer step
        engine.step()
    stepped = engine._slots.x_s.clone()
    y = engine._slots.y
    engine_grad = (x - stepped) / lr
    for i in range(x.shape[0]):
        g = torch.Generator().manual_seed(image_seed(cfg.seed, x[i], "search"))
        noise = random_in_ball(x[i:i + 1], cfg.eps, cfg.norm, g) - x[i:i + 1]
        ref, clipped, tie = _unrolled_first_order_gradient(tiny_model64, x[i:i + 1], y[i:i + 1], noise, cfg)
        # The outer step itself clips to [0,1] where the original is black or white: skip those.
        interior = (x[i] > 0) & (x[i] < 1)
        free = ~clipped[0] & interior
        assert free.float().mean() > 0.5
        torch.testing.assert_close(engine_grad[i][free], ref[0][free], rtol=1e-4, atol=1e-6)
        if norm == "linf":  # for L-inf the mask is exact: autograd agrees wherever it is defined
            defined = interior & ~tie[0]
            torch.testing.assert_close(engine_grad[i][defined], ref[0][defined], rtol=1e-4, atol=1e-6)


def test_images_of_different_sizes_through_a_view(tiny_model, cifar_mini) -> None:
    from safespot.canvas import ResizeView

    big = torch.from_numpy(cifar_mini["x_test"][:2]).permute(0, 3, 1, 2).float() / 255
    images = [F.interpolate(big[:1], size=(48, 40), mode="nearest")[0],
              big[1, :1],  # grey, 32x32
              F.interpolate(big[1:], size=(64, 64), mode="nearest")[0]]
    images = [(img * 255).round() / 255 for img in images]
    engine = SafeSpotSearch(tiny_model, SearchConfig.preset("fast"), view=ResizeView((32, 32)))
    engine.submit(images)
    results = sorted(engine.run(), key=lambda r: r.key)
    for img, r in zip(images, results, strict=True):
        assert r.x_safe.shape == img.shape
        assert float((r.x_safe - img).abs().max()) <= 8 / 255 + 1e-6


def test_found_survives_a_fresh_targeted_apgd(tiny_model, test_images) -> None:
    from safespot.yardstick import breaker

    x = test_images[0][:48]
    res = find_safe_spots(tiny_model, x, SearchConfig.preset("standard"))
    found = res.found.nonzero().flatten()[:12]
    assert len(found) >= 8
    broken = breaker("apgd-t", "linf", 8 / 255, seed=4242)(tiny_model, res.x_safe[found], res.labels[found])
    assert int(broken.sum()) == 0


def test_verification_draws_do_not_move_the_search(tiny_model, test_images) -> None:
    """The search and its verification have independent random streams: however
    much verification runs, the search's own iterates are the same."""
    x = test_images[0][:6]
    base = SearchConfig.preset("standard", outer_steps=3, early_exit=False, keep="last")
    a = find_safe_spots(tiny_model, x, base.replace(verify_targets=0, verify_restarts=1))
    b = find_safe_spots(tiny_model, x, base.replace(verify_targets=4, verify_restarts=3))
    assert torch.equal(a.x_safe, b.x_safe)
    assert int(b.grad_evals) > int(a.grad_evals)
    for i in range(len(x)):
        assert image_seed(0, x[i], "search") != image_seed(0, x[i], "verify")


def test_a_margin_no_image_reaches_is_never_found(tiny_model, test_images) -> None:
    x = test_images[0][:8]
    cfg = SearchConfig.preset("fast", verify_margin=1e6)
    res = find_safe_spots(tiny_model, x, cfg)
    assert not bool(res.found.any())
    assert torch.equal(res.outer_steps, torch.full_like(res.outer_steps, cfg.outer_steps))


def test_targeted_runs_ascend_the_margin_toward_the_top_classes(tiny_model64, test_images) -> None:
    from safespot.losses import evaluate

    x = test_images[0][:4].double()
    y = tiny_model64(x).argmax(1)
    target = torch.tensor([-1, 3, 5, 0])
    target[1:] = torch.where(target[1:] == y[1:], (target[1:] + 1) % 10, target[1:])
    ev = evaluate(tiny_model64, x, y, target)
    z = x.clone().requires_grad_(True)
    logits = tiny_model64(z)
    ce = F.cross_entropy(logits[:1], y[:1], reduction="sum")
    margins = (logits[1:].gather(1, target[1:, None]) - logits[1:].gather(1, y[1:, None])).sum()
    (grad,) = torch.autograd.grad(ce + margins, z)
    torch.testing.assert_close(ev.grad, grad)
    torch.testing.assert_close(ev.loss[1:], (logits[1:].gather(1, target[1:, None])
                                             - logits[1:].gather(1, y[1:, None]))[:, 0].detach())


def test_verification_is_described_with_its_cost(tiny_model) -> None:
    cfg = SearchConfig.preset("standard")
    v = cfg.verification()
    assert [r["loss"] for r in v["runs"]] == ["ce", "margin"]
    assert v["passes"] == (cfg.verify_steps + 1) * cfg.verify_restarts + (cfg.verify_target_steps + 1) * cfg.verify_targets
    assert float(cfg.target_alpha(0)) == pytest.approx(cfg.eps / 2)
    assert float(cfg.target_alpha(cfg.verify_target_steps - 1)) == pytest.approx(cfg.eps / 8)


def test_bf16_search_answers_on_the_grid_and_its_found_survive_a_float32_attack(tiny_model, test_images) -> None:
    x = test_images[0][:32]
    res = find_safe_spots(tiny_model, x, SearchConfig.preset("standard", precision="bf16"))
    levels = res.x_safe * 255
    assert res.x_safe.dtype == torch.float32 and torch.equal(levels, levels.round())
    assert int((levels - x * 255).abs().max()) <= 8
    assert res.found.sum() >= 5
    safe, labels = res.x_safe[res.found], res.labels[res.found]
    fresh = pgd(tiny_model, safe, labels, steps=20, generator=torch.Generator().manual_seed(777))
    assert float(fresh.success.float().mean()) <= 0.1


def test_bf16_passes_differ_from_float32_ones(tiny_model, test_images) -> None:
    # The flag must reach the passes: identical results would mean autocast never ran.
    x = test_images[0][:16]
    fp32 = find_safe_spots(tiny_model, x, SearchConfig.preset("standard"))
    bf16 = find_safe_spots(tiny_model, x, SearchConfig.preset("standard", precision="bf16"))
    assert not (torch.equal(fp32.x_safe, bf16.x_safe) and torch.equal(fp32.margin_adv, bf16.margin_adv))


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="precision"):
        SearchConfig.preset("standard", precision="fp8")


def test_a_confirm_check_that_always_holds_changes_nothing_and_one_that_never_does_finds_nothing(
        tiny_model, test_images) -> None:
    x = test_images[0][:8]
    cfg = SearchConfig.preset("fast")
    plain = find_safe_spots(tiny_model, x, cfg)
    seen: list[int] = []

    def always(points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        seen.append(len(points))
        assert torch.equal(points, (points * 255).round() / 255)  # 8-bit points, as published
        return torch.ones(len(points), dtype=torch.bool)

    same = find_safe_spots(tiny_model, x, cfg, confirm=always)
    assert torch.equal(same.x_safe, plain.x_safe) and torch.equal(same.found, plain.found)
    assert sum(seen) == int(plain.found.sum()) > 0  # asked once per point that passed verification
    never = find_safe_spots(tiny_model, x, cfg, confirm=lambda p, y: torch.zeros(len(p), dtype=torch.bool))
    assert not bool(never.found.any())
    # A rejected point sends the search on: every image spends its outer steps.
    assert torch.equal(never.outer_steps, torch.full_like(never.outer_steps, cfg.outer_steps))


@pytest.mark.slow
def test_confirming_with_apgd_keeps_only_points_apgd_cannot_break(tiny_model, test_images) -> None:
    from safespot.yardstick import confirmer

    x = test_images[0][:8]
    cfg = SearchConfig.preset("fast")
    check = confirmer(tiny_model, "apgd", norm="linf", eps=cfg.eps)
    res = find_safe_spots(tiny_model, x, cfg, confirm=check)
    found = res.found.nonzero().flatten()
    assert len(found) > 0
    assert bool(check(res.x_safe[found], res.labels[found]).all())  # the same draws: it held
    with pytest.raises(ValueError, match="suite"):
        confirmer(tiny_model, "pgd100", norm="linf", eps=cfg.eps)
