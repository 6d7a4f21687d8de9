"""Labelled photo folders for evaluation, and how their class folders map to a checkpoint's classes.

Two layouts are read (files only; nothing is decoded here):

- an ImageFolder tree, ``DIR/CLASS/*.JPEG`` (any depth below the class
  folder; the suffixes of :data:`training.data.IMAGE_SUFFIXES`), as ImageNet's
  and Tiny ImageNet's ``train/`` are laid out, with folders named by WordNet
  id (``n01443537``) or by readable class name (``cat``);
- Tiny ImageNet's validation folder, ``val/images/*.JPEG`` with
  ``val/val_annotations.txt`` (file, wnid, box; parsed by
  :func:`training.public_data.parse_val_annotations`), given as the ``val``
  folder or the ``tiny-imagenet-200`` folder above it.

A folder's label becomes a class *index of the checkpoint* by exact class
name, or by WordNet id when the checkpoint records them
(``ModelInfo.wnids``).  The sorted order of the folders is never used: a
folder the checkpoint does not know, or one that two of its classes could
be (ImageNet names two classes "crane"), is refused, or skipped and counted
when the caller asks.  Files are listed class by class in index order, so a
fixed stride over them (:func:`training.data.strided_indices`) is class-balanced.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.data import IMAGE_SUFFIXES, DataError
from training.public_data import parse_val_annotations

IMAGE_FOLDER = "imagefolder"
TINY_IMAGENET_VAL = "tinyimagenet-val"
ANNOTATIONS = "val_annotations.txt"
SHOWN = 5  # unknown folders named in an error or a report line


@dataclass
class LabelledFiles:
    """The image files of a photo folder and the class folder (or wnid) each belongs to."""

    root: Path
    layout: str  # IMAGE_FOLDER or TINY_IMAGENET_VAL
    files: list[Path]
    labels: list[str]  # per file: its class folder's name, or its annotated wnid

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(self.labels).items()))


@dataclass
class ClassMapping:
    """Folder label -> the checkpoint's class index, and what was left out."""

    index: dict[str, int]
    matched_by: dict[str, str]  # label -> "class name" or "wnid"
    unknown: dict[str, int] = field(default_factory=dict)  # label -> images skipped
    ambiguous: dict[str, list[int]] = field(default_factory=dict)  # label -> candidate indices (skipped)

    def to_dict(self, counts: dict[str, int]) -> dict[str, Any]:
        by = sorted(set(self.matched_by.values()))
        return {"by": " and ".join(by), "classes": len(self.index),
                "images": sum(counts[label] for label in self.index),
                "folders": dict(sorted(self.index.items(), key=lambda kv: (kv[1], kv[0]))),
                "skipped_unknown": dict(self.unknown),
                "skipped_ambiguous": {k: {"candidates": v, "images": counts[k]} for k, v in self.ambiguous.items()}}


def is_photo_folder(path: Path) -> bool:
    """Whether `path` is a folder this module reads (not CIFAR-10's batch folder)."""
    return path.is_dir() and not (path / "cifar-10-batches-py").is_dir() and path.name != "cifar-10-batches-py"


def list_labelled_files(root: Path) -> LabelledFiles:
    """The labelled images under `root`, in either layout (see the module docstring)."""
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    for val in (root, root / "val"):
        if (val / ANNOTATIONS).is_file() and (val / "images").is_dir():
            return _tiny_imagenet_val(val)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: expected one sub-folder per class (DIR/CLASS/*.JPEG) or Tiny ImageNet's "
                        f"val/ ({ANNOTATIONS} + images/)")
    files, labels = [], []
    for cls in classes:
        found = sorted(f for f in (root / cls).rglob("*")
                       if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file() and not f.name.startswith("."))
        files += found
        labels += [cls] * len(found)
    if not files:
        raise DataError(f"{root}: no images in its class folders ({', '.join(classes[:SHOWN])} ...)")
    return LabelledFiles(root, IMAGE_FOLDER, files, labels)


def _tiny_imagenet_val(val: Path) -> LabelledFiles:
    annotations = val / ANNOTATIONS
    pairs = parse_val_annotations(annotations.read_bytes(), str(annotations))
    present = {p.name for p in (val / "images").iterdir() if p.is_file()}
    missing = [file for file, _ in pairs if file not in present]
    if missing:
        raise DataError(f"{annotations}: {len(missing)} annotated images are not in images/ "
                        f"({', '.join(missing[:SHOWN])})")
    if not pairs:
        raise DataError(f"{annotations}: no annotated images")
    return LabelledFiles(val, TINY_IMAGENET_VAL, [val / "images" / f for f, _ in pairs], [w for _, w in pairs])


def map_classes(counts: dict[str, int], class_names: list[str], wnids: list[str], *,
                skip_unknown: bool = False) -> ClassMapping:
    """Map each folder label (with its image count) to the checkpoint's class index.

    By exact class name or by wnid; a label that matches no class, or more
    than one, is refused (DataError naming a few) unless `skip_unknown`,
    when it is left out and reported with its image count.
    """
    if not class_names and not wnids:
        raise DataError("the checkpoint names no classes (class_names and wnids are empty): "
                        "its class folders cannot be matched")
    by_name: dict[str, set[int]] = {}
    for i, name in enumerate(class_names):
        by_name.setdefault(name, set()).add(i)
    by_wnid = {w: i for i, w in enumerate(wnids)}
    mapping = ClassMapping({}, {})
    for label in counts:
        candidates = set(by_name.get(label, set()))
        if label in by_wnid:
            candidates.add(by_wnid[label])
        if len(candidates) == 1:
            mapping.index[label] = candidates.pop()
            mapping.matched_by[label] = "class name" if label in by_name else "wnid"
        elif candidates:
            mapping.ambiguous[label] = sorted(candidates)
        else:
            mapping.unknown[label] = counts[label]
    if (mapping.unknown or mapping.ambiguous) and not skip_unknown:
        raise DataError(_refusal(mapping, counts, class_names, wnids))
    if not mapping.index:
        raise DataError(f"none of the {len(counts)} class folders ({_few(list(counts))}) is a class of the "
                        f"checkpoint ({_few(class_names)}{'; wnids ' + _few(wnids) if wnids else ''})")
    return mapping


def _refusal(mapping: ClassMapping, counts: dict[str, int], class_names: list[str], wnids: list[str]) -> str:
    parts = []
    if mapping.unknown:
        parts.append(f"{len(mapping.unknown)} of the {len(counts)} class folders are not classes of the "
                     f"checkpoint: {_few(list(mapping.unknown))} (it knows {len(class_names)} class names, "
                     f"e.g. {_few(class_names, 3)}, and " + (f"wnids, e.g. {_few(wnids, 3)})" if wnids
                                                              else "no wnids)"))
    if mapping.ambiguous:
        parts.append(f"{len(mapping.ambiguous)} folders match more than one class: "
                     + ", ".join(f"{k!r} (classes {v})" for k, v in list(mapping.ambiguous.items())[:SHOWN])
                     + " (name them by wnid in a checkpoint that records wnids)")
    return "; ".join(parts) + "; pass --skip-unknown-classes to evaluate the other classes"


def _few(items: list[str], shown: int = SHOWN) -> str:
    head = ", ".join(repr(s) for s in items[:shown])
    return head + (f" and {len(items) - shown} more" if len(items) > shown else "")


def mapped_in_class_order(files: LabelledFiles, mapping: ClassMapping) -> tuple[list[Path], list[int]]:
    """The files of mapped classes with their class indices, ordered by (index, file name):
    a fixed stride over them takes every class in turn."""
    rows = sorted((mapping.index[label], path.name, str(path)) for path, label in
                  zip(files.files, files.labels, strict=True) if label in mapping.index)
    return [Path(p) for _, _, p in rows], [i for i, _, _ in rows]
