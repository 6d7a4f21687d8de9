"""The synthetic non-photo images: deterministic, varied, and each kind recognisably itself."""

from __future__ import annotations

import numpy as np
import pytest

from training.nonphoto import KINDS, TEXTURES, downsize, nonphoto_images, smooth_noise
from training.ood_sets import noise_images

N = 12


@pytest.fixture(scope="module")
def drawn() -> dict[str, np.ndarray]:
    return {kind: nonphoto_images(kind, N, 32, seed=0).x for kind in KINDS}


def test_shapes_dtype_and_any_size(drawn: dict[str, np.ndarray]) -> None:
    for x in drawn.values():
        assert x.shape == (N, 32, 32, 3) and x.dtype == np.uint8
    for kind in KINDS:
        assert nonphoto_images(kind, 2, (24, 40), seed=0).x.shape == (2, 24, 40, 3)
        assert nonphoto_images(kind, 0, 16).x.shape == (0, 16, 16, 3)
    with pytest.raises(ValueError, match="unknown kind"):
        nonphoto_images("noise", 1)
    with pytest.raises(ValueError, match="at least 4x4"):
        nonphoto_images("text", 1, 2)


def test_a_seed_gives_the_same_images_and_prefixes_do_not_move(drawn: dict[str, np.ndarray]) -> None:
    for kind in KINDS:
        again = nonphoto_images(kind, N, 32, seed=0)
        assert np.array_equal(again.x, drawn[kind])
        assert np.array_equal(nonphoto_images(kind, 3, 32, seed=0).x, drawn[kind][:3])
        other = nonphoto_images(kind, N, 32, seed=1).x
        assert not any(np.array_equal(a, b) for a in other for b in drawn[kind])


def test_each_image_names_its_style() -> None:
    texture = nonphoto_images("texture", 30, 16, seed=3).styles
    assert {s.split("/")[1] for s in texture} == set(TEXTURES)  # every pattern turns up in 30
    assert all(s.startswith("text/") for s in nonphoto_images("text", 3, 16).styles)


def test_no_image_is_flat(drawn: dict[str, np.ndarray]) -> None:
    for kind, x in drawn.items():
        per_image = x.reshape(N, -1).astype(np.float64).std(axis=1)
        assert per_image.min() > 5, kind
        assert len({im.tobytes() for im in x}) == N, kind  # no two images alike


def _stats(x: np.ndarray) -> dict[str, float]:
    xf = x.astype(np.float64)
    coarse = (x // 32).astype(np.int64)
    codes = coarse[..., 0] * 64 + coarse[..., 1] * 8 + coarse[..., 2]
    gx = np.abs(np.diff(xf, axis=2)).mean()
    gy = np.abs(np.diff(xf, axis=1)).mean()
    return {"saturation": float((xf.max(-1) - xf.min(-1)).mean()),
            "gradient": float((gx + gy) / 2),
            "colours": float(np.median([len(np.unique(c)) for c in codes])),
            "rows_over_columns": float(gy / gx)}


def test_kinds_differ_in_their_statistics(drawn: dict[str, np.ndarray]) -> None:
    """Textures are colourful and busy; screenshots many-coloured with horizontal structure
    (bars and lines: edges between rows); text two-toned; noise busier than all."""
    s = {kind: _stats(x) for kind, x in drawn.items()}
    assert s["texture"]["saturation"] > 1.3 * max(s["text"]["saturation"], s["screenshot"]["saturation"])
    assert s["texture"]["gradient"] > 1.2 * max(s["text"]["gradient"], s["screenshot"]["gradient"])
    assert s["screenshot"]["colours"] > 1.5 * s["text"]["colours"]
    assert s["screenshot"]["rows_over_columns"] > 1.3 * s["text"]["rows_over_columns"]
    noise = _stats(noise_images("gaussian", N, (32, 32)))
    assert noise["gradient"] > 2 * max(v["gradient"] for v in s.values())


def test_downsize_keeps_the_centre_and_averages() -> None:
    from PIL import Image

    wide = np.zeros((60, 120, 3), np.uint8)
    wide[:, :10] = 255  # a strip the centre crop drops
    wide[:, 60:] = 200
    small = np.asarray(downsize(Image.fromarray(wide), (6, 6)))
    assert small.shape == (6, 6, 3) and small[:, 0].max() < 10  # the white strip is cropped away
    stripes = np.zeros((64, 64, 3), np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes average to grey, not to an aliased pattern
    grey = np.asarray(downsize(Image.fromarray(stripes), (8, 8))).astype(np.int64)
    assert np.abs(grey - 128).max() <= 12


def test_smooth_noise_spans_zero_to_one_and_is_smooth() -> None:
    v = smooth_noise(np.random.default_rng(0), (64, 64))
    assert v.min() == 0 and v.max() == 1
    assert np.abs(np.diff(v, axis=1)).mean() < 0.05  # neighbours close: not white noise
