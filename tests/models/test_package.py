from __future__ import annotations

from pathlib import Path

import pytest

import models
from models.errors import UnknownModelError
from tests.conftest import REPO, TINY_MODEL


def test_models_resolves_inside_this_repository() -> None:
    # `models` is a generic top-level name: make sure no other package shadows ours.
    assert Path(models.__file__).resolve().parent == REPO / "models"


def test_load_model_by_path_returns_an_eval_mode_classifier() -> None:
    model = models.load_model(TINY_MODEL)
    assert not model.training


def test_unknown_names_list_the_shipped_models() -> None:
    with pytest.raises(UnknownModelError, match="shipped"):
        models.load_model("no-such-model")
