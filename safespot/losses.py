"""The one gradient every attack and search step takes.

A *classifier* here is any callable mapping images (N, C, H, W) in [0, 1] to
logits (N, K); log-probabilities work too (cross-entropy of log-probabilities
is their negative value), which is how the smoothed classifier plugs in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

Classifier = Callable[[Tensor], Tensor]
CROSS_ENTROPY, BEST_OTHER = -1, -2  # loss codes of `evaluate`'s target (classes are >= 0)


@dataclass(frozen=True)
class Evaluation:
    """Loss, logits and input gradient at a batch of points (all detached)."""

    loss: Tensor  # (N,) per-sample cross-entropy
    logits: Tensor  # (N, K)
    grad: Tensor  # like the input: d loss_i / d x_i

    @property
    def pred(self) -> Tensor:
        return self.logits.argmax(dim=1)

    @property
    def msp(self) -> Tensor:
        """Maximum softmax probability per sample."""
        return self.logits.softmax(dim=1).amax(dim=1)


def passes_per_call(model: Classifier) -> int:
    """Forward+backward passes of the base network one call costs (M for a smoothed one)."""
    return int(getattr(model, "passes_per_call", 1))


def evaluate(model: Classifier, x: Tensor, y: Tensor, target: Tensor | None = None) -> Evaluation:
    """The loss an attack on label y ascends at x, and its gradient w.r.t. x only.

    The loss is the cross-entropy of y, except where `target` (N,) says
    otherwise: a class (>= 0) gives the targeted margin
    logit[target] - logit[y], positive once the target wins; ``BEST_OTHER``
    gives the untargeted margin toward whichever other class leads at x (the
    Carlini-Wagner loss).  Samples are independent (the model must be in eval
    mode), so the gradient of the summed loss is each sample's own gradient.
    """
    with torch.enable_grad():
        z = x.detach().requires_grad_(True)
        logits = model(z)
        if logits.dtype in (torch.bfloat16, torch.float16):  # autocast: losses and margins in float32
            logits = logits.float()
        loss = F.cross_entropy(logits, y, reduction="none")
        if target is not None:
            best_other = logits.detach().scatter(1, y[:, None], -torch.inf).argmax(dim=1)
            toward = torch.where(target >= 0, target, best_other)[:, None]
            margin = (logits.gather(1, toward) - logits.gather(1, y[:, None]))[:, 0]
            loss = torch.where(target == CROSS_ENTROPY, loss, margin)
        (grad,) = torch.autograd.grad(loss.sum(), z)
    return Evaluation(loss.detach(), logits.detach(), grad.detach())


@torch.no_grad()
def predict_logits(model: Classifier, x: Tensor, batch_size: int = 256) -> Tensor:
    """Logits in chunks, without building a graph."""
    return torch.cat([model(chunk) for chunk in x.split(batch_size)])
