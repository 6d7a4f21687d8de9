"""The out-of-distribution test sets of `safespot ood-eval`, as uint8 NHWC arrays.

Built in: ``tinyimagenet`` (``x_ood_test`` of tinyimagenet32.npz; never
``x_outlier_train``, which trained the model), ``fashion-mnist`` (Debian's
dataset-fashion-mnist, test images zero-padded to the model's size, grey as
three channels), ``gaussian`` (N(0.5, 0.25^2) clipped, Outlier Exposure's set)
and ``uniform`` noise (both 8-bit, fixed seed); plus any NAME=PATH.npz
(array x).  A built-in set whose files are absent is skipped, with the reason, and so is
one drawn from the model's own in-distribution data (tinyimagenet for the photo model).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data import DataError, load_images, strided

BUILTIN_SETS = ("tinyimagenet", "fashion-mnist", "gaussian", "uniform")
BUILTIN_SOURCE = {"tinyimagenet": "tinyimagenet"}  # the named data set (training/data.py) a set comes from
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
FASHION_MNIST_TEST = "t10k-images-idx3-ubyte.gz"
TINY_KEY = "x_ood_test"
# Outlier files (training with outliers, `safespot ood-calibrate`): the images are the array
# OUTLIER_KEY; OUTLIER_VAL of them, picked by a fixed permutation (seed OUTLIER_SPLIT_SEED),
# are kept for calibration and never trained on (training/ood_training.py, outlier_split).
# Defined here so that torch-free code (`safespot data nonphoto`) can write such files.
OUTLIER_KEY = "x_outlier_train"
OUTLIER_VAL = 1000
OUTLIER_SPLIT_SEED = 0
NOISE_SEED = 20_240_607
GAUSSIAN_MEAN, GAUSSIAN_STD = 0.5, 0.25  # Outlier Exposure's Gaussian set (N(0, 0.5) on [-1, 1]), clipped


@dataclass
class OodSet:
    name: str
    x: np.ndarray  # uint8 NHWC
    source: str


def read_idx_images(path: Path) -> np.ndarray:
    """Images (N, H, W) uint8 from a (gzipped) IDX3 file, as MNIST and Fashion-MNIST ship."""
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
        raw = f.read()
    if len(raw) < 16 or int.from_bytes(raw[:4], "big") != 2051:
        raise DataError(f"{path}: not an IDX3 image file")
    n, h, w = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
    if len(raw) != 16 + n * h * w:
        raise DataError(f"{path}: truncated IDX file")
    return np.frombuffer(raw, np.uint8, offset=16).reshape(n, h, w)


def pad_gray_to_rgb(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, h, w) grey images, zero-padded (centred) to `size`, as three equal channels."""
    n, h, w = x.shape
    top, left = (size[0] - h) // 2, (size[1] - w) // 2
    if top < 0 or left < 0:
        raise DataError(f"cannot pad {h}x{w} images to {size[0]}x{size[1]}")
    out = np.zeros((n, *size), np.uint8)
    out[:, top:top + h, left:left + w] = x
    return np.repeat(out[..., None], 3, axis=3)


def noise_images(kind: str, n: int, size: tuple[int, int], seed: int = NOISE_SEED) -> np.ndarray:
    """8-bit noise images (N, H, W, 3): 'gaussian' N(0.5, 0.25^2) clipped, or 'uniform'."""
    rng = np.random.default_rng((seed, 0 if kind == "gaussian" else 1))
    if kind == "gaussian":
        x = np.clip(rng.normal(GAUSSIAN_MEAN, GAUSSIAN_STD, (n, *size, 3)), 0, 1)
        return np.round(x * 255).astype(np.uint8)
    return rng.integers(0, 256, (n, *size, 3), dtype=np.uint8)


def _builtin(name: str, n: int, size: tuple[int, int], tinyimagenet: Path, fashion_dir: Path) -> OodSet | str:
    """The set, or why it is skipped."""
    if name == "tinyimagenet":
        if not tinyimagenet.is_file():
            return f"{tinyimagenet} not found (give --tinyimagenet PATH or --data-dir)"
        return OodSet(name, strided(load_images(tinyimagenet, TINY_KEY), n), f"{tinyimagenet.name}:{TINY_KEY}")
    if name == "fashion-mnist":
        path = fashion_dir / FASHION_MNIST_TEST
        if not path.is_file():
            return f"{path} not found (install Debian's dataset-fashion-mnist, or give --fashion-mnist DIR)"
        return OodSet(name, pad_gray_to_rgb(strided(read_idx_images(path), n), size),
                      f"Fashion-MNIST test ({path.name}), zero-padded to {size[0]}x{size[1]}, grey as RGB")
    source = (f"N({GAUSSIAN_MEAN}, {GAUSSIAN_STD}^2) per pixel, clipped to [0,1]" if name == "gaussian"
              else "U{0..255} per pixel") + f", 8-bit, seed {NOISE_SEED}"
    return OodSet(name, noise_images(name, n, size), source)


def in_distribution_sets(names: list[str], in_distribution: set[str]) -> dict[str, str]:
    """The built-in sets among `names` drawn from the in-distribution data itself (the
    tinyimagenet set for a model of Tiny ImageNet's classes), each with why it is left out:
    scoring them would measure nothing."""
    return {name: f"drawn from {name}, which is this model's in-distribution data"
            for name in names if BUILTIN_SOURCE.get(name) in in_distribution}


def load_ood_sets(names: list[str], extra: dict[str, Path], size: tuple[int, int], n: int, *,
                  tinyimagenet: Path, fashion_dir: Path) -> tuple[list[OodSet], dict[str, str]]:
    """The built-in sets `names` and the `extra` .npz files, strided to `n` images of `size`;
    and, for absent built-in ones, why they were skipped.  DataError on anything else."""
    unknown = set(names) - set(BUILTIN_SETS)
    if unknown:
        raise DataError(f"unknown OOD sets {sorted(unknown)}: the built-in ones are {','.join(BUILTIN_SETS)}")
    sets, skipped = [], {}
    for name in names:
        found = _builtin(name, n, size, tinyimagenet, fashion_dir)
        if isinstance(found, str):
            skipped[name] = found
        else:
            sets.append(found)
    sets += [OodSet(name, strided(load_images(path), n), path.name) for name, path in extra.items()]
    if len({s.name for s in sets}) != len(sets):
        raise DataError(f"OOD set names must be unique: {[s.name for s in sets]}")
    for s in sets:
        if s.x.shape[1:3] != size:
            raise DataError(f"OOD set {s.name}: images are {s.x.shape[1]}x{s.x.shape[2]}, "
                            f"the model takes {size[0]}x{size[1]}")
    return sets, skipped
