"""Image data sets for training and evaluation, as uint8 NHWC arrays in memory.

Sources, tried in this order for a name like ``cifar10``:
- the packed ``.npz`` files of the data directory (``cifar10_train.npz``,
  ``cifar10_test.npz``: arrays ``x`` uint8 NHWC, ``y`` int64; optional
  ``class_names`` and ``source``), as ``safespot data download`` writes them
  (``tinyimagenet`` too: ``tinyimagenet_train.npz``, ``tinyimagenet_val.npz``,
  whose ``wnids`` the trainer records in the checkpoint);
- torchvision's CIFAR-10 folder (``cifar-10-batches-py``), read with a
  restricted unpickler that only rebuilds NumPy arrays (the batches are
  pickles; a tampered one cannot run code);
- a path: an ``.npz`` file with ``x`` (and ``y``), or an ImageFolder tree
  (one sub-folder per class), resized to the model's input size.
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
# The data sets known by name (not a path): a model trained on one is of that domain, which
# picks its vetting set (a path says nothing reliable about what its images are).
NAMED_DATA_SETS = ("cifar10", "tinyimagenet")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


class DataError(ValueError):
    code = "invalid_data"


@dataclass
class ImageSet:
    x: np.ndarray  # uint8 (N, H, W, C)
    y: np.ndarray  # int64 (N,); -1 where unlabelled
    class_names: list[str]
    provenance: dict[str, Any] = field(default_factory=dict)
    wnids: list[str] = field(default_factory=list)  # WordNet id per class when the source has them

    def __len__(self) -> int:
        return len(self.x)


def default_data_dir() -> Path:
    return Path(os.environ.get("SAFESPOT_DATA_DIR", "data"))


def load_dataset(name_or_path: str, split: str = "train", data_dir: str | Path | None = None,
                 image_size: tuple[int, int] = (32, 32)) -> ImageSet:
    """Load `cifar10` (split train/test) from the data directory, or a file/folder path."""
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    if name_or_path == "tinyimagenet":  # its labelled held-out split is `val`
        packed = root / f"tinyimagenet_{'train' if split == 'train' else 'val'}.npz"
        if packed.is_file():
            return _from_npz(packed, None)
        raise DataError(f"Tiny ImageNet not found in {root}: run `safespot data download tinyimagenet`")
    if name_or_path == "cifar10":
        packed = root / f"cifar10_{split}.npz"
        if packed.is_file():  # without a `source`, the JPEG-derived copy this project started with
            return _from_npz(packed, CIFAR10_CLASSES, note="JPEG-derived CIFAR-10 (quality 75)")
        folder = root / "cifar-10-batches-py"
        if folder.is_dir():
            return _from_cifar_folder(folder, split)
        raise DataError(f"CIFAR-10 not found in {root}: expected cifar10_{split}.npz or "
                        "cifar-10-batches-py/ (run `safespot data download cifar10`, or set "
                        "SAFESPOT_DATA_DIR or pass --data-dir)")
    path = Path(name_or_path)
    if path.suffix == ".npz" and path.is_file():
        return _from_npz(path, None)
    if path.is_dir():
        if (path / "cifar-10-batches-py").is_dir():
            return _from_cifar_folder(path / "cifar-10-batches-py", split)
        if path.name == "cifar-10-batches-py":
            return _from_cifar_folder(path, split)
        return _from_image_folder(path, image_size)
    raise DataError(f"no data set {name_or_path!r}: give 'cifar10', an .npz file or an image folder")


def load_images(path: str | os.PathLike[str], key: str = "x") -> np.ndarray:
    """The images (uint8 NHWC, one or three channels) stored under `key` in an ``.npz`` file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no file {path}")
    with np.load(path, allow_pickle=False) as f:
        if key not in f:
            raise DataError(f"{path}: expected an array {key!r} (uint8 NHWC), found {sorted(f.files)}")
        x = f[key]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DataError(f"{path}: {key!r} must be uint8 (N, H, W, C) with C in (1, 3), got {x.dtype} {x.shape}")
    return x


def _from_npz(path: Path, classes: list[str] | None, note: str = "") -> ImageSet:
    x = load_images(path)
    with np.load(path, allow_pickle=False) as f:
        y = f["y"].astype(np.int64) if "y" in f else np.full(len(x), -1, dtype=np.int64)
        stored = [str(c) for c in f["class_names"]] if "class_names" in f else None
        note = str(f["source"]) if "source" in f else note
        wnids = [str(w) for w in f["wnids"]] if "wnids" in f else []
    n_classes = int(y.max()) + 1 if (y >= 0).any() else 0
    names = classes or stored or [str(i) for i in range(n_classes)]
    prov = {"source": str(path.name), "images": len(x)}
    if note:
        prov["note"] = note
    return ImageSet(x, y, names, prov, wnids if len(wnids) == len(names) else [])


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, bytes and NumPy arrays; refuses every other global."""

    ALLOWED = frozenset({("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")})

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise DataError(f"refusing to unpickle {module}.{name} from a data batch")


def unpickle_plain(raw: bytes) -> Any:
    """A CIFAR python-version pickle (a dict of lists, strings and NumPy arrays), read
    without running code: only the globals that rebuild NumPy arrays are accepted."""
    try:
        return _ArrayOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except DataError:
        raise
    except Exception as e:  # truncated or not a pickle: say which, not a traceback
        raise DataError(f"not a CIFAR batch pickle: {type(e).__name__}: {e}") from None


def read_cifar_batch(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: (x uint8 NHWC, y int64)."""
    batch = unpickle_plain(raw)
    try:
        data = np.asarray(batch["data"], dtype=np.uint8)
        x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        y = np.asarray(batch["labels"], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"not a CIFAR-10 batch (expected 'data' N x 3072 and 'labels'): {e}") from None
    if len(x) != len(y) or data.shape[1:] != (3072,) or (len(y) and not 0 <= y.min() <= y.max() < 10):
        raise DataError(f"not a CIFAR-10 batch: data {data.shape}, {len(y)} labels")
    return np.ascontiguousarray(x), y


def _from_cifar_folder(folder: Path, split: str) -> ImageSet:
    files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    xs, ys = [], []
    for name in files:
        x, y = read_cifar_batch((folder / name).read_bytes())
        xs.append(x)
        ys.append(y)
    return ImageSet(np.concatenate(xs), np.concatenate(ys), CIFAR10_CLASSES,
                    {"source": f"{folder.name} ({split})", "images": sum(len(y) for y in ys)})


def _from_image_folder(root: Path, size: tuple[int, int]) -> ImageSet:
    from PIL import Image

    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{root}: an image folder needs one sub-folder per class")
    xs, ys = [], []
    for label, cls in enumerate(classes):
        for f in sorted((root / cls).rglob("*")):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                with Image.open(f) as im:
                    img = im.convert("RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR)
                xs.append(np.asarray(img, dtype=np.uint8))
                ys.append(label)
    if not xs:
        raise DataError(f"{root}: no images found")
    return ImageSet(np.stack(xs), np.asarray(ys, dtype=np.int64), classes,
                    {"source": f"image folder {root.name}", "images": len(xs)})


def strided_indices(n_total: int, n: int) -> np.ndarray:
    """`n` fixed indices spread evenly over a set (class-balanced on class-sorted sets)."""
    if n >= n_total:
        return np.arange(n_total)
    return (np.arange(n) * (n_total / n)).astype(np.int64)


def strided(x: np.ndarray, n: int) -> np.ndarray:
    """The `n` images of :func:`strided_indices`."""
    return x[strided_indices(len(x), n)]


def holdout_split(n: int, holdout: int, seed: int, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(training, held-out) indices: a fixed permutation by `seed`, the first `holdout` held out."""
    order = np.random.default_rng(seed).permutation(n)
    held, rest = order[:holdout], order[holdout:]
    return (rest if limit is None else rest[:limit]), held


def to_tensor(x: np.ndarray, device: Any = "cpu") -> Any:
    """uint8 NHWC -> float NCHW in [0,1] (exact 8-bit values)."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(x)).to(device)
    if t.shape[-1] == 1:
        t = t.expand(*t.shape[:-1], 3)
    return t.permute(0, 3, 1, 2).contiguous().float().div_(255)
