"""The prediction of a FilterResult: its label, confidence and top-5 list, from the search's result."""

from __future__ import annotations

import torch

from safespot import ImageResult
from worker.results import prediction


def found_with(label: int, msp: float, top: list[tuple[int, float]]) -> ImageResult:
    return ImageResult(key="job", x_safe=torch.zeros(3, 2, 2), found=True, label=label, grad_evals=1,
                       outer_steps=0, msp=msp, top=top, msp_adv=msp, margin_adv=1.0, safe_at_start=True)


def test_the_label_leads_the_top5_when_probabilities_tie() -> None:
    tied = found_with(2, 0.4, [(0, 0.4), (2, 0.4), (1, 0.2)])
    result = prediction(tied, ["cat", "dog", "fox"])
    assert [e["label"] for e in result["top5"]] == [2, 0, 1]
    assert result["top5"][0] == {"label": 2, "class_name": "fox", "probability": 0.4}
    assert result["class_name"] == "fox" and result["confidence"] == 0.4


def test_classes_without_names_are_named_by_their_index() -> None:
    result = prediction(found_with(7, 0.9, [(7, 0.9), (3, 0.05)]), [])
    assert result["class_name"] == "7"
    assert [(e["label"], e["class_name"]) for e in result["top5"]] == [(7, "7"), (3, "3")]
