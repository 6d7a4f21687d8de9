"""PNG in, PNG out: the normalised upload as a tensor, the answer as a lossless file.

The API hands the worker a normalised PNG (mode ``L``, ``LA``, ``RGB`` or
``RGBA``).  Colour channels become a (C, H, W) float tensor of exact 8-bit
values k/255 (C = 1 for grey, which stays grey); an alpha channel is split
off, never searched, and put back unchanged.  Distances between answer and
upload are measured here, at full resolution, on the 8-bit values.
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
    pixels: Tensor  # (C, H, W) float32, values k/255; C = 1 (grey) or 3
    alpha: np.ndarray | None  # (H, W) uint8, returned untouched
    mode: str

    @property
    def height(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[2])


def decode_png(data: bytes | None, max_pixels: int | None = None) -> DecodedImage:
    """The normalised upload as pixels (+ alpha); JobError("invalid_image") when it is not one."""
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
    pixels = torch.from_numpy(np.ascontiguousarray(array[:, :, :colour])).permute(2, 0, 1)
    return DecodedImage(pixels.float().div_(_LEVELS), alpha, mode)


def to_levels(pixels: Tensor) -> np.ndarray:
    """(C, H, W) values in [0,1] -> (C, H, W) uint8 8-bit levels."""
    return pixels.detach().mul(_LEVELS).round_().clamp_(0, _LEVELS).to(torch.uint8).cpu().numpy()


def encode_png(pixels: Tensor, alpha: np.ndarray | None, mode: str) -> bytes:
    """A lossless PNG of (C, H, W) pixels in the upload's mode, alpha re-attached."""
    hwc = np.moveaxis(to_levels(pixels), 0, -1)
    if alpha is not None:
        hwc = np.concatenate([hwc, alpha[:, :, None]], axis=2)
    if hwc.shape[2] == 1:
        hwc = hwc[:, :, 0]
    image = Image.fromarray(np.ascontiguousarray(hwc))
    if image.mode != mode:
        raise JobError(f"encoded {image.mode}, expected {mode}", code=ErrorCode.INTERNAL_ERROR)
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=6)
    return out.getvalue()


def distortion(output: Tensor, original: Tensor) -> dict[str, float | None]:
    """L-inf, L2 (over all pixels and channels) and PSNR of output vs original, in [0,1] units,
    measured on their 8-bit values; PSNR is None for identical images (JSON has no inf)."""
    diff = to_levels(output).astype(np.int32) - to_levels(original).astype(np.int32)
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
        levels = to_levels(image.detach().cpu())  # (C, H, W)
        mode = "L" if levels.shape[0] == 1 else "RGB"
        hwc = levels[0] if mode == "L" else np.ascontiguousarray(np.moveaxis(levels, 0, -1))
        buf = io.BytesIO()
        Image.fromarray(hwc, mode=mode).save(buf, format="JPEG", quality=quality)
        decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert(mode), dtype=np.uint8)
        if decoded.ndim == 2:
            decoded = decoded[..., None]
        back = torch.from_numpy(decoded.copy()).permute(2, 0, 1)
        return back.to(device=image.device, dtype=image.dtype) / 255

    return roundtrip
