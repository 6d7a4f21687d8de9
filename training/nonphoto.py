"""Synthetic images that are not photos of anything: what a photo classifier meets on a
platform besides photos (docs/ood.md, "Inputs that are not photos").

Kinds (:data:`KINDS`):

- ``texture``: procedural patterns (stripes at a random angle and frequency, rotated
  checkerboards, smoothed-noise clouds and marble, dot grids) in random palettes;
- ``text``: random words or characters in Pillow's own font, several lines, random
  colours on a plain or graded background;
- ``screenshot``: a made-up app or web page: flat background, title bar, optional side
  menu, headings, text, buttons, input boxes, cards and an image placeholder
  (:mod:`training.nonphoto_ui`).

Noise is not here: ``safespot ood-eval`` builds its Gaussian and uniform sets itself
(:func:`training.ood_sets.noise_images`).

Each image is drawn on a canvas several times larger than the target and shrunk with
Pillow's Lanczos filter, so that it looks like real content that was downsized (thin
lines blur into grey, as they do in a thumbnail) rather than an aliased pattern.  Image
``i`` of a kind depends only on (seed, kind, i): the first images of a set do not change
when more are asked for, and two seeds give unrelated images.  numpy and Pillow only.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

KINDS = ("texture", "text", "screenshot")
KIND_CODE = {kind: code for code, kind in enumerate(KINDS, start=1)}  # part of each image's seed
SCALE = 4  # textures and text are drawn at SCALE times the target size
TEXTURES = ("stripes", "checkerboard", "clouds", "marble", "dots")
Size = tuple[int, int]  # (height, width)


@dataclass
class NonPhotoSet:
    x: np.ndarray  # uint8 (N, H, W, 3)
    styles: list[str]  # what each image is ("texture/stripes", "text/paragraph", ...)


def nonphoto_images(kind: str, n: int, size: int | Size = 32, seed: int = 0) -> NonPhotoSet:
    """`n` images of `kind` at `size` (pixels, or (height, width)), uint8 RGB."""
    from training.nonphoto_ui import draw_screenshot, draw_text

    renderers: dict[str, Callable[[np.random.Generator, Size], tuple[Image.Image, str]]] = {
        "texture": draw_texture, "text": draw_text, "screenshot": draw_screenshot}
    if kind not in renderers:
        raise ValueError(f"unknown kind {kind!r}: choose from {', '.join(KINDS)}")
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if n < 0 or min(hw) < 4:
        raise ValueError(f"need n >= 0 and images of at least 4x4 pixels, got n={n}, size={hw}")
    x = np.empty((n, *hw, 3), np.uint8)
    styles = []
    for i in range(n):
        image, style = renderers[kind](np.random.default_rng([seed, KIND_CODE[kind], i]), hw)
        x[i] = np.asarray(downsize(image, hw))
        styles.append(f"{kind}/{style}")
    return NonPhotoSet(x, styles)


def downsize(image: Image.Image, size: Size) -> Image.Image:
    """Shrink to `size` as a photo model's view does: the shorter side to fit, the centre
    cropped (Lanczos, which averages over the whole footprint of each output pixel)."""
    h, w = size
    scale = max(h / image.height, w / image.width)
    fit = (max(w, round(image.width * scale)), max(h, round(image.height * scale)))
    image = image.convert("RGB").resize(fit, Image.Resampling.LANCZOS)
    left, top = (fit[0] - w) // 2, (fit[1] - h) // 2
    return image.crop((left, top, left + w, top + h))


def random_colour(rng: np.random.Generator, saturation: tuple[float, float] = (0.0, 1.0),
                  value: tuple[float, float] = (0.0, 1.0)) -> tuple[int, int, int]:
    """An RGB colour with a uniform hue and saturation and brightness drawn from the ranges."""
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*saturation), rng.uniform(*value))
    return round(r * 255), round(g * 255), round(b * 255)


# ----------------------------------------------------------------- textures
def draw_texture(rng: np.random.Generator, size: Size) -> tuple[Image.Image, str]:
    h, w = size[0] * SCALE, size[1] * SCALE
    style = TEXTURES[rng.integers(len(TEXTURES))]
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)  # coordinates in [0, 1) along the longer side
    theta = rng.uniform(0, np.pi)
    along = xx * np.cos(theta) + yy * np.sin(theta)
    across = -xx * np.sin(theta) + yy * np.cos(theta)
    if style == "stripes":
        v = 0.5 + 0.5 * np.sin(2 * np.pi * (rng.uniform(2, 10) * along + rng.random()))
        if rng.random() < 0.5:  # hard-edged bars instead of a sine
            v = (v > rng.uniform(0.3, 0.7)).astype(np.float64)
    elif style == "checkerboard":
        cells = rng.uniform(2, 10)
        v = (np.floor(along * cells) + np.floor(across * cells)) % 2
    elif style == "clouds":
        v = smooth_noise(rng, (h, w))
    elif style == "marble":
        twist = rng.uniform(1, 6)
        v = 0.5 + 0.5 * np.sin(2 * np.pi * (rng.uniform(1, 6) * along + twist * smooth_noise(rng, (h, w))))
    else:  # dots on a (rotated) grid
        cells = rng.uniform(3, 10)
        du, dv = (along * cells) % 1 - 0.5, (across * cells) % 1 - 0.5
        v = (np.hypot(du, dv) < rng.uniform(0.15, 0.45)).astype(np.float64)
    return Image.fromarray(palette_map(v, palette(rng, 2 if style in ("checkerboard", "dots") else 3))), style


def smooth_noise(rng: np.random.Generator, size: Size, octaves: int = 5) -> np.ndarray:
    """Fractal value noise in [0, 1]: random grids from 3x3 up, each smoothly enlarged
    (bicubic) to `size`, halving in weight as they double in detail."""
    h, w = size
    total = np.zeros((h, w))
    for octave in range(octaves):
        cells = 3 * 2 ** octave
        grid = Image.fromarray(rng.random((cells, cells)).astype(np.float32), mode="F")
        total += 0.5 ** octave * np.asarray(grid.resize((w, h), Image.Resampling.BICUBIC), np.float64)
    lo, hi = total.min(), total.max()
    return (total - lo) / (hi - lo) if hi > lo else np.zeros_like(total)


def palette(rng: np.random.Generator, k: int) -> np.ndarray:
    """k random colours (k, 3); the first two differ clearly in brightness, so no pattern is flat."""
    colours = np.array([random_colour(rng) for _ in range(k)], np.float64)
    dark, light = random_colour(rng, value=(0.0, 0.4)), random_colour(rng, value=(0.6, 1.0))
    colours[0], colours[1] = (dark, light) if rng.random() < 0.5 else (light, dark)
    return colours


def palette_map(v: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Values in [0, 1] to uint8 RGB, linearly along the colours (0 -> the first, 1 -> the last)."""
    stops = np.linspace(0, 1, len(colours))
    rgb = np.stack([np.interp(v, stops, colours[:, c]) for c in range(3)], axis=-1)
    return np.rint(rgb).clip(0, 255).astype(np.uint8)
