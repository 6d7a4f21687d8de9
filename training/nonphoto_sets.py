"""The files of `safespot data nonphoto`: OOD test sets of things that are not photos of a
photo model's classes, and a separate calibration mix (docs/ood.md, "Inputs that are not
photos").

Evaluation sets (array ``x``, for ``safespot ood-eval --ood-set NAME=PATH``), drawn with
``seed``:

- ``nonphoto_texture.npz``, ``nonphoto_text.npz``, ``nonphoto_screenshot.npz``
  (:mod:`training.nonphoto`), each with ``style`` per image;
- ``heldout_photos.npz``: photos of classes the model does not have, read from a Tiny
  ImageNet copy (``train/<wnid>/images/*.JPEG``) and shrunk exactly as ``safespot data
  import --size`` shrinks (:func:`training.public_data.shrink`); the even-numbered files
  of each class (sorted by name), classes interleaved, with ``wnid`` and ``image_path``.

Calibration mix ``nonphoto_outliers.npz`` (array ``x_outlier_train``, for ``safespot
ood-calibrate --outliers`` and training with outliers), drawn with ``calibration_seed``,
which must differ from ``seed``: the synthetic kinds and both noise kinds in turn (noise
as :func:`training.ood_sets.noise_images` makes it, with this seed instead of
ood-eval's), plus the odd-numbered photo files, never the evaluated even ones.
``kind`` and ``style`` name each image.  Every file carries ``source`` (how it was made);
``nonphoto.json`` beside them records the seeds, sizes, counts and versions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.data import DataError
from training.nonphoto import KINDS, nonphoto_images
from training.ood_sets import NOISE_SEED, OUTLIER_KEY, noise_images
from training.public_data import SETS, Members, decode_images, shrink, write_npz

HELDOUT_WNIDS = ("n02480855", "n10148035")  # gorilla, groom: in the public copy, not in the standard 200
NOISE_KINDS = ("gaussian", "uniform")
PHOTOS = "photos"
MIX_KINDS = (*KINDS, *NOISE_KINDS, PHOTOS)
PHOTOS_FILE, OUTLIERS_FILE, MANIFEST = "heldout_photos.npz", "nonphoto_outliers.npz", "nonphoto.json"


def eval_file(kind: str) -> str:
    return f"nonphoto_{kind}.npz"


@dataclass
class Photos:
    x: np.ndarray  # uint8 (N, size, size, 3)
    wnids: list[str]  # per image
    files: list[str]  # per image, below the copy's top folder
    source: str


def class_photos(source: Path, wnids: tuple[str, ...] | list[str], size: int) -> Photos:
    """Every ``train/<wnid>/images/*.JPEG`` of `wnids` in a Tiny ImageNet copy (its folder or
    zip), decoded and shrunk to `size` as ``safespot data import --size`` does; by class,
    then by file name."""
    members = Members(source, SETS["tinyimagenet"].root)
    try:
        names = members.names()
        files: list[tuple[str, int]] = []
        for label, wnid in enumerate(wnids):
            found = [n for n in names if n.startswith(f"train/{wnid}/") and n.lower().endswith(".jpeg")]
            if not found:
                raise DataError(f"{source}: no train/{wnid}/images/*.JPEG (not a class of this copy?)")
            files += [(n, label) for n in found]
        how = "box average" if 64 % size == 0 and size <= 64 else "bilinear"
        note = (f"Tiny ImageNet copy {source.name}: train/ images of {', '.join(wnids)}, 64x64 to "
                f"{size}x{size} ({how}, as `safespot data import --size {size}`)")
        arrays = shrink(decode_images(members, files, list(wnids), note, {}), size)
    finally:
        members.close()
    return Photos(arrays["x"], [wnids[label] for _, label in files], [n for n, _ in files], note)


def photo_halves(photos: Photos) -> tuple[np.ndarray, np.ndarray]:
    """(evaluation, calibration) indices: each class's even-numbered files and its odd ones,
    classes interleaved (any prefix is balanced).  No seed: the split stays put whatever
    seeds the sets are drawn with."""
    per_class: dict[str, list[int]] = {}
    for i, wnid in enumerate(photos.wnids):
        per_class.setdefault(wnid, []).append(i)

    def interleave(parity: int) -> np.ndarray:
        columns = [members[parity::2] for members in per_class.values()]
        return np.asarray([columns[c][rank] for c, rank in round_robin([len(col) for col in columns])], np.int64)

    return interleave(0), interleave(1)


def mix_counts(n: int, kinds: list[str], capacity: dict[str, int]) -> dict[str, int]:
    """`n` images shared in turn among `kinds`, none past its capacity (the photos run out)."""
    counts = dict.fromkeys(kinds, 0)
    open_kinds = [k for k in kinds if capacity.get(k, n) > 0]
    while sum(counts.values()) < n and open_kinds:
        for k in list(open_kinds):
            if sum(counts.values()) == n:
                break
            counts[k] += 1
            if counts[k] >= capacity.get(k, n):
                open_kinds.remove(k)
    return counts


def synthetic(kind: str, n: int, size: int, seed: int) -> tuple[np.ndarray, list[str], str]:
    """(images, style per image, description) of a synthetic or noise kind."""
    if kind in NOISE_KINDS:
        return noise_images(kind, n, (size, size), seed), [kind] * n, f"{kind} noise as ood-eval makes it, seed {seed}"
    made = nonphoto_images(kind, n, size, seed)
    return made.x, made.styles, f"{kind} (training/nonphoto.py), seed {seed}"


def write_sets(out: Path, *, n: int, size: int, seed: int, calibration_seed: int, n_outliers: int,
               photos_from: Path | None = None, photo_wnids: tuple[str, ...] = HELDOUT_WNIDS,
               mix_kinds: tuple[str, ...] = MIX_KINDS) -> dict[str, Any]:
    """Write the evaluation sets, the calibration mix and the manifest into `out`; return
    the manifest.  Without `photos_from` there are no photos in either."""
    if calibration_seed == seed or NOISE_SEED in (seed, calibration_seed):
        raise DataError(f"the calibration seed must differ from the evaluation seed ({seed}) and from "
                        f"ood-eval's noise seed ({NOISE_SEED}), or calibration would see evaluated images")
    if n < 1 or n_outliers < 1 or size < 4:
        raise DataError("need --n and --n-outliers of at least 1 and --size of at least 4")
    if unknown := set(mix_kinds) - set(MIX_KINDS):
        raise DataError(f"unknown calibration kinds {sorted(unknown)}: choose from {', '.join(MIX_KINDS)}")
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"made_by": "safespot data nonphoto", "size": [size, size],
                                "versions": versions(), "evaluation": {}, "calibration": {}}
    for kind in KINDS:
        x, styles, how = synthetic(kind, n, size, seed)
        write_npz(out / eval_file(kind), {"x": x, "style": np.asarray(styles), "source": np.asarray(how)})
        manifest["evaluation"][eval_file(kind)] = {"kind": kind, "seed": seed, "n": n, "source": how}
    photos = class_photos(photos_from, photo_wnids, size) if photos_from else None
    kinds = [k for k in mix_kinds if k != PHOTOS or photos is not None]
    held = None
    if photos is not None:
        evaluated, held = photo_halves(photos)
        pick = evaluated[:n]
        write_npz(out / PHOTOS_FILE, {"x": photos.x[pick], "wnid": np.asarray(photos.wnids)[pick],
                                      "image_path": np.asarray(photos.files)[pick],
                                      "source": np.asarray(photos.source + "; even-numbered files")})
        manifest["evaluation"][PHOTOS_FILE] = {
            "kind": PHOTOS, "n": len(pick), "source": photos.source, "folder": str(photos_from),
            "wnids": list(photo_wnids), "split": "each class's files sorted by name: even positions "
            "evaluated, odd positions in the calibration mix"}
    if not kinds:
        raise DataError("the calibration mix has no kinds (photos need --heldout-photos)")
    counts = mix_counts(n_outliers, kinds, {PHOTOS: 0 if held is None else len(held)})
    parts: list[tuple[str, np.ndarray, list[str]]] = []
    described = {}
    for kind, count in counts.items():
        if kind == PHOTOS and photos is not None and held is not None:
            pick = held[:count]
            x, styles = photos.x[pick], [photos.wnids[i] for i in pick]
            how = photos.source + "; odd-numbered files"
        else:
            x, styles, how = synthetic(kind, count, size, calibration_seed)
        parts.append((kind, x, styles))
        described[kind] = {"n": count, "source": how}
    x, kind_of, style_of = interleave(parts)
    write_npz(out / OUTLIERS_FILE, {OUTLIER_KEY: x, "kind": kind_of, "style": style_of,
                                    "source": np.asarray(f"calibration mix, seed {calibration_seed}: "
                                                         + "; ".join(f"{k} {v['n']}" for k, v in described.items()))})
    manifest["calibration"] = {"file": OUTLIERS_FILE, "key": OUTLIER_KEY, "seed": calibration_seed,
                               "n": len(x), "kinds": described}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def round_robin(sizes: list[int]) -> list[tuple[int, int]]:
    """(part, rank) pairs taking one of each part in turn, parts that run out dropping out."""
    return [(p, rank) for rank, p in sorted((rank, p) for p, n in enumerate(sizes) for rank in range(n))]


def interleave(parts: list[tuple[str, np.ndarray, list[str]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The parts' images one of each in turn (so any stride of the mix is balanced)."""
    order = round_robin([len(x) for _, x, _ in parts])
    x = np.stack([parts[p][1][rank] for p, rank in order])
    return x, np.asarray([parts[p][0] for p, _ in order]), np.asarray([parts[p][2][rank] for p, rank in order])


def versions() -> dict[str, str]:
    """What the drawings depend on: Pillow's font rendering and numpy's generators."""
    import PIL

    return {"numpy": np.__version__, "pillow": PIL.__version__}
