from __future__ import annotations

import torch

from safespot.config import SearchConfig
from safespot.outer import init_outer, outer_step, tanh_to_box


def test_rmsprop_tanh_matches_torch_rmsprop() -> None:
    cfg = SearchConfig(optimizer="rmsprop-tanh", lr=0.1)
    g = torch.Generator().manual_seed(0)
    x_o = torch.randint(0, 256, (2, 3, 4, 4), generator=g).float() / 255
    state = init_outer(cfg, x_o, x_o.clone())
    assert state.w is not None and state.lo is not None and state.hi is not None
    w = state.w.clone().requires_grad_(True)
    reference = torch.optim.RMSprop([w], lr=0.1)
    idx = torch.arange(2)
    x_s = x_o.clone()
    for _ in range(4):
        grad_x = torch.randn(x_o.shape, generator=g)
        x_s = outer_step(cfg, state, idx, x_s, x_o, grad_x)
        reference.zero_grad()
        tanh_to_box(w, state.lo, state.hi).backward(grad_x)
        reference.step()
        torch.testing.assert_close(state.w, w.detach(), rtol=1e-5, atol=1e-6)
        assert bool((x_s >= state.lo - 1e-7).all() and (x_s <= state.hi + 1e-7).all())


def test_pgd_outer_step_descends_and_stays_in_budget() -> None:
    cfg = SearchConfig.preset("standard")
    x_o = torch.full((1, 3, 4, 4), 0.5)
    grad = torch.ones_like(x_o)
    x_s = x_o.clone()
    for _ in range(10):
        x_s = outer_step(cfg, init_outer(cfg, x_o, x_s), torch.arange(1), x_s, x_o, grad)
    assert torch.allclose(x_s, x_o - cfg.budget)
