"""Photo folders for evaluation: both layouts listed, class folders mapped to the checkpoint's
classes by name or wnid (never by sorted order), unknown and ambiguous ones refused or skipped."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.photo_fixtures import WNIDS, image_folder, tiny_imagenet_val
from training.data import DataError
from training.photo_folders import (
    IMAGE_FOLDER,
    TINY_IMAGENET_VAL,
    list_labelled_files,
    map_classes,
    mapped_in_class_order,
)
from training.public_data import parse_val_annotations

CLASSES = ["cat", "astronaut", "coffee"]


def test_an_image_folder_lists_every_class_folder_and_image_suffix(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "photos", CLASSES, per_class=3)
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / ".cache").mkdir()
    listed = list_labelled_files(root)
    assert listed.layout == IMAGE_FOLDER
    assert listed.counts() == {"astronaut": 3, "cat": 3, "coffee": 3}
    assert {f.suffix for f in listed.files} == {".JPEG", ".png", ".webp"}


def test_tiny_imagenet_val_is_read_from_its_annotations_given_val_or_the_folder_above(tmp_path: Path) -> None:
    root = tiny_imagenet_val(tmp_path / "tiny-imagenet-200", CLASSES, per_class=2)
    for given in (root, root / "val"):
        listed = list_labelled_files(given)
        assert listed.layout == TINY_IMAGENET_VAL and listed.root == root / "val"
        assert listed.labels[:3] == [WNIDS[c] for c in CLASSES]  # the annotations' order, interleaved
        assert listed.files[0] == root / "val" / "images" / "val_0.JPEG"


def test_tiny_imagenet_val_refuses_annotated_images_that_are_missing(tmp_path: Path) -> None:
    root = tiny_imagenet_val(tmp_path / "t", CLASSES, per_class=1)
    (root / "val" / "images" / "val_1.JPEG").unlink()
    with pytest.raises(DataError, match=r"1 annotated images are not in images/.*val_1\.JPEG"):
        list_labelled_files(root)


@pytest.mark.parametrize("line", ["../../etc/passwd\tn01", "sub/val_0.JPEG\tn01", "val_0.JPEG", "\tn01"])
def test_val_annotations_name_only_files_inside_images(line: str) -> None:
    with pytest.raises(DataError, match="line 2"):
        parse_val_annotations(f"val_9.JPEG\tn01\t0\t0\t1\t1\n{line}\n".encode(), "ann")
    assert parse_val_annotations(b"val_9.JPEG\tn01\t0\t0\t1\t1\n", "ann") == [("val_9.JPEG", "n01")]


def test_folders_map_by_class_name_in_the_checkpoints_order_not_the_sorted_one(tmp_path: Path) -> None:
    listed = list_labelled_files(image_folder(tmp_path / "p", CLASSES, per_class=2))
    names = ["coffee", "cat", "astronaut", "dog"]  # sorted folder order would say astronaut=0
    mapping = map_classes(listed.counts(), names, [])
    assert mapping.index == {"coffee": 0, "cat": 1, "astronaut": 2}
    assert set(mapping.matched_by.values()) == {"class name"}
    files, labels = mapped_in_class_order(listed, mapping)
    assert labels == [0, 0, 1, 1, 2, 2]
    assert all(f.parent.name == names[i] for f, i in zip(files, labels, strict=True))


def test_wnid_folders_map_through_the_checkpoints_wnids(tmp_path: Path) -> None:
    listed = list_labelled_files(image_folder(tmp_path / "p", CLASSES, per_class=1, by_wnid=True))
    names = ["coffee, cup of coffee", "tabby cat", "astronaut, spaceman"]
    wnids = [WNIDS["coffee"], WNIDS["cat"], WNIDS["astronaut"]]
    mapping = map_classes(listed.counts(), names, wnids)
    assert mapping.index == {WNIDS["coffee"]: 0, WNIDS["cat"]: 1, WNIDS["astronaut"]: 2}
    assert mapping.to_dict(listed.counts())["by"] == "wnid"
    with pytest.raises(DataError, match=r"3 of the 3 class folders.*no wnids"):
        map_classes(listed.counts(), names, [])


def test_unknown_folders_are_refused_by_name_or_skipped_and_counted() -> None:
    counts = {"cat": 3, "zebra": 2, "okapi": 1}
    with pytest.raises(DataError, match=r"2 of the 3 class folders .*'zebra', 'okapi'.*--skip-unknown-classes"):
        map_classes(counts, ["cat", "dog"], [])
    mapping = map_classes(counts, ["cat", "dog"], [], skip_unknown=True)
    assert mapping.index == {"cat": 0} and mapping.unknown == {"zebra": 2, "okapi": 1}
    report = mapping.to_dict(counts)
    assert report["images"] == 3 and report["skipped_unknown"] == {"zebra": 2, "okapi": 1}
    with pytest.raises(DataError, match="none of the 2 class folders"):
        map_classes({"zebra": 2, "okapi": 1}, ["cat", "dog"], [], skip_unknown=True)


def test_a_name_two_classes_share_is_ambiguous_not_guessed() -> None:
    names = ["crane", "heron", "crane"]  # ImageNet-1k has two classes called "crane"
    with pytest.raises(DataError, match=r"match more than one class: 'crane' \(classes \[0, 2\]\)"):
        map_classes({"crane": 4, "heron": 1}, names, [])
    mapping = map_classes({"crane": 4, "heron": 1}, names, [], skip_unknown=True)
    assert mapping.index == {"heron": 1} and mapping.ambiguous == {"crane": [0, 2]}
    assert map_classes({"n02012849": 4}, names, ["n03126707", "n02009912", "n02012849"]).index == {"n02012849": 2}


def test_a_checkpoint_without_class_names_cannot_be_matched() -> None:
    with pytest.raises(DataError, match="names no classes"):
        map_classes({"cat": 1}, [], [])
