"""Planning for a platform's re-encode of the published image.

When the platform re-encodes (JPEG quality q) what it publishes, the image
an attacker perturbs is ``reencode(x_safe)``, not ``x_safe``.  With a
:class:`Reencode`, the search attacks ``surrogate(x_s)`` (a differentiable
JPEG) and takes the outer gradient through it, and the verification attack
runs on ``published(candidate)`` — the real encoder when one is given (the
worker passes Pillow's), else the surrogate rounded to 8 bits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from safespot.jpeg import jpeg_approx
from safespot.threat import snap_to_grid

Encoder = Callable[[Tensor], Tensor]  # one (C, H, W) 8-bit image -> its decoded re-encode


@dataclass(frozen=True)
class Reencode:
    quality: int = 85
    exact: Encoder | None = None  # the real encoder (not differentiable)

    def surrogate(self, image: Tensor) -> Tensor:
        """Differentiable approximation of the re-encode of one (C, H, W) image."""
        return jpeg_approx(image[None], self.quality)[0]

    def published(self, image: Tensor) -> Tensor:
        """What the platform would publish for one 8-bit (C, H, W) image."""
        if self.exact is not None:
            return self.exact(image)
        return snap_to_grid(self.surrogate(image))
