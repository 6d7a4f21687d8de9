from __future__ import annotations

import numpy as np
import pytest

from safespot.ood_eval import bootstrap_intervals, ood_metrics


def test_bootstrap_intervals_hold_the_estimate_and_narrow_with_more_data() -> None:
    rng = np.random.default_rng(0)
    small = bootstrap_intervals(rng.normal(1, 1, 200), rng.normal(0, 1, 200), rounds=300)
    ins, outs = rng.normal(1, 1, 2000), rng.normal(0, 1, 2000)
    large = bootstrap_intervals(ins, outs, rounds=300)
    point = ood_metrics(ins, outs)
    for metric in ("auroc", "aupr", "fpr95"):
        lo, hi = large[metric]
        assert lo <= point[metric] <= hi
        assert hi - lo < small[metric][1] - small[metric][0]
    # Two unit Gaussians one sigma apart: AUROC = Phi(1/sqrt 2) = 0.760.
    assert large["auroc"][0] < 0.760 < large["auroc"][1]


def test_bootstrap_is_reproducible_and_a_method_paired_with_itself_differs_by_nothing() -> None:
    rng = np.random.default_rng(1)
    ins, outs = rng.random(300), rng.random(300) * 0.8
    assert bootstrap_intervals(ins, outs, rounds=50) == bootstrap_intervals(ins, outs, rounds=50)
    assert bootstrap_intervals(ins, outs, rounds=50, seed=1) != bootstrap_intervals(ins, outs, rounds=50)
    same = bootstrap_intervals(ins, outs, rounds=50, paired_with=(ins, outs))
    assert same == {"auroc": [0.0, 0.0], "aupr": [0.0, 0.0], "fpr95": [0.0, 0.0]}


def test_paired_difference_separates_a_better_method_that_single_intervals_cannot() -> None:
    rng = np.random.default_rng(2)
    shared_in, shared_out = rng.normal(0.6, 1, 400), rng.normal(0, 1, 400)
    # The better method is the same scores plus a small, consistent improvement on each image.
    better_in, better_out = shared_in + 0.05, shared_out - 0.05
    alone = bootstrap_intervals(better_in, better_out, rounds=300)
    base = bootstrap_intervals(shared_in, shared_out, rounds=300)
    assert alone["auroc"][0] < base["auroc"][1]  # the separate intervals overlap
    diff = bootstrap_intervals(better_in, better_out, rounds=300, paired_with=(shared_in, shared_out))
    assert diff["auroc"][0] > 0  # the paired difference does not


def test_bootstrap_refuses_non_finite_scores() -> None:
    with pytest.raises(ValueError, match="finite"):
        bootstrap_intervals([0.1, np.nan], [0.2, 0.3], rounds=5)
