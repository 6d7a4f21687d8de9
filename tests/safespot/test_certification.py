from __future__ import annotations

import pytest

from safespot import SearchConfig
from safespot.certification import CertifySettings, certify_image, summarize

SMALL = CertifySettings(sigma=0.25, samples=2, n0=20, num=200, attack_steps=3)


def _cfg() -> SearchConfig:
    return SearchConfig.preset("fast", norm="l2", outer_steps=2, verify_targets=0)


def test_a_line_depends_only_on_its_image_index_and_settings(tiny_model, test_images) -> None:
    x, y = test_images
    first = certify_image(tiny_model, x[3], int(y[3]), 3, _cfg(), SMALL)
    certify_image(tiny_model, x[0], int(y[0]), 0, _cfg(), SMALL)  # another image in between
    again = certify_image(tiny_model, x[3], int(y[3]), 3, _cfg(), SMALL)
    first.pop("seconds"), again.pop("seconds")
    assert first == again
    other_seed = certify_image(tiny_model, x[3], int(y[3]), 3, _cfg(), CertifySettings(**{**SMALL.to_dict(), "seed": 1}))
    other_seed.pop("seconds")
    assert other_seed != first
    for name in ("original", "safe_spot"):
        part = first[name]
        assert part["radius"] >= 0 and 0 <= part["p_lower"] <= 1
        assert (part["prediction"] == -1) == (part["radius"] == 0 and part["p_lower"] < 0.5)


def test_summary_counts_certified_accuracy_per_radius() -> None:
    def line(label: int, pred: int, radius: float, robust: bool) -> dict:
        part = {"prediction": pred, "radius": radius, "p_lower": 0.9, "smoothed_prediction": pred,
                "empirical_robust": robust}
        return {"index": 0, "label": label, "found": True, "passes": 10, "seconds": 1.0,
                "original": part, "safe_spot": {**part, "radius": radius + 0.5}}

    rows = [line(1, 1, 0.3, True), line(2, 2, 0.8, False), line(3, 4, 0.9, False), line(0, -1, 0.0, False)]
    s = summarize(rows)
    assert s["images"] == 4
    o, a = s["original"], s["safe_spot"]
    assert o["certified_acc@0"] == 0.5 and o["certified_acc@0.25"] == 0.5 and o["certified_acc@0.5"] == 0.25
    assert o["certified_acc@1"] == 0.0 and a["certified_acc@1"] == 0.25
    assert o["mean_radius_correct"] == pytest.approx(0.55) and o["abstain_rate"] == 0.25
    assert o["empirical_robust_acc"] == 0.25
    assert summarize([]) == {"images": 0}
