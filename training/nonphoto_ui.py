"""The drawn kinds of :mod:`training.nonphoto`: rendered text and made-up app screenshots.

Text uses Pillow's own font (``ImageFont.load_default``, scalable where Pillow has
FreeType), so nothing depends on the fonts a machine happens to have.
"""

from __future__ import annotations

import string
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from training.nonphoto import SCALE, Size, random_colour, smooth_noise

TEXT_STYLES = ("paragraph", "heading", "characters")
SCREEN_SCALE = 6  # a 32x32 image comes from a 256x192 screen (4:3, six times its height)
CHARACTERS = string.ascii_letters + string.digits + string.punctuation
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@lru_cache(maxsize=64)
def font(px: int) -> Font:
    return ImageFont.load_default(size=max(6, px))


def random_word(rng: np.random.Generator) -> str:
    word = "".join(rng.choice(list(string.ascii_lowercase), size=int(rng.integers(1, 10))))
    return word.capitalize() if rng.random() < 0.15 else word


def text_line(rng: np.random.Generator, draw: ImageDraw.ImageDraw, face: Font, width: float,
              characters: bool = False) -> str:
    """Random words (or random characters) that fit in `width` pixels."""
    line = ""
    while True:
        piece = ("".join(rng.choice(list(CHARACTERS), size=int(rng.integers(1, 6)))) if characters
                 else random_word(rng))
        longer = f"{line} {piece}" if line else piece
        if draw.textlength(longer, font=face) > width:
            return line or piece[:1]
        line = longer


def contrasting(rng: np.random.Generator, background: tuple[int, int, int]) -> tuple[int, int, int]:
    """A text colour that stands out from `background` (dark on light, light on dark)."""
    light = sum(background) / 3 > 128
    return random_colour(rng, (0.0, 0.8), (0.0, 0.35) if light else (0.75, 1.0))


def mix(a: tuple[int, int, int], b: tuple[int, int, int]) -> tuple[int, int, int]:
    """Halfway between two colours (placeholder text in an input box)."""
    return (a[0] + b[0]) // 2, (a[1] + b[1]) // 2, (a[2] + b[2]) // 2


# --------------------------------------------------------------------- text
def draw_text(rng: np.random.Generator, size: Size) -> tuple[Image.Image, str]:
    h, w = size[0] * SCALE * 2, size[1] * SCALE * 2  # 256x256 for 32x32: room for small print
    style = TEXT_STYLES[rng.integers(len(TEXT_STYLES))]
    roll = rng.random()
    background = (random_colour(rng, (0.0, 0.15), (0.85, 1.0)) if roll < 0.6  # paper
                  else random_colour(rng, (0.0, 0.5), (0.0, 0.25)) if roll < 0.8  # dark mode
                  else random_colour(rng))
    image = Image.new("RGB", (w, h), background)
    if rng.random() < 0.25:  # a graded background, as on posters and slides
        other = np.array(random_colour(rng), np.float64)
        t = np.linspace(0, 1, h)[:, None, None]
        image = Image.fromarray(np.rint((1 - t) * np.array(background) + t * other).astype(np.uint8)
                                .repeat(w, axis=1))
    draw = ImageDraw.Draw(image)
    px = int(h * (rng.uniform(0.18, 0.35) if style == "heading" else rng.uniform(0.05, 0.12)))
    face, colour = font(px), contrasting(rng, background)
    y = rng.uniform(-0.3, 0.2) * px
    while y < h:
        x = rng.uniform(-0.1, 0.15) * w
        draw.text((x, y), text_line(rng, draw, face, w - x, characters=style == "characters"),
                  fill=colour, font=face)
        y += px * rng.uniform(1.1, 1.6)
        if rng.random() < 0.1:
            colour = contrasting(rng, background)
    return image, style


# --------------------------------------------------------------- screenshots
def draw_screenshot(rng: np.random.Generator, size: Size) -> tuple[Image.Image, str]:
    h = size[0] * SCREEN_SCALE
    w = max(size[1] * SCREEN_SCALE, h * 4 // 3)
    dark = rng.random() < 0.3
    background = random_colour(rng, (0.0, 0.1), (0.08, 0.2) if dark else (0.92, 1.0))
    ink = contrasting(rng, background)
    accent = random_colour(rng, (0.5, 0.9), (0.55, 0.9))
    image = Image.new("RGB", (w, h), background)
    draw = ImageDraw.Draw(image)
    bar = int(h * rng.uniform(0.07, 0.12))
    title = random_colour(rng, (0.0, 0.7), (0.15, 0.95))
    draw.rectangle((0, 0, w, bar), fill=title)
    for k in range(3):  # window buttons
        r = bar * 0.18
        cx, cy = bar * 0.5 + k * bar * 0.55, bar / 2
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=random_colour(rng, (0.5, 0.9), (0.7, 1.0)))
    draw.text((bar * 2.2, bar * 0.2), text_line(rng, draw, font(int(bar * 0.55)), w * 0.4),
              fill=contrasting(rng, title), font=font(int(bar * 0.55)))
    left = 0
    if rng.random() < 0.5:  # a side menu, one item highlighted
        left = int(w * rng.uniform(0.18, 0.3))
        shift = 25 if dark else -18  # a shade lighter (dark mode) or darker than the page
        panel = (max(0, min(255, background[0] + shift)), max(0, min(255, background[1] + shift)),
                 max(0, min(255, background[2] + shift)))
        draw.rectangle((0, bar, left, h), fill=panel)
        item, face = int(h * 0.075), font(int(h * 0.04))
        for k, row in enumerate(range(bar + item // 2, h - item, item)):
            if k == 1:
                draw.rectangle((0, row - item * 0.15, left, row + item * 0.8), fill=accent)
            draw.text((left * 0.12, row), text_line(rng, draw, face, left * 0.8), fill=ink, font=face)
    y, margin = bar + h * 0.04, left + w * 0.04
    while y < h:
        y = draw_block(rng, image, (margin, y, w - w * 0.04), ink, accent, background) + h * 0.03
    return image, "dark" if dark else "light"


def draw_block(rng: np.random.Generator, image: Image.Image, box: tuple[float, float, float],
               ink: tuple[int, int, int], accent: tuple[int, int, int],
               background: tuple[int, int, int]) -> float:
    """One element of a page's content at (left, top, right); returns its bottom."""
    left, top, right = box
    draw = ImageDraw.Draw(image)
    unit = image.height * 0.045  # a line of body text
    kind = rng.choice(["heading", "paragraph", "buttons", "input", "picture", "cards"])
    if kind == "heading":
        face = font(int(unit * rng.uniform(1.5, 2.2)))
        draw.text((left, top), text_line(rng, draw, face, (right - left) * 0.8), fill=ink, font=face)
        return top + unit * 2.2
    if kind == "paragraph":
        face, y = font(int(unit)), top
        for _ in range(int(rng.integers(2, 6))):
            draw.text((left, y), text_line(rng, draw, face, (right - left) * rng.uniform(0.6, 1.0)),
                      fill=ink, font=face)
            y += unit * 1.4
        return y
    if kind == "buttons":
        x, face = left, font(int(unit * 0.9))
        for k in range(int(rng.integers(1, 4))):
            label = text_line(rng, draw, face, unit * 5)
            width = draw.textlength(label, font=face) + unit * 1.6
            filled = k == 0 or rng.random() < 0.4
            draw.rounded_rectangle((x, top, x + width, top + unit * 1.9), radius=unit * 0.4,
                                   fill=accent if filled else None, outline=accent, width=max(1, int(unit / 8)))
            draw.text((x + unit * 0.8, top + unit * 0.4), label, font=face,
                      fill=contrasting(rng, accent) if filled else accent)
            x += width + unit
        return top + unit * 1.9
    if kind == "input":
        face = font(int(unit * 0.9))
        draw.rectangle((left, top, right, top + unit * 1.9), fill=background, outline=ink, width=max(1, int(unit / 10)))
        draw.text((left + unit * 0.5, top + unit * 0.45), text_line(rng, draw, face, (right - left) * 0.5),
                  fill=mix(ink, background), font=face)
        return top + unit * 1.9
    if kind == "picture":
        height = unit * rng.uniform(4, 8)
        placeholder(rng, image, (left, top, left + (right - left) * rng.uniform(0.4, 1.0), top + height))
        return top + height
    n = int(rng.integers(2, 4))  # cards in a row: a picture and two lines each
    gap = unit
    width = (right - left - gap * (n - 1)) / n
    face = font(int(unit * 0.8))
    for k in range(n):
        x = left + k * (width + gap)
        draw.rounded_rectangle((x, top, x + width, top + unit * 6.5), radius=unit * 0.4,
                               outline=ink, width=max(1, int(unit / 10)))
        placeholder(rng, image, (x + unit * 0.4, top + unit * 0.4, x + width - unit * 0.4, top + unit * 3.6))
        for line in range(2):
            draw.text((x + unit * 0.4, top + unit * (3.9 + 1.1 * line)),
                      text_line(rng, draw, face, width - unit), fill=ink, font=face)
    return top + unit * 6.5


def placeholder(rng: np.random.Generator, image: Image.Image, box: tuple[float, float, float, float]) -> None:
    """Where a page shows a picture: grey with a cross, a colour gradient, or soft blobs."""
    x0, y0, x1, y1 = (int(v) for v in box)
    draw = ImageDraw.Draw(image)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return
    roll = rng.random()
    if roll < 0.4:
        grey = int(rng.integers(150, 215))
        edge = (grey - 40, grey - 40, grey - 40)
        draw.rectangle((x0, y0, x1, y1), fill=(grey, grey, grey), outline=edge)
        draw.line((x0, y0, x1, y1), fill=edge, width=2)
        draw.line((x0, y1, x1, y0), fill=edge, width=2)
        return
    a, b = np.array(random_colour(rng)), np.array(random_colour(rng))
    if roll < 0.7:
        t = np.linspace(0, 1, x1 - x0)[None, :, None]
        patch = np.broadcast_to((1 - t) * a + t * b, (y1 - y0, x1 - x0, 3))
    else:
        t = smooth_noise(rng, (y1 - y0, x1 - x0), octaves=2)[..., None]
        patch = (1 - t) * a + t * b
    image.paste(Image.fromarray(np.rint(patch).astype(np.uint8)), (x0, y0))
