"""Build the vetting set shipped in the package: models/vetting/cifar10.npz.

    python scripts/make_vetting_set.py [--data /path/to/cifar10_test.npz] [--per-class 30]

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


def select(y: np.ndarray, per_class: int) -> np.ndarray:
    """Source indices: per class every k-th image from the first, interleaved class by class."""
    picks = []
    for label in range(len(CLASS_NAMES)):
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
    parser.add_argument("--per-class", type=int, default=30)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    with np.load(args.data, allow_pickle=False) as f:
        x, y = f["x"], f["y"].astype(np.int64)
    if x.dtype != np.uint8 or x.shape[1:] != (32, 32, 3) or len(x) != 10_000:
        raise SystemExit(f"{args.data}: expected the 10,000 CIFAR-10 test images as uint8 NHWC")
    idx = select(y, args.per_class)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=x[idx], y=y[idx], class_names=np.array(CLASS_NAMES),
                        source_index=idx, domain=np.array("cifar10"),
                        note=np.array(NOTE.format(per_class=args.per_class)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(buffer.getvalue())
    print(f"{args.out}: {len(idx)} images, {args.out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
