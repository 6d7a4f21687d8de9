"""The yardstick suites on the tiny model: survivors, guards, the CLI-facing validation."""

from __future__ import annotations

import pytest
import torch

from safespot.yardstick import SUITES, _inside, judge, suites_from


def test_pgd20_survivors_are_correct_images_and_counted(tiny_model, test_images) -> None:
    x, y = test_images[0][:48], test_images[1][:48]
    v = judge(tiny_model, x, y, "pgd20", norm="linf", eps=8 / 255)
    assert not bool((v.robust & ~v.correct).any()), "robust implies correct"
    assert v.survivors == {"pgd20": int(v.robust.sum())}
    again = judge(tiny_model, x, y, "pgd20", norm="linf", eps=8 / 255)
    assert torch.equal(v.robust, again.robust), "fixed seed: the same verdict"


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_apgd_pair_breaks_at_least_what_pgd20_breaks_mostly(tiny_model, test_images, norm) -> None:
    x, y = test_images[0][:40], test_images[1][:40]
    eps = 8 / 255 if norm == "linf" else 0.5
    weak = judge(tiny_model, x, y, "pgd20", norm=norm, eps=eps)
    strong = judge(tiny_model, x, y, "apgd", norm=norm, eps=eps)
    counts = list(strong.survivors.values())
    assert list(strong.survivors) == list(SUITES["apgd"])
    assert counts == sorted(counts, reverse=True), "each attack runs on the survivors of the last"
    assert counts[-1] == int(strong.robust.sum()) <= int(weak.robust.sum()) + 1


def test_a_point_outside_the_threat_model_never_counts() -> None:
    x = torch.full((2, 3, 4, 4), 0.5)
    adv = x.clone()
    adv[1, 0, 0, 0] += 9 / 255
    assert _inside(adv, x, 8 / 255, "linf").tolist() == [True, False]
    adv[0, 0, 0, 0] = 1.5
    assert not bool(_inside(adv, x, 8 / 255, "linf")[0])


def test_unknown_suites_are_refused() -> None:
    assert suites_from(["pgd20", "autoattack", "pgd20"]) == ["pgd20", "autoattack"]
    with pytest.raises(ValueError, match="autoattack"):
        suites_from(["pgd100"])
    with pytest.raises(ValueError, match="unknown attack suite"):
        judge(lambda z: z.flatten(1)[:, :10], torch.zeros(1, 3, 2, 2), torch.zeros(1, dtype=torch.long),
              "bogus", norm="linf", eps=0.1)
