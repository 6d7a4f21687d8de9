"""Safe-spot search (S-Full, the paper's Algorithm 1) with continuous batching.

For an image x_o with predicted label y, find x_s in B_delta(x_o) ∩ [0,1]
minimising  max_{x_a in B_eps(x_s) ∩ [0,1]} CE(f(x_a), y).  The inner max is
T-step PGD from a random start; the outer step uses the first-order gradient
(docs/method.md): the loss gradient at the inner attack's last point x_a^(T),
masked to zero where [0,1] clipping froze a pixel.  No graph through the
inner loop is built, so one outer iteration costs N*(T+1) passes.

"Found" is decided by an independent verification attack (PGD with its own
random stream and restarts) on the answer *after rounding to 8-bit pixels*,
the image a service returns; the rounding never leaves the budget.

Each forward+backward pass serves a batch of slots, one image per slot, each
in its own phase (see :mod:`safespot.slots`).  Images that finish leave and
waiting images take their slots, so the batch stays full while the work per
image follows its difficulty.  An image's result depends only on the image,
its label and the seed: its random streams are seeded from its pixels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from safespot.canvas import Size, crop, stack_canvas
from safespot.config import SearchConfig
from safespot.losses import Classifier, evaluate, passes_per_call, predict_logits
from safespot.publish import Reencode
from safespot.slots import Confirm, SlotProgress, Slots
from safespot.threat import on_pixel_grid

Progress = Callable[[int, int], None]  # (images finished, images submitted)
View = Callable[[Tensor, Sequence[Size]], Tensor]  # canvas batch, sizes -> model input


@dataclass
class ImageResult:
    """The outcome for one image (tensors without a batch dimension)."""

    key: Any
    x_safe: Tensor  # on the 8-bit grid, inside the delta-ball, in [0,1]
    found: bool  # the verification attack failed on x_safe
    label: int  # the label searched for (the prediction on x_o unless given)
    grad_evals: int  # forward+backward passes spent on this image
    outer_steps: int
    msp: float  # max softmax probability on x_o
    top: list[tuple[int, float]]  # (class, softmax probability on x_o), most probable first (slots.TOP_K)
    msp_adv: float  # max softmax probability at the verification attack's worst point
    margin_adv: float  # min over verification iterates of logit[label] - best other logit
    safe_at_start: bool  # x_o itself passed verification (early-exit mode)


@dataclass
class SearchResult:
    """Batched outcome of :func:`find_safe_spots`, in input order."""

    x_safe: Tensor  # like x, on the 8-bit grid
    found: Tensor  # (N,) bool
    labels: Tensor  # (N,) long
    grad_evals: int  # total forward+backward passes
    grad_evals_per_image: Tensor  # (N,) long
    outer_steps: Tensor  # (N,) long
    msp: Tensor  # (N,)
    msp_adv: Tensor  # (N,)
    margin_adv: Tensor  # (N,)
    safe_at_start: Tensor  # (N,) bool


class SafeSpotSearch:
    """The search as an engine: :meth:`submit` images at any time, call :meth:`step`.

    Each step admits waiting images into free slots (at most
    ``config.batch_size`` in flight), runs one forward+backward pass over
    them and returns the images that finished.  :func:`find_safe_spots`
    drives it over a fixed set; the worker feeds it from a queue.
    """

    def __init__(self, model: Classifier, config: SearchConfig, view: View | None = None,
                 reencode: Reencode | None = None, confirm: Confirm | None = None) -> None:
        self.model = model
        self.cfg = config
        self.view = view
        self.reencode = reencode
        self.confirm = confirm
        self.cost = passes_per_call(model)
        self._waiting: list[tuple[Any, Tensor, int | None]] = []
        self._slots: Slots | None = None
        self._submitted = 0
        self._shape: tuple[int, ...] | None = None

    def submit(self, x: Tensor | Sequence[Tensor], labels: Tensor | None = None,
               keys: Sequence[Any] | None = None) -> None:
        """Queue images with 8-bit values in [0,1]: a batch (n, C, H, W), or, with a
        view, a list of (C, H, W) images of any sizes.

        Labels default to the model's prediction on each image; keys (any
        values) identify the results, by default a running count.
        """
        if len(x) == 0:
            raise ValueError("submit expects at least one image")
        if isinstance(x, Tensor) and x.ndim < 2:
            raise ValueError("submit expects a batch shaped (n, C, H, W)")
        shapes = {tuple(img.shape) for img in x}
        if self.view is None and (len(shapes) > 1 or (self._shape and shapes != {self._shape})):
            raise ValueError("images of different sizes need a view (e.g. safespot.canvas.ResizeView)")
        self._shape = next(iter(shapes)) if self.view is None else None
        on_grid = (on_pixel_grid(x) if isinstance(x, Tensor)
                   else torch.cat([on_pixel_grid(img[None]) for img in x]))
        if not bool(on_grid.all()):
            raise ValueError(
                "images must hold 8-bit pixel values k/255 in [0,1], as decoded images do; "
                "the answer is rounded to that grid and its budget is measured from the input"
            )
        n = len(x)
        keys = list(range(self._submitted, self._submitted + n)) if keys is None else list(keys)
        if len(keys) != n or (labels is not None and len(labels) != n):
            raise ValueError("give one key and one label per image")
        self._submitted += n
        for i, key in enumerate(keys):
            self._waiting.append((key, x[i].detach(), None if labels is None else int(labels[i])))

    @property
    def pending(self) -> int:
        """Images submitted and not finished yet."""
        return len(self._waiting) + self.active

    @property
    def active(self) -> int:
        """Images in the batch now."""
        return 0 if self._slots is None else self._slots.size

    def progress(self) -> list[SlotProgress]:
        """Per image in the batch now: its state, outer iterations done and passes spent
        (waiting images have not started)."""
        return [] if self._slots is None else self._slots.progress()

    def step(self) -> list[ImageResult]:
        """Admit waiting images, run one pass over the batch, return the finished images."""
        self._admit()
        slots = self._slots
        if slots is None:
            return []
        with torch.autocast(slots.x_a.device.type, dtype=torch.bfloat16,
                            enabled=self.cfg.precision == "bf16"):
            ev = evaluate(self._classifier(slots.sizes), slots.x_a, slots.y, slots.loss_targets())
        slots.passes += self.cost
        finished = slots.advance(ev)
        if not finished:
            return []
        results = [_result(slots, i) for i in finished]
        gone = set(finished)
        remaining = [i for i in range(slots.size) if i not in gone]
        self._slots = slots.keep_only(remaining) if remaining else None
        return results

    def run(self, progress: Progress | None = None) -> list[ImageResult]:
        """Step until every submitted image has finished; results in finishing order."""
        total, out = self.pending, []
        while self.pending:
            done = self.step()
            out.extend(done)
            if done and progress is not None:
                progress(len(out), total)
        return out

    def _admit(self) -> None:
        free = self.cfg.batch_size - self.active
        if free <= 0 or not self._waiting:
            return
        batch, self._waiting = self._waiting[:free], self._waiting[free:]
        x_o, sizes = stack_canvas([x for _, x, _ in batch])
        logits = predict_logits(self._classifier(sizes), x_o, batch_size=len(batch))
        pred = logits.argmax(dim=1).tolist()
        y = torch.tensor([p if given is None else given for (_, _, given), p in zip(batch, pred, strict=True)],
                         dtype=torch.long, device=x_o.device)
        rng_search = [_generator(self.cfg.seed, img, "search") for _, img, _ in batch]
        rng_verify = [_generator(self.cfg.seed, img, "verify") for _, img, _ in batch]
        new = Slots.start(self.cfg, [key for key, _, _ in batch], sizes, x_o, y,
                          logits.softmax(dim=1), rng_search, rng_verify, self.reencode, self.confirm)
        self._slots = new if self._slots is None else self._slots.extend(new)

    def _classifier(self, sizes: list[Size]) -> Classifier:
        if self.view is None:
            return self.model
        view, model = self.view, self.model

        def through_view(z: Tensor) -> Tensor:
            return model(view(z, sizes))

        through_view.passes_per_call = self.cost  # type: ignore[attr-defined]
        return through_view


def find_safe_spots(
    model: Classifier,
    x: Tensor,
    config: SearchConfig | None = None,
    *,
    labels: Tensor | None = None,
    progress: Progress | None = None,
    reencode: Reencode | None = None,
    confirm: Confirm | None = None,
) -> SearchResult:
    """Find a safe spot for every image of x (N, C, H, W), 8-bit values in [0,1].

    `model` maps [0,1] images to logits and must be in eval mode.  Labels
    default to the model's own predictions (all a service knows).  Device and
    dtype follow x.  Results are in input order.  With `reencode`, the search
    plans for the platform's JPEG re-encode and "found" means the re-encoded
    image held.  With `confirm`, a point that passed the verification must
    also hold against that check (for example the yardstick's AutoAttack,
    :func:`safespot.yardstick.confirmer`) or the search goes on: for
    measuring what a stronger verification would find; the check's own
    passes are not counted in ``grad_evals``.
    """
    engine = SafeSpotSearch(model, config or SearchConfig.preset("standard"), reencode=reencode,
                            confirm=confirm)
    engine.submit(x, labels)
    results = sorted(engine.run(progress), key=lambda r: r.key)
    return collate(results, like=x)


def collate(results: Iterable[ImageResult], like: Tensor) -> SearchResult:
    """Stack per-image results into a :class:`SearchResult` on like's device and dtype."""
    rs = list(results)

    def vec(name: str, dtype: torch.dtype) -> Tensor:
        return torch.tensor([getattr(r, name) for r in rs], dtype=dtype, device=like.device)

    per_image = vec("grad_evals", torch.long)
    return SearchResult(
        x_safe=torch.stack([r.x_safe for r in rs]).to(like.dtype),
        found=vec("found", torch.bool),
        labels=vec("label", torch.long),
        grad_evals=int(per_image.sum()),
        grad_evals_per_image=per_image,
        outer_steps=vec("outer_steps", torch.long),
        msp=vec("msp", like.dtype),
        msp_adv=vec("msp_adv", like.dtype),
        margin_adv=vec("margin_adv", like.dtype),
        safe_at_start=vec("safe_at_start", torch.bool),
    )


def image_seed(seed: int, image: Tensor, stream: str) -> int:
    """A 63-bit seed from the configured seed, the image's 8-bit pixels and a stream name."""
    pixels = (image.detach() * 255).round().to(torch.uint8).cpu().numpy().tobytes()
    digest = hashlib.blake2b(pixels, digest_size=8, person=stream.encode()[:16],
                             key=str(seed).encode()).digest()
    return int.from_bytes(digest, "little") >> 1


def _generator(seed: int, image: Tensor, stream: str) -> torch.Generator:
    g = torch.Generator(device=image.device)
    g.manual_seed(image_seed(seed, image, stream))
    return g


def _result(slots: Slots, i: int) -> ImageResult:
    return ImageResult(
        key=slots.keys[i], x_safe=crop(slots.candidate[i], slots.sizes[i]).clone(), found=not bool(slots.broke[i]),
        label=int(slots.y[i]), grad_evals=int(slots.passes[i]), outer_steps=int(slots.k[i]),
        msp=float(slots.msp[i]), msp_adv=float(slots.msp_adv[i]),
        top=list(zip(slots.top_classes[i].tolist(), slots.top_probs[i].tolist(), strict=True)),
        margin_adv=float(slots.margin_adv[i]), safe_at_start=bool(slots.safe_at_start[i]),
    )
