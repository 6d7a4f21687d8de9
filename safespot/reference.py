"""S-Full, the paper's Algorithm 1, as one plain loop (docs/method.md, "Algorithm 1 in code").

This is the readable statement of what :class:`safespot.search.SafeSpotSearch`
computes for a fixed-length search (``early_exit=False``, ``keep="last"``: the
``paper`` preset).  One batch of images moves in lockstep; each image draws
from its own two generators, as in the engine, so the two agree image for
image (``tests/safespot/test_reference.py``).  The engine adds what a service
needs on top: slots that images join and leave, early exit, candidates, canvas
batches and re-encodes.  Use the engine; read this.
"""

from __future__ import annotations

import torch
from torch import Tensor

from safespot.config import SearchConfig
from safespot.losses import Classifier, evaluate, passes_per_call
from safespot.outer import init_outer, outer_step
from safespot.search import SearchResult
from safespot.threat import project, quantize_toward, random_in_ball, steepest_direction


def reference_safe_spots(model: Classifier, x_o: Tensor, cfg: SearchConfig,
                         rng_search: list[torch.Generator], rng_verify: list[torch.Generator]) -> SearchResult:
    """Algorithm 1 on x_o (N, C, H, W), 8-bit values in [0,1], for the predicted labels."""
    if cfg.early_exit or cfg.keep != "last":
        raise ValueError("the reference is S-Full: early_exit=False, keep='last' (the paper preset)")
    with torch.no_grad():
        logits = model(x_o)
    y, msp = logits.argmax(dim=1), logits.softmax(dim=1).amax(dim=1)
    x_s = _initial_point(cfg, x_o, rng_search)
    state, rows = init_outer(cfg, x_o, x_s), torch.arange(len(x_o), device=x_o.device)
    for _k in range(cfg.outer_steps):
        grad = torch.zeros_like(x_o)
        for _start in range(cfg.inner_starts):
            # Inner maximisation: T PGD steps from a random point of B_eps(x_s).
            raw = _random_points(x_s, cfg.eps, cfg, rng_search)
            x_a, attached = raw.clamp(0, 1), (raw >= 0) & (raw <= 1)
            for _t in range(cfg.inner_steps):
                moved = x_a + cfg.inner_alpha * steepest_direction(evaluate(model, x_a, y).grad, cfg.norm)
                in_ball = project(moved, x_s, cfg.eps, cfg.norm)
                # d x_a / d x_s is 1 unless [0,1] clipping froze the coordinate; for L-inf a
                # later clamp to the ball ties it to x_s again.
                tied_again = (moved - x_s).abs() > cfg.eps if cfg.norm == "linf" else torch.zeros_like(attached)
                attached = ((in_ball >= 0) & (in_ball <= 1)) & (attached | tied_again)
                x_a = in_ball.clamp(0, 1)
            # First-order outer gradient: the loss gradient at x_a^(T), masked.
            grad += evaluate(model, x_a, y).grad * attached / cfg.inner_starts
        # Outer minimisation: one step of the configured rule, back into B_delta(x_o) ∩ [0,1].
        x_s = outer_step(cfg, state, rows, x_s, x_o, grad)
    x_safe = quantize_toward(x_s, x_o)  # the 8-bit image a service returns
    found, passes, msp_adv, margin_adv = _verify(model, x_safe, y, cfg, rng_verify)
    passes = (passes + cfg.outer_steps * cfg.passes_per_outer_step) * passes_per_call(model)
    return SearchResult(x_safe=x_safe, found=found, labels=y, grad_evals=int(passes.sum()),
                        grad_evals_per_image=passes, outer_steps=torch.full_like(y, cfg.outer_steps),
                        msp=msp, msp_adv=msp_adv, margin_adv=margin_adv, safe_at_start=torch.zeros_like(found))


def _verify(model: Classifier, x: Tensor, y: Tensor, cfg: SearchConfig,
            rngs: list[torch.Generator]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Independent attacks on the 8-bit answer (docs/verification.md): the CE PGD filter's
    restarts, then targeted margin PGD toward each of the top other classes.  An image fails
    at the first iterate that is misclassified or within `verify_margin`; its numbers freeze.

    Returns found, passes spent, MSP at the CE runs' worst end point, and the least margin.
    """
    n = len(y)
    broke, passes = torch.zeros_like(y, dtype=torch.bool), torch.zeros_like(y)
    worst, msp_adv, margin_adv = x.new_full((n,), -torch.inf), x.new_zeros(n), x.new_full((n,), torch.inf)
    targets = y.new_zeros(0)
    runs = [None] * cfg.verify_restarts + list(range(cfg.verify_targets))  # None: untargeted CE
    for rank in runs:
        steps = cfg.verify_steps if rank is None else cfg.verify_target_steps
        x_a = _random_points(x, cfg.eps, cfg, rngs).clamp(0, 1)
        for t in range(steps + 1):
            ev = evaluate(model, x_a, y, None if rank is None else targets[:, rank])
            if not len(targets):  # the classes to target: the most likely others at the first pass
                targets = ev.logits.scatter(1, y[:, None], -torch.inf).topk(cfg.verify_targets, dim=1).indices
            live = ~broke
            margin = ev.logits.gather(1, y[:, None])[:, 0] - ev.logits.scatter(1, y[:, None], -torch.inf).amax(1)
            margin_adv = torch.where(live, torch.minimum(margin_adv, margin), margin_adv)
            passes += live
            broke_now = live & ((ev.pred != y) | (margin < cfg.verify_margin))
            if rank is None:  # the OOD score's MSP under attack: the CE run's end with the worst loss
                worse = live & (broke_now | (t == steps)) & (ev.loss > worst)
                msp_adv, worst = torch.where(worse, ev.msp, msp_adv), torch.where(worse, ev.loss, worst)
            broke |= broke_now
            alpha = cfg.verify_alpha if rank is None else cfg.target_alpha(t)
            x_a = project(x_a + alpha * steepest_direction(ev.grad, cfg.norm), x, cfg.eps, cfg.norm).clamp(0, 1)
    return ~broke, passes, msp_adv, margin_adv


def _random_points(centers: Tensor, radius: float, cfg: SearchConfig, rngs: list[torch.Generator]) -> Tensor:
    """Each image's uniform random point of its ball, drawn from the image's own generator."""
    return torch.cat([random_in_ball(c[None], radius, cfg.norm, g) for c, g in zip(centers, rngs, strict=True)])


def _initial_point(cfg: SearchConfig, x_o: Tensor, rngs: list[torch.Generator]) -> Tensor:
    """The outer iterate's start: x_o, a uniform point of B_delta(x_o), or of its sphere (L2)."""
    if cfg.init == "original":
        return x_o.clone()
    if cfg.init == "random":
        points = _random_points(x_o, cfg.budget, cfg, rngs)
    else:
        points = torch.stack([_on_sphere(c, cfg.budget, g) for c, g in zip(x_o, rngs, strict=True)])
    x_s = project(points, x_o, cfg.budget, cfg.norm).clamp(0, 1)
    return quantize_toward(x_s, x_o) if cfg.optimizer == "pgd" and cfg.norm == "linf" else x_s


def _on_sphere(center: Tensor, radius: float, rng: torch.Generator) -> Tensor:
    d = torch.randn(center.shape, generator=rng, device=center.device, dtype=center.dtype)
    return center + d * (radius / d.norm())
