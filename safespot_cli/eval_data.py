"""The labelled test images `safespot eval` and `safespot model-card` measure, written once.

`--data` is a packed set (``cifar10``, ``tinyimagenet``, an ``.npz``) whose
images are already at the model's input size, or a folder of photos of any
size (training/photo_folders.py: an ImageFolder tree or Tiny ImageNet's
``val/``).  A photo folder is read the way the service reads an upload and
seen the way the checkpoint sees one:

1. class folders are mapped to the checkpoint's classes by name or wnid
   (never by their sorted order); the fixed class-balanced stride then picks
   `n` of the mapped files, and only those are decoded;
2. each is decoded as an upload is (service/images.py: EXIF orientation,
   colour profile to sRGB, then worker/imaging.py's pixels; alpha dropped);
3. the checkpoint's view (safespot/canvas.py: resize, or shorter side
   resized + centre crop) makes the model's input, rounded to 8 bits.

The protocol (search, baselines, yardstick) then runs on those 8-bit view
outputs at the model's input size: the threat model and the budget are in the
pixels the classifier reads.  The service instead searches the full-resolution
upload through the view; the evaluation does not, because the baselines and
the yardstick's attacks (torchattacks) take fixed-size batches, and a
thousand full-size ImageNet photos through the canvas search would need
memory and time out of proportion with a table.  The JSON says so (``view``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from safespot_cli.errors import UsageError, usage_errors

MAX_PIXELS = 40_000_000  # the service's default SAFESPOT_MAX_PIXELS
PACKED_NAMES = ("cifar10", "tinyimagenet")  # load_dataset's names for the packed sets of --data-dir
VIEW_APPLIED = ("before the protocol: the search, the baselines and the yardstick run on the view's "
                "8-bit output at the model's input size (eps in those pixels)")


@dataclass
class EvalData:
    x: np.ndarray  # uint8 (n, H, W, C): the chosen images as the model reads them
    y: np.ndarray  # int64 (n,): the checkpoint's class indices
    name: str  # what a report's "data" says
    total: int  # images the stride ran over
    extra: dict[str, Any] = field(default_factory=dict)  # photo folders: dataset, class_mapping, view


def load_eval_data(data: str | None, split: str, data_dir: str | None, info: Any, n: int, *,
                   skip_unknown_classes: bool = False, part: tuple[int, int] = (1, 1)) -> EvalData:
    """The `n` strided labelled images of `data` (default: the set of the checkpoint's
    domain, else CIFAR-10) for the checkpoint described by `info`; `part` (k, m) keeps
    every m-th of them from the k-th (1-based), so that m processes share one table."""
    from training.data import DataError, load_dataset, strided_indices
    from training.photo_folders import is_photo_folder

    if n < 1:
        raise UsageError("--n must be at least 1")
    data = data or (info.domain if info.domain in PACKED_NAMES else "cifar10")
    with usage_errors(DataError):
        if data not in PACKED_NAMES and is_photo_folder(Path(data)):  # a ./cifar10/ folder is not the set
            return load_photo_folder(Path(data), info, n, skip_unknown_classes=skip_unknown_classes,
                                     part=part)
        loaded = load_dataset(data, split, data_dir)
    if skip_unknown_classes:
        raise UsageError("--skip-unknown-classes applies to photo folders (DIR/CLASS/*), whose classes are "
                         "matched by name; a packed set's labels are class indices already")
    if (loaded.y < 0).any():
        raise UsageError("evaluation needs labelled images")
    if loaded.x.shape[1:3] != tuple(info.input_size[1:]) or int(loaded.y.max()) >= info.num_classes:
        raise UsageError(f"{data}: labels up to {int(loaded.y.max())} at {loaded.x.shape[1]}x{loaded.x.shape[2]}, "
                         f"the checkpoint takes {info.num_classes} at {info.input_size[1]}x{info.input_size[2]}: "
                         "give --data a set made for it (or a folder of photos, seen through its view)")
    idx = in_part(strided_indices(len(loaded), n), part)
    name = f"{loaded.provenance.get('source', data)} ({loaded.provenance.get('note', 'as given')})"
    return EvalData(loaded.x[idx], loaded.y[idx], name, len(loaded))


def in_part(idx: np.ndarray, part: tuple[int, int]) -> np.ndarray:
    """Every m-th of the strided indices from the k-th, for part (k, m) (1-based)."""
    k, m = part
    return idx[k - 1::m]


def load_photo_folder(root: Path, info: Any, n: int, *, skip_unknown_classes: bool = False,
                      max_pixels: int = MAX_PIXELS, part: tuple[int, int] = (1, 1)) -> EvalData:
    """Photos of a folder, mapped, strided, decoded as uploads and seen through `info.view`."""
    from safespot.canvas import describe_view, make_view
    from training.data import strided_indices
    from training.photo_folders import list_labelled_files, map_classes, mapped_in_class_order

    listed = list_labelled_files(root)
    counts = listed.counts()
    mapping = map_classes(counts, list(info.class_names), list(info.wnids), skip_unknown=skip_unknown_classes)
    files, labels = mapped_in_class_order(listed, mapping)
    idx = in_part(strided_indices(len(files), n), part)
    view = make_view(info.view, info.input_size)
    x = np.stack([view_levels(files[i], view, max_pixels) for i in idx])
    y = np.asarray([labels[i] for i in idx], dtype=np.int64)
    skipped = sum(mapping.unknown.values()) + sum(counts[k] for k in mapping.ambiguous)
    name = (f"photo folder {root.name} ({listed.layout}, {len(files)} images in {len(mapping.index)} classes"
            + (f"; {skipped} images of unknown classes skipped" if skipped else "") + ")")
    extra = {
        "dataset": {"path": str(listed.root), "layout": listed.layout, "images": len(listed.files),
                    "class_folders": len(counts), "evaluated_from": len(files)},
        "class_mapping": mapping.to_dict(counts),
        "view": dict(info.view) | {"input_size": list(info.input_size),
                                   "description": describe_view(info.view, info.input_size),
                                   "applied": VIEW_APPLIED},
    }
    return EvalData(x, y, name, len(files), extra)


def view_levels(path: Path, view: Any, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """One photo as the service would classify it: decoded as an upload, through the view,
    rounded to 8-bit levels; uint8 (H, W, 3) at the model's input size."""
    import torch

    from service.errors import SafeSpotError
    from service.images import decode_upload
    from worker.errors import JobError
    from worker.imaging import decode_png

    try:
        pixels = decode_png(decode_upload(path.read_bytes(), max_pixels=max_pixels).png).pixels()
    except (SafeSpotError, JobError) as e:
        raise UsageError(f"{path}: {e.message}") from None
    except OSError as e:
        raise UsageError(f"{path}: cannot read it: {e.strerror or e}") from None
    with torch.no_grad():
        seen = view(pixels[None], [tuple(pixels.shape)])[0]
    levels = seen.mul(255).round_().clamp_(0, 255).to(torch.uint8)
    return np.ascontiguousarray(levels.permute(1, 2, 0).numpy())

