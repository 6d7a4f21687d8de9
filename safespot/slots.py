"""The per-pass state machine behind :class:`safespot.search.SafeSpotSearch`.

A :class:`Slots` object holds the images in flight, one row per image, and
:meth:`Slots.advance` moves every row one step given the pass taken at its
current point ``x_a``.  A row is always running one PGD attack, and its
:class:`SlotState` says which:

- SEARCHING: the search's attack on x_s.  When its last start ends, the
  outer step moves x_s (first-order gradient); an iterate it never broke is
  a candidate (early-exit mode), else the search goes on, or, once the outer
  steps are spent, the answer is verified.
- VERIFYING_*: the verification attacks on an 8-bit point (own random
  stream): the untargeted cross-entropy filter's restarts, then one targeted
  margin run per most likely other class (ranked at the verification's first
  pass).  An iterate that is misclassified, or whose margin falls below
  ``verify_margin``, fails the point at once; surviving every step of every
  run makes it a safe spot and the image finishes.  A failed ORIGINAL or
  CANDIDATE sends the row back to searching; a failed ANSWER finishes the
  image as not found.

:func:`safespot.reference.reference_safe_spots` is the same search without
slots, for the fixed-length (``paper``) case.

All transitions are vectorised over rows; only random starts loop over rows
(each image draws from its own generator, so results do not depend on batch
neighbours).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from safespot.canvas import ball_point, cat_rows, map_rows
from safespot.config import SearchConfig
from safespot.losses import BEST_OTHER, CROSS_ENTROPY, Evaluation
from safespot.outer import OuterState, init_outer, outer_step
from safespot.publish import Reencode
from safespot.threat import (
    per_sample,
    project,
    quantize_toward,
    steepest_direction,
)

# (8-bit points, labels) -> True where the point held: an extra attack that must also fail
# before a point counts as found (an evaluation tool: its passes are not counted).
Confirm = Callable[[Tensor, Tensor], Tensor]


class SlotState(enum.IntEnum):
    """What a row is doing (stored per row in ``Slots.state``)."""

    SEARCHING = 0  # the inner attack on x_s
    VERIFYING_ORIGINAL = 1  # x_o itself: if it holds, the image is returned unchanged
    VERIFYING_CANDIDATE = 2  # an iterate the inner attack never broke; failing resumes the search
    VERIFYING_ANSWER = 3  # the answer once the outer steps ran out; its verdict is final


TOP_K = 5  # classes reported per image with their probabilities on x_o (ImageResult.top)


@dataclass(frozen=True)
class SlotProgress:
    """Where one image in flight stands."""

    key: Any
    state: SlotState
    outer_steps: int  # outer iterations done
    grad_evals: int  # forward+backward passes spent so far


@dataclass
class Slots:
    cfg: SearchConfig
    keys: list[Any]
    sizes: list[tuple[int, ...]]  # each image's own (C, H, W) inside the common canvas
    rng_search: list[torch.Generator]
    rng_verify: list[torch.Generator]
    outer: OuterState
    reencode: Reencode | None  # plan for (and verify after) a platform's re-encode
    # Images (rows x C x H x W).
    x_o: Tensor  # the original
    x_s: Tensor  # the outer iterate
    best: Tensor  # the iterate with the lowest inner adversarial loss so far
    center: Tensor  # the point under attack (x_s or a candidate)
    x_a: Tensor  # the attack's current point
    attached: Tensor  # bool: d x_a / d x_s is 1 here (no [0,1] clipping froze it)
    grad_acc: Tensor  # outer gradient, averaged over inner starts
    candidate: Tensor  # 8-bit point under verification (the answer when it ends)
    # Per-row vectors.
    y: Tensor
    top_classes: Tensor  # (rows, min(TOP_K, classes)) the most probable classes on x_o, best first
    top_probs: Tensor  # their softmax probabilities on x_o (column 0: the MSP of x_o)
    state: Tensor  # SlotState
    t: Tensor  # attack step
    r: Tensor  # restart / start
    k: Tensor  # outer iterations done
    passes: Tensor
    broke: Tensor  # current attack succeeded
    safe_at_start: Tensor
    loss_acc: Tensor
    best_loss: Tensor
    worst_loss: Tensor  # verification
    msp_adv: Tensor
    margin_adv: Tensor
    targets: Tensor  # (rows, verify_targets) classes of the targeted verification runs
    confirm: Confirm | None = None  # a further check after verification passes (search.py)

    ROWS = ("x_o", "x_s", "best", "center", "x_a", "attached", "grad_acc", "candidate", "y",
            "top_classes", "top_probs", "state", "t", "r", "k", "passes", "broke", "safe_at_start",
            "loss_acc", "best_loss", "worst_loss", "msp_adv", "margin_adv", "targets")

    @property
    def msp(self) -> Tensor:
        """MSP of x_o: the first of the top probabilities."""
        return self.top_probs[:, 0]

    @property
    def size(self) -> int:
        return len(self.keys)

    # ------------------------------------------------------------ lifecycle
    @classmethod
    def start(cls, cfg: SearchConfig, keys: list[Any], sizes: list[tuple[int, ...]], x_o: Tensor,
              y: Tensor, probs: Tensor, rng_search: list[torch.Generator],
              rng_verify: list[torch.Generator], reencode: Reencode | None = None,
              confirm: Confirm | None = None) -> Slots:
        """Rows for new images x_o with labels y and softmax probabilities ``probs`` (rows,
        classes) on x_o: verify x_o first, or start searching.

        x_o is a canvas batch: image i fills ``x_o[i, :C, :H, :W]`` for its
        size (C, H, W) and the rest is zero padding that never changes.
        """
        x_s = _initial_point(cfg, x_o, sizes, rng_search)
        n, dev = x_o.shape[0], x_o.device
        top_probs, top_classes = probs.to(x_o.dtype).topk(min(TOP_K, probs.shape[1]), dim=1)

        def vec(value: float | bool | int, dtype: torch.dtype) -> Tensor:
            return torch.full((n,), value, dtype=dtype, device=dev)

        slots = cls(
            cfg, keys, sizes, rng_search, rng_verify, init_outer(cfg, x_o, x_s), reencode,
            x_o=x_o, x_s=x_s, best=x_s.clone(), center=x_o.clone(), x_a=x_o.clone(),
            attached=torch.ones_like(x_o, dtype=torch.bool), grad_acc=torch.zeros_like(x_o),
            candidate=x_o.clone(), y=y,
            top_classes=top_classes, top_probs=top_probs,
            state=vec(SlotState.SEARCHING, torch.long), t=vec(0, torch.long), r=vec(0, torch.long),
            k=vec(0, torch.long), passes=vec(0, torch.long), broke=vec(False, torch.bool),
            safe_at_start=vec(False, torch.bool), loss_acc=vec(0.0, x_o.dtype),
            best_loss=vec(torch.inf, x_o.dtype), worst_loss=vec(-torch.inf, x_o.dtype),
            msp_adv=top_probs[:, 0].clone(), margin_adv=vec(torch.inf, x_o.dtype),
            targets=torch.zeros((n, max(1, cfg.verify_targets)), dtype=torch.long, device=dev),
            confirm=confirm,
        )
        rows = torch.arange(n, device=dev)
        if cfg.early_exit and cfg.init == "original":
            slots._begin_verify(rows, x_o.clone(), SlotState.VERIFYING_ORIGINAL)
        else:
            slots._continue_or_finalize(rows)
        return slots

    def extend(self, other: Slots) -> Slots:
        rows: dict[str, Any] = {name: cat_rows(getattr(self, name), getattr(other, name)) for name in self.ROWS}
        return dataclasses.replace(
            self, keys=self.keys + other.keys, sizes=self.sizes + other.sizes,
            rng_search=self.rng_search + other.rng_search,
            rng_verify=self.rng_verify + other.rng_verify, outer=self.outer.cat(other.outer),
            **rows)

    def keep_only(self, keep: list[int]) -> Slots:
        idx = torch.tensor(keep, dtype=torch.long, device=self.y.device)
        rows: dict[str, Any] = {name: getattr(self, name).index_select(0, idx) for name in self.ROWS}
        return dataclasses.replace(
            self, keys=[self.keys[i] for i in keep], sizes=[self.sizes[i] for i in keep],
            rng_search=[self.rng_search[i] for i in keep],
            rng_verify=[self.rng_verify[i] for i in keep], outer=self.outer.select(idx), **rows)

    def progress(self) -> list[SlotProgress]:
        """Per image in flight: its state, outer iterations done and passes spent."""
        return [SlotProgress(key, SlotState(state), k, passes) for key, state, k, passes
                in zip(self.keys, self.state.tolist(), self.k.tolist(), self.passes.tolist(), strict=True)]

    # ------------------------------------------------------------- one pass
    def loss_targets(self) -> Tensor | None:
        """Per row, the loss its attack ascends (codes of :func:`safespot.losses.evaluate`):
        a targeted verification run's class, the margin for a margin inner attack, else CE."""
        cfg = self.cfg
        if not cfg.verify_targets and cfg.inner_loss == "ce":
            return None
        inner_code = BEST_OTHER if cfg.inner_loss == "margin" else CROSS_ENTROPY
        codes = torch.where(self.state == SlotState.SEARCHING, inner_code, CROSS_ENTROPY)
        if not cfg.verify_targets:
            return codes
        run = (self.r - cfg.verify_restarts).clamp(0, cfg.verify_targets - 1)
        return torch.where(self._targeted(), self.targets.gather(1, run[:, None])[:, 0], codes)

    def advance(self, ev: Evaluation) -> list[int]:
        """Move every row one step given the pass at x_a; return the rows that finished."""
        cfg = self.cfg
        broke_now = ev.pred != self.y
        searching = self.state == SlotState.SEARCHING
        verifying = ~searching
        answer = self.state == SlotState.VERIFYING_ANSWER
        targeted = self._targeted()

        # Verification rows: track the weakest point, end on a break or after the last step.
        top_other = ev.logits.scatter(1, self.y[:, None], -torch.inf).amax(dim=1)
        margin = ev.logits.gather(1, self.y[:, None])[:, 0] - top_other
        self._rank_targets(_rows(verifying & (self.r == 0) & (self.t == 0)), ev.logits)
        self.margin_adv = torch.where(verifying, torch.minimum(self.margin_adv, margin), self.margin_adv)
        broke_verify = broke_now | (margin < cfg.verify_margin)
        run_steps = torch.where(targeted, cfg.verify_target_steps, cfg.verify_steps)
        restart_over = verifying & (broke_verify | (self.t == run_steps))
        # The OOD score's MSP under attack comes from the cross-entropy runs only.
        worse = restart_over & ~targeted & (ev.loss > self.worst_loss)
        self.msp_adv = torch.where(worse, ev.msp, self.msp_adv)
        self.worst_loss = torch.where(worse, ev.loss, self.worst_loss)
        failed = verifying & broke_verify
        passed = restart_over & ~broke_verify & (self.r + 1 == cfg.verify_runs)
        restart = restart_over & ~broke_verify & ~passed
        rejected = self._confirm(passed)
        passed, failed = passed & ~rejected, failed | rejected
        broke_inner = broke_now | (margin < cfg.candidate_margin)
        self.broke = torch.where(verifying, broke_verify | rejected, self.broke | broke_inner)
        self.safe_at_start |= passed & (self.state == SlotState.VERIFYING_ORIGINAL)
        finished = passed | (failed & answer)
        if restart.any():
            idx = _rows(restart)
            self.r[idx] += 1
            self._attack_start(idx, self.rng_verify)
        self._continue_or_finalize(_rows(failed & ~answer))

        # Inner rows whose attack ended: accumulate the outer gradient.
        ended = searching & (self.t == cfg.inner_steps)
        if ended.any():
            idx = _rows(ended)
            self.grad_acc[idx] += ev.grad[idx] * self.attached[idx] / cfg.inner_starts
            self.loss_acc[idx] += ev.loss[idx] / cfg.inner_starts
            more = (self.r[idx] + 1) < cfg.inner_starts
            if more.any():
                self.r[idx[more]] += 1
                self._attack_start(idx[more], self.rng_search)
            self._end_iteration(idx[~more])

        stepping = ~(finished | failed | restart | ended)
        if stepping.any():
            self._pgd_step(_rows(stepping), ev.grad)
        return _rows(finished).tolist()

    # ---------------------------------------------------------- transitions
    def _confirm(self, passed: Tensor) -> Tensor:
        """Rows that passed verification but not the extra check (none without one).
        The check sees the point the verification attacked (after a planned re-encode)."""
        rejected = torch.zeros_like(passed)
        if self.confirm is None or not passed.any():
            return rejected
        idx = _rows(passed)
        held = self.confirm(self.center[idx], self.y[idx]).to(device=idx.device, dtype=torch.bool)
        rejected[idx[~held]] = True
        return rejected

    def _targeted(self) -> Tensor:
        return (self.state != SlotState.SEARCHING) & (self.r >= self.cfg.verify_restarts)

    def _rank_targets(self, idx: Tensor, logits: Tensor) -> None:
        """The targeted runs' classes: the most likely other classes at the first verification pass."""
        want = self.cfg.verify_targets
        if not want or idx.numel() == 0:
            return
        others = logits[idx].scatter(1, self.y[idx, None], -torch.inf)
        k = max(1, min(want, others.shape[1] - 1))
        top = others.topk(k, dim=1).indices
        self.targets[idx] = top[:, torch.arange(want, device=top.device) % k]  # few classes: cycle

    def _begin_verify(self, idx: Tensor, candidate: Tensor, state: SlotState) -> None:
        """Verify 8-bit candidates (rows idx) — after the re-encode when one is planned for."""
        self.state[idx] = state
        self.candidate[idx] = candidate
        self.center[idx] = candidate if self.reencode is None else self._rows_map(self.reencode.published, idx, candidate)
        self.r[idx] = 0
        self.worst_loss[idx] = -torch.inf
        self.margin_adv[idx] = torch.inf
        self._attack_start(idx, self.rng_verify)

    def _begin_inner(self, idx: Tensor) -> None:
        self.state[idx] = SlotState.SEARCHING
        x_s = self.x_s[idx]
        self.center[idx] = x_s if self.reencode is None else self._rows_map(self.reencode.surrogate, idx, x_s)
        self.r[idx] = 0
        self.grad_acc[idx] = 0
        self.loss_acc[idx] = 0
        self.broke[idx] = False
        self._attack_start(idx, self.rng_search)

    def _attack_start(self, idx: Tensor, rngs: list[torch.Generator]) -> None:
        """Put each row of idx at a uniform random point of the eps-ball around its center."""
        cfg = self.cfg
        center = self.center[idx]
        raw = torch.stack([ball_point(c, self.sizes[i], cfg.eps, cfg.norm, rngs[i])
                           for i, c in zip(idx.tolist(), center, strict=True)])
        self.x_a[idx] = raw.clamp(0.0, 1.0)
        self.attached[idx] = (raw >= 0) & (raw <= 1)
        self.t[idx] = 0

    def _pgd_step(self, idx: Tensor, grad: Tensor) -> None:
        cfg = self.cfg
        x_a, center = self.x_a[idx], self.center[idx]
        verifying = self.state[idx] != SlotState.SEARCHING
        # Step sizes in the images' dtype: float64 images step by exactly eps/4, not its float32 rounding.
        alpha = torch.full(idx.shape, cfg.inner_alpha, dtype=x_a.dtype, device=idx.device)
        alpha = alpha.masked_fill(verifying, cfg.verify_alpha)
        if cfg.verify_targets:
            targeted = verifying & (self.r[idx] >= cfg.verify_restarts)
            alpha = torch.where(targeted, cfg.target_alpha(self.t[idx], dtype=x_a.dtype), alpha)
        moved = x_a + per_sample(alpha, x_a) * steepest_direction(grad[idx], cfg.norm)
        in_ball = project(moved, center, cfg.eps, cfg.norm)
        clipped = (in_ball < 0) | (in_ball > 1)
        # First-order outer gradient (docs/method.md): d x_a/d x_s is 1 on a coordinate
        # unless [0,1] clipping froze it.  For L-inf a later ball clamp ties the
        # coordinate to x_s again, which makes the mask exact; for L2 a clipped
        # coordinate stays detached (its true derivative mixes coordinates).
        if cfg.norm == "linf":
            reattached = (moved - center).abs() > cfg.eps
            self.attached[idx] = ~clipped & (reattached | self.attached[idx])
        else:
            self.attached[idx] = ~clipped & self.attached[idx]
        self.x_a[idx] = in_ball.clamp(0.0, 1.0)
        self.t[idx] += 1

    def _end_iteration(self, idx: Tensor) -> None:
        """The inner attack on x_s is complete: track the best, maybe verify, step x_s."""
        if idx.numel() == 0:
            return
        cfg = self.cfg
        if cfg.keep == "best":
            b = idx[self.loss_acc[idx] < self.best_loss[idx]]
            self.best[b] = self.x_s[b]
            self.best_loss[b] = self.loss_acc[b]
        unbroken = ~self.broke[idx] if cfg.early_exit else torch.zeros_like(self.broke[idx])
        candidates, others = idx[unbroken], idx[~unbroken]
        candidate_x = quantize_toward(self.x_s[candidates], self.x_o[candidates])
        grad = self.grad_acc[idx] if self.reencode is None else self._through_reencode(idx)
        self.x_s[idx] = outer_step(cfg, self.outer, idx, self.x_s[idx], self.x_o[idx], grad)
        self.k[idx] += 1
        if candidates.numel():
            self._begin_verify(candidates, candidate_x, SlotState.VERIFYING_CANDIDATE)
        self._continue_or_finalize(others)

    def _rows_map(self, fn: Any, idx: Tensor, rows: Tensor) -> Tensor:
        return map_rows(fn, rows, [self.sizes[i] for i in idx.tolist()])

    def _through_reencode(self, idx: Tensor) -> Tensor:
        """The outer gradient w.r.t. x_s when the attack ran on surrogate(x_s): J^T g."""
        assert self.reencode is not None
        with torch.enable_grad():
            x_s = self.x_s[idx].detach().requires_grad_(True)
            published = self._rows_map(self.reencode.surrogate, idx, x_s)
            (grad,) = torch.autograd.grad(published, x_s, grad_outputs=self.grad_acc[idx])
        return grad

    def _continue_or_finalize(self, idx: Tensor) -> None:
        """Search on while outer steps remain; otherwise verify the answer one last time."""
        if idx.numel() == 0:
            return
        out_of_steps = self.k[idx] >= self.cfg.outer_steps
        going, ending = idx[~out_of_steps], idx[out_of_steps]
        if going.numel():
            self._begin_inner(going)
        if ending.numel():
            answer = self.best[ending] if self.cfg.keep == "best" else self.x_s[ending]
            self._begin_verify(ending, quantize_toward(answer, self.x_o[ending]), SlotState.VERIFYING_ANSWER)


def _rows(mask: Tensor) -> Tensor:
    return mask.nonzero().flatten()


def _initial_point(cfg: SearchConfig, x_o: Tensor, sizes: list[tuple[int, ...]],
                   rngs: list[torch.Generator]) -> Tensor:
    """x_o, a uniform point of the delta-ball, or a point of its sphere (L2), in [0,1]."""
    if cfg.init == "original":
        return x_o.clone()
    points = [ball_point(img, size, cfg.budget, cfg.norm, g, surface=cfg.init == "sphere")
              for img, size, g in zip(x_o, sizes, rngs, strict=True)]
    x_s = project(torch.stack(points), x_o, cfg.budget, cfg.norm).clamp(0.0, 1.0)
    # L-inf sign steps of k/255 stay on the 8-bit grid when the start is on it.
    return quantize_toward(x_s, x_o) if cfg.optimizer == "pgd" and cfg.norm == "linf" else x_s
