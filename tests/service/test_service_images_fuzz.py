"""Property-based fuzzing of the upload path: for ANY bytes, decode_upload either
returns a valid normalised PNG within the limits or raises one of our 4xx
errors; never another exception, never a 5xx."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from service_testkit import decode_png, encode, photo

from service.errors import SafeSpotError
from service.images import decode_upload

MAX_PIXELS = 200_000
SEEDS = {fmt: encode(photo().resize((48, 32)), fmt) for fmt in ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")}


def check(data: bytes) -> None:
    try:
        decoded = decode_upload(data, max_pixels=MAX_PIXELS)
    except SafeSpotError as e:
        assert e.status in (400, 413, 415), e
        return
    out = decode_png(decoded.png)
    assert out.mode in ("L", "LA", "RGB", "RGBA")
    assert out.width * out.height <= MAX_PIXELS
    assert (out.width, out.height) == (decoded.info["width"], decoded.info["height"])


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 8))):
        action = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        position = draw(st.integers(0, max(0, len(data) - 1)))
        if action == "flip" and data:
            data[position] ^= draw(st.integers(1, 255))
        elif action == "truncate":
            del data[position:]
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=64))
        elif action == "delete":
            del data[position:position + draw(st.integers(1, 64))]
    return bytes(data)


@pytest.mark.filterwarnings("ignore")
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_images())
def test_mutated_real_images_never_crash_the_intake(data: bytes) -> None:
    check(data)


@pytest.mark.filterwarnings("ignore")
@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_never_crash_the_intake(data: bytes) -> None:
    check(data)
