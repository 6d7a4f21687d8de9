"""Model cards are rendered from the checkpoint's own metadata."""

from __future__ import annotations

from models.cards import render_card
from models.checkpoint import ModelInfo


def _info(**training: object) -> ModelInfo:
    return ModelInfo(arch="cifar_cnn", num_classes=2, input_size=(3, 32, 32), class_names=["cat", "dog"],
                     mean=[0.5] * 3, std=[0.25] * 3, threat={"norm": "linf", "eps": 8 / 255},
                     recipe={"name": "adv-fast"}, name="m", data={"source": "cifar10_train.npz"},
                     metrics={"test": {"n": 10000, "clean_acc": 0.7327, "pgd20_acc": 0.3783,
                                       "command": "safespot model-card m.safetensors --n 10000"}},
                     training={"seconds": 1800.0, "epochs": 3, "best_epoch": 3, "threads": 2, "device": "cpu",
                               "torch": "2.14.1", "host": "x86_64 vm", "command": "safespot train --epochs 3",
                               **training})


def test_the_card_states_accuracy_time_precision_and_the_exact_command() -> None:
    card = render_card(_info(config={"precision": "bf16"}), "ab" * 32, "m.safetensors")
    assert "| clean accuracy | 73.27% |" in card and "| PGD-20 accuracy | 37.83% |" in card
    assert "30.0 min of training epochs (3 epochs, best epoch 3)" in card and "bf16 autocast" in card
    assert "safespot train --epochs 3" in card and "safespot model-card m.safetensors --n 10000" in card
    assert "JPEG-derived" in card


def test_runs_recorded_before_the_precision_option_read_as_float32() -> None:
    card = render_card(_info(config={}), "ab" * 32, "m.safetensors")
    assert "float32" in card and "bf16" not in card


def test_a_given_name_titles_the_card_over_the_metadata_name() -> None:
    assert render_card(_info(), "ab" * 32, "m.safetensors").startswith("# Model card: `m`")
    card = render_card(_info(), "ab" * 32, "cifar10.safetensors", name="cifar10")
    assert card.startswith("# Model card: `cifar10`") and "- File: `cifar10.safetensors`" in card


def test_a_run_that_kept_its_last_epoch_says_so_and_names_the_best_one() -> None:
    card = render_card(_info(kept="last", kept_epoch=3, best_epoch=2), "ab" * 32, "m.safetensors")
    assert "(3 epochs, last epoch kept; best held-out epoch 2)" in card


def test_only_a_cifar10_card_warns_that_its_cifar10_is_jpeg_derived() -> None:
    import dataclasses

    photo = dataclasses.replace(_info(), domain="tinyimagenet", data={"source": "tinyimagenet_train.npz"})
    card = render_card(photo, "ab" * 32, "default.safetensors")
    assert "JPEG-derived" not in card and "tinyimagenet_train.npz" in card
