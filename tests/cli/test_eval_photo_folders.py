"""`safespot eval` and `safespot model-card` on folders of photos: classes matched to the
checkpoint's (by name, by wnid), photos seen through its view, the mapping and view in the JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as tvf

from models.checkpoint import read_info
from safespot_cli import card_cmd, eval_cmd
from safespot_cli.errors import UsageError
from safespot_cli.eval_data import load_eval_data
from tests.cli.clikit import make_cli
from tests.training.photo_fixtures import WNIDS, image_folder, tiny_checkpoint, tiny_imagenet_val
from worker.imaging import decode_png

cli = make_cli(eval_cmd, card_cmd)
CLASSES = ["cat", "astronaut", "coffee"]
ORDER = ["coffee", "cat", "astronaut"]  # the checkpoint's: not the folders' sorted order


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return image_folder(tmp_path_factory.mktemp("named") / "photos", CLASSES, per_class=3)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "three.safetensors", ORDER,
                           [WNIDS[c] for c in ORDER])


def test_photos_are_labelled_by_the_checkpoints_classes_and_seen_through_its_view(
        photos: Path, checkpoint: Path) -> None:
    data = load_eval_data(str(photos), "test", None, read_info(checkpoint), 9)
    assert data.y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # coffee, cat, astronaut
    assert data.x.shape == (9, 32, 32, 3) and data.x.dtype == np.uint8
    # the first coffee photo, as torchvision's Resize(36) + CenterCrop(32) sees the decoded upload
    source = sorted((photos / "coffee").iterdir())[0]
    from service.images import decode_upload

    pixels = decode_png(decode_upload(source.read_bytes(), max_pixels=10**7).png).pixels()
    expected = tvf.center_crop(tvf.resize(pixels, [36], antialias=True), [32])
    got = torch.from_numpy(data.x[0]).permute(2, 0, 1).float() / 255
    assert pixels.shape[1:] != (32, 32) and float((got - expected).abs().max()) <= 1 / 255 + 1e-6
    assert data.extra["class_mapping"]["folders"] == {"coffee": 0, "cat": 1, "astronaut": 2}


def test_eval_on_an_image_folder_records_the_data_mapping_and_view(photos: Path, checkpoint: Path,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    assert cli("eval", "--model", str(checkpoint), "--data", str(photos), "--n", "6", "--methods",
               "none,s-full", "--preset", "fast", "--threads", "1", "--json", str(out)) == 0
    report = json.loads(out.read_text())
    assert report["n"] == 6 and report["indices"] == "stride 1.5 from 0"
    assert report["data"] == "photo folder photos (imagefolder, 9 images in 3 classes)"
    assert report["dataset"]["layout"] == "imagefolder" and report["dataset"]["path"] == str(photos)
    assert report["class_mapping"]["by"] == "class name"
    assert report["class_mapping"]["folders"] == {"coffee": 0, "cat": 1, "astronaut": 2}
    assert report["view"] | {"applied": None} == {
        "kind": "resize-crop", "resize": 36, "crop": 32, "input_size": [3, 32, 32],
        "description": "shorter side resized to 36, centre 32x32 crop", "applied": None}
    assert set(report["methods"]) == {"none", "s-full"}
    assert 0 <= report["methods"]["s-full"]["found"] <= 6


def test_unknown_class_folders_are_refused_or_skipped_and_counted(photos: Path, tmp_path: Path) -> None:
    two = tiny_checkpoint(tmp_path / "two.safetensors", ["astronaut", "cat"])
    with pytest.raises(UsageError, match=r"1 of the 3 class folders .*'coffee'.*--skip-unknown-classes"):
        cli("eval", "--model", str(two), "--data", str(photos), "--n", "4", "--methods", "none")
    out = tmp_path / "skip.json"
    assert cli("eval", "--model", str(two), "--data", str(photos), "--n", "4", "--methods", "none",
               "--skip-unknown-classes", "--json", str(out)) == 0
    report = json.loads(out.read_text())
    assert report["class_mapping"]["skipped_unknown"] == {"coffee": 3}
    assert report["class_mapping"]["folders"] == {"astronaut": 0, "cat": 1}
    assert report["data"].endswith("(imagefolder, 6 images in 2 classes; 3 images of unknown classes skipped)")
    npz = tmp_path / "set.npz"
    np.savez(npz, x=np.zeros((2, 32, 32, 3), np.uint8), y=np.array([0, 1]))
    with pytest.raises(UsageError, match="applies to photo folders"):
        cli("eval", "--model", str(two), "--data", str(npz), "--n", "2", "--skip-unknown-classes")


def test_model_card_on_tiny_imagenet_val_maps_wnids_and_runs_apgd(tmp_path: Path, checkpoint: Path) -> None:
    tiny = tiny_imagenet_val(tmp_path / "tiny-imagenet-200", CLASSES, per_class=2)
    ckpt = tmp_path / "card.safetensors"
    ckpt.write_bytes(checkpoint.read_bytes())
    assert cli("model-card", str(ckpt), "--data", str(tiny), "--n", "6", "--autoattack-n", "0") == 0
    test = read_info(ckpt).metrics["test"]
    assert test["data"] == "photo folder tiny-imagenet-200 (tinyimagenet-val, 6 images in 3 classes)"
    assert test["class_mapping"]["by"] == "wnid" and test["class_mapping"]["folders"][WNIDS["coffee"]] == 0
    assert test["view"]["kind"] == "resize-crop" and test["n"] == 6
    card = ckpt.with_suffix(".md").read_text()
    assert "| view | shorter side resized to 36, centre 32x32 crop;" in card
    assert "| class folders | 3 matched to the checkpoint's classes by wnid |" in card
    out = tmp_path / "apgd.json"
    assert cli("eval", "--model", str(ckpt), "--data", str(tiny / "val"), "--n", "4", "--methods", "none",
               "--attack", "apgd", "--json", str(out)) == 0
    apgd = json.loads(out.read_text())["methods"]["none"]["attacks"]["apgd"]
    assert list(apgd["survivors"]) == ["apgd-ce", "apgd-t"]
    assert apgd["survivors"]["apgd-t"] <= apgd["survivors"]["apgd-ce"] <= 4


def test_a_set_name_means_the_packed_set_even_beside_a_folder_of_that_name(
        tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image_folder(tmp_path / "work" / "cifar10", CLASSES, per_class=1)
    monkeypatch.chdir(tmp_path / "work")
    with pytest.raises(UsageError, match="CIFAR-10 not found in"):
        load_eval_data("cifar10", "test", str(tmp_path / "empty"), read_info(checkpoint), 2)
    assert load_eval_data("./cifar10", "test", None, read_info(checkpoint), 2).y.tolist() == [0, 1]
