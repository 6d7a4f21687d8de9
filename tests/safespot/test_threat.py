from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from safespot.threat import (
    _GRID_TOLERANCE,
    flat_norm,
    on_pixel_grid,
    project,
    project_box,
    psnr,
    quantize_toward,
    random_in_ball,
    snap_to_grid,
)

seeds = st.integers(min_value=0, max_value=2**31 - 1)


def _images(seed: int, n: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 8, 8), generator=g).float() / 255


@settings(max_examples=40, deadline=None)
@given(seed=seeds, radius=st.floats(1 / 255, 0.5), norm=st.sampled_from(["linf", "l2"]))
def test_project_box_lands_in_ball_and_box(seed: int, radius: float, norm: str) -> None:
    center = _images(seed)
    g = torch.Generator().manual_seed(seed + 1)
    far = center + torch.randn(center.shape, generator=g)
    out = project_box(far, center, radius, norm)  # type: ignore[arg-type]
    assert float(flat_norm(out - center, norm).max()) <= radius * (1 + 1e-5)  # type: ignore[arg-type]
    assert out.min() >= 0 and out.max() <= 1


@settings(max_examples=40, deadline=None)
@given(seed=seeds, radius=st.floats(1 / 255, 2.0), norm=st.sampled_from(["linf", "l2"]))
def test_quantize_toward_never_grows_the_perturbation(seed: int, radius: float, norm: str) -> None:
    center = _images(seed)
    x = project_box(random_in_ball(center, radius, norm, torch.Generator().manual_seed(seed)),  # type: ignore[arg-type]
                    center, radius, norm)  # type: ignore[arg-type]
    q = quantize_toward(x, center)
    assert bool(on_pixel_grid(q).all())
    # Coordinates shrink, up to the float-noise tolerance that keeps on-grid values put.
    assert bool(((q - center).abs() <= (x - center).abs() + _GRID_TOLERANCE / 255 + 1e-7).all())
    assert float(flat_norm(q - center, norm).max()) <= radius * (1 + 1e-5)  # type: ignore[arg-type]
    assert q.min() >= 0 and q.max() <= 1


def test_quantize_keeps_grid_values_exactly() -> None:
    x = _images(3)
    assert torch.equal(quantize_toward(x, x), x)
    assert torch.equal(snap_to_grid(x + 0.2 / 255), x)


def test_pixel_grid_detection() -> None:
    x = _images(5)
    assert bool(on_pixel_grid(x).all())
    assert not bool(on_pixel_grid(x + 0.3 / 255).any())
    assert not bool(on_pixel_grid(x - 2).any())


@settings(max_examples=20, deadline=None)
@given(seed=seeds, radius=st.floats(0.01, 1.0), norm=st.sampled_from(["linf", "l2"]))
def test_random_in_ball_is_inside(seed: int, radius: float, norm: str) -> None:
    center = _images(seed)
    p = random_in_ball(center, radius, norm, torch.Generator().manual_seed(seed))  # type: ignore[arg-type]
    assert float(flat_norm(p - center, norm).max()) <= radius * (1 + 1e-5)  # type: ignore[arg-type]


def test_project_accepts_per_image_radius() -> None:
    center = torch.zeros(2, 3, 4, 4)
    out = project(torch.ones_like(center), center, torch.tensor([0.1, 0.2]), "linf")
    assert torch.allclose(out[0], torch.full_like(out[0], 0.1))
    assert torch.allclose(out[1], torch.full_like(out[1], 0.2))


def test_psnr_of_one_level_everywhere() -> None:
    x = torch.full((1, 3, 4, 4), 0.5)
    value = float(psnr(x + 1 / 255, x)[0])
    assert abs(value - 20 * torch.log10(torch.tensor(255.0)).item()) < 1e-3
