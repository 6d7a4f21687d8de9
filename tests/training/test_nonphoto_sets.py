"""`safespot data nonphoto`: held-out photos from a Tiny ImageNet copy, the evaluation sets and
the calibration mix, read back with the loaders ood-eval and ood-calibrate use."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from safespot_cli import data_cmd
from safespot_cli.errors import UsageError
from tests.cli.clikit import make_cli
from training.data import DataError, load_images
from training.nonphoto_sets import (
    MANIFEST,
    OUTLIERS_FILE,
    PHOTOS_FILE,
    class_photos,
    eval_file,
    mix_counts,
    photo_halves,
    write_sets,
)
from training.ood_sets import OUTLIER_KEY, load_ood_sets
from training.ood_training import outlier_split

cli = make_cli(data_cmd)
WNIDS = ("n02480855", "n10148035")
PER_CLASS = 6


def jpeg(rng: np.random.Generator) -> bytes:
    """A 64x64 JPEG with structure (a gradient and a block), as Tiny ImageNet stores its photos."""
    x = np.zeros((64, 64, 3), np.uint8)
    x[:] = np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None]
    top, left = rng.integers(0, 40, 2)
    x[top:top + 24, left:left + 24] = rng.integers(0, 256, 3, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(x).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-imagenet-200/ with wnids.txt and train/<wnid>/images/*.JPEG: the two held-out
    classes and one of the standard 200, which must never be read."""
    root = tmp_path_factory.mktemp("copy") / "tiny-imagenet-200"
    rng = np.random.default_rng(0)
    for wnid in (*WNIDS, "n01443537"):
        images = root / "train" / wnid / "images"
        images.mkdir(parents=True)
        for k in range(PER_CLASS):
            (images / f"{wnid}_{k}.JPEG").write_bytes(jpeg(rng))
    (root / "wnids.txt").write_text("n01443537\n" + "\n".join(WNIDS) + "\n")
    return root


def test_held_out_photos_are_shrunk_by_the_importers_box_average(copy: Path) -> None:
    photos = class_photos(copy.parent, WNIDS, 32)  # the folder above works as for `data import`
    assert photos.x.shape == (2 * PER_CLASS, 32, 32, 3) and photos.x.dtype == np.uint8
    assert photos.wnids == [WNIDS[0]] * PER_CLASS + [WNIDS[1]] * PER_CLASS
    for image, name in zip(photos.x, photos.files, strict=True):
        with Image.open(copy / name) as im:
            full = np.asarray(im.convert("RGB"), np.float64)
        box = full.reshape(32, 2, 32, 2, 3).mean((1, 3))
        assert np.abs(image - box).max() <= 0.5
    assert "n01443537" not in " ".join(photos.files) and "box average" in photos.source
    assert class_photos(copy, WNIDS[:1], 16).x.shape == (PER_CLASS, 16, 16, 3)
    with pytest.raises(DataError, match="n09999999"):
        class_photos(copy, ("n09999999",), 32)


def test_photo_halves_split_each_class_by_position_and_interleave(copy: Path) -> None:
    photos = class_photos(copy, WNIDS, 32)
    evaluated, held = photo_halves(photos)
    assert set(evaluated).isdisjoint(held) and len(evaluated) + len(held) == len(photos.x)
    assert [photos.wnids[i] for i in evaluated[:4]] == [WNIDS[0], WNIDS[1]] * 2
    assert [photos.files[i].rsplit("_", 1)[1] for i in evaluated[:2]] == ["0.JPEG", "0.JPEG"]


def test_mix_counts_take_turns_and_respect_capacity() -> None:
    assert mix_counts(7, ["a", "b", "c"], {}) == {"a": 3, "b": 2, "c": 2}
    assert mix_counts(9, ["a", "photos"], {"photos": 2}) == {"a": 7, "photos": 2}
    assert mix_counts(3, ["photos"], {"photos": 0}) == {"photos": 0}


def test_the_command_writes_sets_that_ood_eval_and_ood_calibrate_read(copy: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sets"
    assert cli("data", "nonphoto", "--out", str(out), "--n", "5", "--n-outliers", "30",
               "--heldout-photos", str(copy), "--seed", "3") == 0
    printed = capsys.readouterr().out
    assert f"--ood-set texture={out / eval_file('texture')}" in printed and "too small" in printed
    files = {kind: out / eval_file(kind) for kind in ("texture", "text", "screenshot")} | {"photos": out / PHOTOS_FILE}
    sets, skipped = load_ood_sets([], files, (32, 32), 5, tinyimagenet=tmp_path / "none", fashion_dir=tmp_path)
    assert skipped == {} and [s.name for s in sets] == list(files)
    assert all(s.x.shape == (5, 32, 32, 3) for s in sets)
    mix = load_images(out / OUTLIERS_FILE, OUTLIER_KEY)
    train, val = outlier_split(len(mix), 10)  # what the trainer and ood-calibrate do with it
    assert len(mix) == 30 and len(train) == 20 and len(val) == 10
    with np.load(out / OUTLIERS_FILE, allow_pickle=False) as f:
        kinds, styles = list(f["kind"]), list(f["style"])
        assert "seed 4" in str(f["source"])  # --seed + 1
    assert kinds[:6] == ["texture", "text", "screenshot", "gaussian", "uniform", "photos"]
    assert {kinds.count(k) for k in set(kinds)} == {5}
    # Calibration never sees an evaluated image: other seeds, the other half of the photos.
    evaluated = {im.tobytes() for s in sets for im in s.x}
    assert not evaluated & {im.tobytes() for im in mix}
    with np.load(out / PHOTOS_FILE, allow_pickle=False) as f:
        assert set(f["wnid"]) == set(WNIDS) and all(int(p.rsplit("_", 1)[1][:-5]) % 2 == 0 for p in f["image_path"])
    assert {s for s, k in zip(styles, kinds, strict=True) if k == "photos"} == set(WNIDS)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["calibration"]["seed"] == 4 and manifest["evaluation"][eval_file("text")]["seed"] == 3
    assert manifest["evaluation"][PHOTOS_FILE]["wnids"] == list(WNIDS) and manifest["size"] == [32, 32]


def test_without_photos_and_with_chosen_kinds(tmp_path: Path) -> None:
    manifest = write_sets(tmp_path, n=2, size=16, seed=0, calibration_seed=9, n_outliers=4,
                          mix_kinds=("text", "uniform", "photos"))
    assert not (tmp_path / PHOTOS_FILE).exists() and set(manifest["calibration"]["kinds"]) == {"text", "uniform"}
    assert load_images(tmp_path / OUTLIERS_FILE, OUTLIER_KEY).shape == (4, 16, 16, 3)
    with pytest.raises(DataError, match="no kinds"):
        write_sets(tmp_path, n=2, size=16, seed=0, calibration_seed=9, n_outliers=4, mix_kinds=("photos",))
    with pytest.raises(DataError, match="unknown calibration kinds"):
        write_sets(tmp_path, n=2, size=16, seed=0, calibration_seed=9, n_outliers=4, mix_kinds=("video",))


def test_a_calibration_seed_equal_to_the_evaluation_seed_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="must differ"):
        cli("data", "nonphoto", "--out", str(tmp_path), "--n", "2", "--seed", "5", "--calibration-seed", "5")
    assert not list(tmp_path.iterdir())


def test_the_sets_are_made_without_torch() -> None:
    code = "import sys, training.nonphoto_sets, training.nonphoto_ui; assert 'torch' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert done.returncode == 0, done.stderr
