"""The engine computes Algorithm 1: SafeSpotSearch with the paper preset matches the plain loop."""

from __future__ import annotations

import pytest
import torch

from safespot import SafeSpotSearch, SearchConfig
from safespot.reference import reference_safe_spots
from safespot.search import collate, image_seed


def _generators(cfg: SearchConfig, x: torch.Tensor, stream: str) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(image_seed(cfg.seed, img, stream)) for img in x]


@pytest.mark.parametrize(("norm", "batch_size"), [("linf", 64), ("l2", 64), ("linf", 4)])
def test_engine_matches_the_reference_loop(tiny_model64, test_images, norm, batch_size) -> None:
    x = test_images[0][:8].double()
    # The paper's rules with 3 outer steps instead of 100; batch 4 makes images join mid-run.
    cfg = SearchConfig.preset("paper", norm=norm, outer_steps=3, batch_size=batch_size)
    engine = SafeSpotSearch(tiny_model64, cfg)
    engine.submit(x)
    got = collate(sorted(engine.run(), key=lambda r: r.key), like=x)
    want = reference_safe_spots(tiny_model64, x, cfg, _generators(cfg, x, "search"), _generators(cfg, x, "verify"))
    assert torch.equal(got.x_safe, want.x_safe)
    assert not torch.equal(want.x_safe, x), "the search must have moved the images"
    assert torch.equal(got.labels, want.labels) and torch.equal(got.found, want.found)
    assert want.found.any() and not want.found.all(), "both verdicts, so both ends of the verification are compared"
    assert torch.equal(got.grad_evals_per_image, want.grad_evals_per_image)
    assert torch.equal(got.outer_steps, want.outer_steps)
    for name in ("msp", "msp_adv", "margin_adv"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=0, atol=1e-10)


def test_reference_is_only_the_fixed_length_search(tiny_model64, test_images) -> None:
    with pytest.raises(ValueError, match="S-Full"):
        reference_safe_spots(tiny_model64, test_images[0][:1].double(), SearchConfig.preset("standard"), [], [])
