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


def test_cifar10_and_default_are_shipped_and_resolve_to_their_own_files() -> None:
    assert {"default", "cifar10"} <= set(models.SHIPPED)
    for name in models.SHIPPED:
        assert models.resolve(name) == models.ZOO_DIR / f"{name}.safetensors"


def test_a_shipped_file_is_called_by_its_stem_other_files_by_their_metadata(tmp_path: Path) -> None:
    # a shipped file whose metadata names it otherwise (as cifar10.safetensors once said
    # "default") is called by its file name.
    assert models.display_name(models.resolve("cifar10"), "default") == "cifar10"
    elsewhere = tmp_path / "run.safetensors"
    assert models.display_name(elsewhere, "mine") == "mine"
    assert models.display_name(elsewhere, "") == "run"


def test_the_cifar10_model_is_the_cifar10_classifier() -> None:
    info = models.load_checkpoint("cifar10").info
    assert info.num_classes == 10 and tuple(info.input_size) == (3, 32, 32)
    assert info.class_names[:3] == ["airplane", "automobile", "bird"]


def test_the_default_model_is_the_photo_model_and_knows_the_readme_coffee() -> None:
    import torch
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    from models.checkpoint import load_checkpoint
    from safespot.canvas import make_view
    from tests.conftest import PHOTOS

    loaded = load_checkpoint(models.resolve("default"))
    info = loaded.info
    assert info.domain == "tinyimagenet" and info.num_classes == 200 and len(info.wnids) == 200
    assert info.view == {"kind": "resize-crop", "resize": 32, "crop": 32} and info.threat["eps"] == pytest.approx(4 / 255)
    photo = pil_to_tensor(Image.open(PHOTOS / "coffee.webp").convert("RGB")).unsqueeze(0) / 255
    with torch.no_grad():
        probs = loaded.model(make_view(info.view, info.input_size)(photo, [tuple(photo.shape[-2:])])).softmax(1)[0]
    assert info.class_names[int(probs.argmax())] == "espresso" and float(probs.max()) > 0.5
