"""Build a vetting set shipped in the package: models/vetting/<domain>.npz.

    python scripts/make_vetting_set.py [--data /path/to/cifar10_test.npz] [--per-class 30]
    python scripts/make_vetting_set.py --domain tinyimagenet --data DIR/tinyimagenet_val.npz --per-class 2

``tinyimagenet``: the labelled ``val`` split as ``safespot data import tiny-imagenet-200
--size 32`` writes it (200 classes at 32x32, the photo model's input; class names and wnids
from the file), 2 per class by default (400 images).

Selection (fixed, no randomness: the same source gives the same images): the CIFAR-10 *test* split, 30 images per class (300 in all),
for each class its images in their order in the file, taking every
(count // per_class)-th one starting from the first; the result is interleaved
class by class (airplane, automobile, ..., truck, airplane, ...), so any prefix
of it is class-balanced as well (vetting may use only the first N).

Source caveat: the copy available offline was rebuilt from JPEG files (quality
75, 4:2:0 chroma), not from the original lossless batches; its pixels differ
from the originals by about 6/255. Figures measured on this set compare
checkpoints with each other, not with published CIFAR-10 numbers.

Arrays written: ``x`` uint8 (N, 32, 32, 3), ``y`` int64 (N,), ``class_names``
(unicode), ``source_index`` int64 (each image's index in the source file),
``domain`` and ``note`` (unicode scalars). No pickled objects: the file loads
with ``numpy.load(..., allow_pickle=False)``.

The worker (worker/vetting_sets.py) picks a checkpoint's set by ``domain`` and infers
the domain of a checkpoint without one from ``class_names`` and the image size: another
domain's set needs both (tests/worker/test_vetting_sets.py checks this script's names).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "models" / "vetting" / "cifar10.npz"
CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
NOTE = ("CIFAR-10 test split, JPEG-derived copy (quality 75, 4:2:0; about 6/255 per pixel from the "
        "originals); {per_class} images per class, every k-th of each class in file order, "
        "interleaved by class; made by scripts/make_vetting_set.py")


TINY_NOTE = ("Tiny ImageNet val split (the standard 200 classes), 2x2 box average to 32x32 by "
             "`safespot data import --size 32`; {per_class} images per class, every k-th of each class in "
             "file order, interleaved by class; made by scripts/make_vetting_set.py")


def select(y: np.ndarray, per_class: int, classes: int = len(CLASS_NAMES)) -> np.ndarray:
    """Source indices: per class every k-th image from the first, interleaved class by class."""
    picks = []
    for label in range(classes):
        members = np.flatnonzero(y == label)
        if len(members) < per_class:
            raise SystemExit(f"class {label} has {len(members)} images, fewer than {per_class}")
        stride = len(members) // per_class
        picks.append(members[::stride][:per_class])
    return np.stack(picks, axis=1).reshape(-1).astype(np.int64)  # row r: the r-th pick of each class


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent.parent / "shared" / "data" / "cifar10_test.npz",
                        help="the CIFAR-10 test set as .npz with arrays x (uint8 NHWC) and y")
    parser.add_argument("--domain", choices=("cifar10", "tinyimagenet"), default="cifar10")
    parser.add_argument("--per-class", type=int, default=None, help="default: 30 (cifar10), 2 (tinyimagenet)")
    parser.add_argument("--out", type=Path, default=None, help="default: models/vetting/<domain>.npz")
    args = parser.parse_args()
    tiny = args.domain == "tinyimagenet"
    per_class = args.per_class or (2 if tiny else 30)
    with np.load(args.data, allow_pickle=False) as f:
        x, y = f["x"], f["y"].astype(np.int64)
        names = [str(c) for c in f["class_names"]] if tiny else CLASS_NAMES
        extra = {"wnids": f["wnids"]} if tiny else {}
    classes, expected = (200, 10_000) if tiny else (10, 10_000)
    if x.dtype != np.uint8 or x.shape[1:] != (32, 32, 3) or len(x) != expected or len(names) != classes:
        raise SystemExit(f"{args.data}: expected the {expected:,} {args.domain} test images at 32x32 as uint8 NHWC")
    idx = select(y, per_class, len(names))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=x[idx], y=y[idx], class_names=np.array(names),
                        source_index=idx, domain=np.array(args.domain),
                        note=np.array((TINY_NOTE if tiny else NOTE).format(per_class=per_class)), **extra)
    args.out = args.out or OUT.with_name(f"{args.domain}.npz")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(buffer.getvalue())
    print(f"{args.out}: {len(idx)} images, {args.out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
