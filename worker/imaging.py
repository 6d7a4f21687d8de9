"""PNG in, PNG out: the normalised upload's 8-bit levels, the answer as a lossless file.

The API hands the worker a normalised PNG (mode ``L``, ``LA``, ``RGB`` or
``RGBA``).  Its colour channels are kept as decoded, (H, W, C) uint8 levels
(C = 1 for grey, which stays grey); the search gets them as a (C, H, W) float
tensor of exact values k/255.  An alpha channel is split off, never searched,
and put back unchanged.  The answer becomes levels once, as the upload's own
levels plus the search's change in whole levels: a pixel the search left
alone keeps its decoded level whatever precision the model computes in, and
nothing of the original is re-quantised from float.  Distances between answer
and upload are measured here, at full resolution, on the levels.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from worker.errors import JobError
from worker.protocol import ErrorCode

MODES = ("L", "LA", "RGB", "RGBA")
_LEVELS = 255


@dataclass
class DecodedImage:
    levels: np.ndarray  # (H, W, C) uint8 as decoded; C = 1 (grey) or 3
    alpha: np.ndarray | None  # (H, W) uint8, returned untouched
    mode: str

    @property
    def height(self) -> int:
        return int(self.levels.shape[0])

    @property
    def width(self) -> int:
        return int(self.levels.shape[1])

    def pixels(self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
        """(C, H, W) values k/255 in [0,1] on ``device`` (what the search takes); the levels
        travel as uint8 and become float32 there, then ``dtype``."""
        chw = torch.from_numpy(self.levels).permute(2, 0, 1).to(device)
        return chw.float().div_(_LEVELS).to(dtype)

    def answer_levels(self, answer: Tensor) -> np.ndarray:
        """The search's (C, H, W) answer, on the 8-bit grid, as (H, W, C) uint8 levels: these
        levels plus the change in whole levels, measured from the very tensor the search was
        given (``pixels`` in the answer's dtype), so an unchanged pixel keeps its exact level."""
        start = self.pixels(answer.device, answer.dtype).float()
        steps = (answer.detach().float() - start).mul_(_LEVELS).round_().to(torch.int16)
        moved = self.levels.astype(np.int16) + steps.permute(1, 2, 0).cpu().numpy()
        return np.clip(moved, 0, _LEVELS).astype(np.uint8)


def decode_png(data: bytes | None, max_pixels: int | None = None) -> DecodedImage:
    """The normalised upload as levels (+ alpha); JobError("invalid_image") when it is not one."""
    if not data:
        raise JobError("the uploaded image is gone (expired or never stored)", code=ErrorCode.UPLOAD_MISSING)
    try:
        with Image.open(io.BytesIO(data)) as im:
            if max_pixels is not None and im.width * im.height > max_pixels:
                raise JobError(f"{im.width}x{im.height} is over {max_pixels} pixels", code=ErrorCode.IMAGE_TOO_LARGE)
            if im.mode not in MODES:
                raise JobError(f"mode {im.mode} is not a normalised upload (expected one of {MODES})", code=ErrorCode.UNSUPPORTED_IMAGE_MODE)
            im.load()
            mode = im.mode
            array = np.array(im, dtype=np.uint8)  # a writable copy
    except JobError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise JobError(f"the upload does not decode: {e}", code=ErrorCode.INVALID_IMAGE) from e
    if array.ndim == 2:
        array = array[:, :, None]
    colour = 1 if mode in ("L", "LA") else 3
    alpha = array[:, :, colour].copy() if mode in ("LA", "RGBA") else None
    return DecodedImage(np.ascontiguousarray(array[:, :, :colour]), alpha, mode)


def to_levels(pixels: Tensor) -> np.ndarray:
    """(C, H, W) values in [0,1] -> (C, H, W) uint8 8-bit levels."""
    return pixels.detach().mul(_LEVELS).round_().clamp_(0, _LEVELS).to(torch.uint8).cpu().numpy()


def encode_png(levels: np.ndarray, alpha: np.ndarray | None, mode: str) -> bytes:
    """A lossless PNG of (H, W, C) uint8 levels in the upload's mode, alpha re-attached."""
    image = _pillow(levels if alpha is None else np.concatenate([levels, alpha[:, :, None]], axis=2))
    if image.mode != mode:
        raise JobError(f"encoded {image.mode}, expected {mode}", code=ErrorCode.INTERNAL_ERROR)
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=6)
    return out.getvalue()


def _pillow(hwc: np.ndarray) -> Image.Image:
    """(H, W, C) uint8 levels as a Pillow image: C = 1, 2, 3, 4 give L, LA, RGB, RGBA."""
    return Image.fromarray(np.ascontiguousarray(hwc[:, :, 0] if hwc.shape[2] == 1 else hwc))


def distortion(output: np.ndarray, original: np.ndarray) -> dict[str, float | None]:
    """L-inf, L2 (over all pixels and channels) and PSNR of output vs original uint8 levels,
    in [0,1] units; PSNR is None for identical images (JSON has no inf)."""
    diff = output.astype(np.int32) - original.astype(np.int32)
    squares = float(np.square(diff, dtype=np.float64).sum())
    mse = squares / (diff.size * _LEVELS**2)
    return {
        "linf": float(np.abs(diff).max()) / _LEVELS if diff.size else 0.0,
        "l2": math.sqrt(squares) / _LEVELS,
        "psnr": None if mse == 0 else round(10 * math.log10(1.0 / mse), 4),
    }


def jpeg_roundtrip(quality: int) -> Callable[[Tensor], Tensor]:
    """The real re-encode a platform applies: Pillow's JPEG encoder at `quality`
    (4:2:0 chroma, Pillow's default) and its decoder, on one (C, H, W) image."""

    def roundtrip(image: Tensor) -> Tensor:
        out = io.BytesIO()
        _pillow(np.moveaxis(to_levels(image), 0, -1)).save(out, format="JPEG", quality=quality)
        return decode_png(out.getvalue()).pixels(image.device, image.dtype)  # Pillow reads any format

    return roundtrip
