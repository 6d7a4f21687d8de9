"""The public data sets `safespot data` provides: where to get each archive, and how
it becomes the ``.npz`` files the trainer and vetting read (training/data.py).

- ``cifar10``: the CIFAR-10 python version (``cifar-10-python.tar.gz``), whose
  batches are pickles read with an allow-list unpickler (training/data.py:
  NumPy arrays, dicts, lists and strings only; nothing in them can run code),
  to ``cifar10_train.npz`` (50,000) and ``cifar10_test.npz`` (10,000);
- ``tinyimagenet``: Tiny ImageNet (``tiny-imagenet-200.zip``): ``train/``
  (100,000) and ``val/`` (10,000, labels from ``val_annotations.txt``) at
  64x64 to ``tinyimagenet_train.npz`` / ``tinyimagenet_val.npz``, classes in
  sorted wnid order (torchvision ImageFolder's), with ``wnids`` and the
  readable ``class_names`` of ``words.txt``; its unlabelled ``test/`` is never
  read.

Arrays: ``x`` uint8 NHWC, ``y`` int64, ``class_names``, ``source`` (what the
file was made from).  Archives are read in place (members by name, never
extracted to disk); every output is written under a temporary name and
renamed, and one lock file serialises processes sharing the directory (the
init containers of several pods on one volume).
"""

from __future__ import annotations

import fcntl
import io
import os
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from training.data import CIFAR10_CLASSES, DataError, read_cifar_batch, unpickle_plain
from training.fetch import download, file_digests

Arrays = dict[str, np.ndarray]
LOCK_NAME = ".safespot-data.lock"
TINY_SIZE = 64


@dataclass(frozen=True)
class PublicSet:
    name: str
    title: str
    url: str
    sha256: str
    archive: str  # the file name it is published under
    outputs: tuple[str, ...]  # what it leaves in the data directory
    root: str  # the folder at the top of the archive


SETS: dict[str, PublicSet] = {s.name: s for s in (
    PublicSet("cifar10", "CIFAR-10 (python version)", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
              "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce", "cifar-10-python.tar.gz",
              ("cifar10_train.npz", "cifar10_test.npz"), "cifar-10-batches-py"),
    # The publisher prints only an md5 (90528d7ca1a48142e341f4ef8d21d0de, 248,100,043 bytes);
    # this sha256 is that archive's (docs/data.md says where it comes from).
    PublicSet("tinyimagenet", "Tiny ImageNet 200", "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
              "6198c8ae015e2b3e007c7841da39ec069199b9aa3bfa943a462022fe5e43c821", "tiny-imagenet-200.zip",
              ("tinyimagenet_train.npz", "tinyimagenet_val.npz"), "tiny-imagenet-200"),
)}


def present(name: str, data_dir: Path) -> bool:
    return all((data_dir / f).is_file() for f in SETS[name].outputs)


@contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Exclusive use of `data_dir` for one download or import (blocks until free)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / LOCK_NAME, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def download_set(name: str, data_dir: Path, *, url: str | None = None, sha256: str | None = None,
                 force: bool = False, keep_archive: bool = False, progress: bool = True,
                 retries: int = 3, retry_wait_s: float = 2.0) -> list[Path] | None:
    """Download, verify and convert set `name` into `data_dir`; None when it was already there."""
    s = SETS[name]
    with data_dir_lock(data_dir):
        if present(name, data_dir) and not force:
            return None
        expected = sha256 or s.sha256
        archive = download(url or s.url, data_dir / s.archive, expected, retries=retries,
                           progress=progress, retry_wait_s=retry_wait_s)
        outputs = convert(name, archive, data_dir, f"{s.title}: {url or s.url}, sha256 {expected.lower()}")
        if not keep_archive:  # kept when the conversion fails: the next run starts from it
            archive.unlink()
        return outputs


def import_copy(source: Path, data_dir: Path, *, sha256: str | None = None, force: bool = False,
                exclude: frozenset[str] = frozenset(), size: int | None = None) -> tuple[str, list[Path] | None]:
    """Convert an offline copy (the archive, checked against its sha256, or its extracted
    folder) into `data_dir`; (set name, outputs or None when already there).

    Tiny ImageNet only: `exclude` drops classes (wnids) a copy adds to the standard
    200, with their images; `size` shrinks the 64x64 images (a 2x2 box average for 32)."""
    if not source.exists():
        raise DataError(f"no {source}")
    name = detect(source)
    s = SETS[name]
    if name != "tinyimagenet" and (exclude or size):
        raise DataError(f"{source}: excluding classes and resizing apply to Tiny ImageNet only")
    if source.is_file():
        digest, md5 = file_digests(source)
        if digest != (sha256 or s.sha256).strip().lower():
            raise DataError(f"{source}: sha256 {digest} (md5 {md5}) is not the published {s.archive}'s "
                            f"{s.sha256}; if this copy is the one you mean, pass --sha256 {digest}")
        description = f"{s.title}: {source.name}, sha256 {digest}"
    else:
        description = f"{s.title}: the extracted folder {source.name} (no checksum to compare)"
    with data_dir_lock(data_dir):
        if present(name, data_dir) and not force:
            return name, None
        options = {"exclude": exclude, "size": size} if name == "tinyimagenet" else {}
        return name, convert(name, source, data_dir, description, **options)


# ------------------------------------------------------------------ sources
class Members:
    """The files of an archive (.tar.gz or .zip) or of its extracted folder, by their
    path below the archive's top folder (``data_batch_1``, ``val/val_annotations.txt``)."""

    def __init__(self, source: Path, root: str) -> None:
        self.source, self.root = source, root
        self._zip: zipfile.ZipFile | None = None
        self._folder: Path | None = None
        self._tar: dict[str, bytes] = {}
        if source.is_dir():
            self._folder = source / root if (source / root).is_dir() else source
        elif zipfile.is_zipfile(source):
            self._zip = zipfile.ZipFile(source)
        elif tarfile.is_tarfile(source):  # gzip is read front to back: take what is asked for once
            with tarfile.open(source, "r:*") as tar:
                for member in tar:
                    data = tar.extractfile(member) if member.isfile() else None
                    if data is not None:
                        self._tar[self._relative(member.name)] = data.read()
        else:
            raise DataError(f"{source}: neither a folder, a .zip nor a .tar(.gz) archive")

    def _relative(self, name: str) -> str:
        name = name.lstrip("./")
        return name[len(self.root) + 1:] if name.startswith(self.root + "/") else name

    def names(self) -> list[str]:
        if self._folder is not None:
            return sorted(p.relative_to(self._folder).as_posix() for p in self._folder.rglob("*") if p.is_file())
        if self._zip is not None:
            return sorted(self._relative(n) for n in self._zip.namelist() if not n.endswith("/"))
        return sorted(self._tar)

    def read(self, name: str) -> bytes:
        try:
            if self._folder is not None:
                return (self._folder / name).read_bytes()
            if self._zip is not None:
                return self._zip.read(f"{self.root}/{name}")
            return self._tar[name]
        except (KeyError, FileNotFoundError):
            raise DataError(f"{self.source}: no {self.root}/{name} (not the {self.root} archive?)") from None

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def detect(source: Path) -> str:
    """Which public set an archive or folder holds, from its layout."""
    for s in SETS.values():
        folder = source / s.root if (source / s.root).is_dir() else source
        if source.is_dir() and (folder / _MARKERS[s.name]).is_file():
            return s.name
    if source.is_file():
        if zipfile.is_zipfile(source):
            with zipfile.ZipFile(source) as z:
                if f"{SETS['tinyimagenet'].root}/{_MARKERS['tinyimagenet']}" in z.namelist():
                    return "tinyimagenet"
        elif tarfile.is_tarfile(source):
            with tarfile.open(source, "r:*") as tar:
                if any(m.name.lstrip("./").startswith(SETS["cifar10"].root + "/") for m in tar):
                    return "cifar10"
    raise DataError(f"{source}: not a copy of {' or '.join(s.archive for s in SETS.values())} "
                    f"nor its extracted folder ({', '.join(s.root for s in SETS.values())}/)")


_MARKERS = {"cifar10": "data_batch_1", "tinyimagenet": "wnids.txt"}


# --------------------------------------------------------------- conversion
def cifar10_arrays(members: Members, source: str) -> dict[str, Arrays]:
    meta = unpickle_plain(members.read("batches.meta"))
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get("label_names", [])]
    if names != CIFAR10_CLASSES:
        raise DataError(f"{members.source}: classes {names}, expected CIFAR-10's {CIFAR10_CLASSES}")
    out = {}
    for split, files in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
        xs, ys = zip(*(read_cifar_batch(members.read(f)) for f in files), strict=True)
        out[f"cifar10_{split}.npz"] = _arrays(np.concatenate(xs), np.concatenate(ys), names, source)
    return out


def tinyimagenet_arrays(members: Members, source: str, exclude: frozenset[str] = frozenset(),
                        size: int | None = None) -> dict[str, Arrays]:
    listed = set(_lines(members.read("wnids.txt")))
    wnids = sorted(listed - exclude)
    if unknown := exclude - listed:
        raise DataError(f"{members.source}: cannot exclude {sorted(unknown)}: not classes of this copy")
    words = dict(line.split("\t", 1) for line in _lines(members.read("words.txt")) if "\t" in line)
    names = [words.get(w, w).strip() for w in wnids]
    label = {w: i for i, w in enumerate(wnids)}
    train = [(n, label[n.split("/")[1]]) for n in members.names()
             if n.startswith("train/") and n.split("/")[1] in label and n.lower().endswith(".jpeg")]
    val = []
    for file, wnid in parse_val_annotations(members.read("val/val_annotations.txt"), str(members.source)):
        if wnid in exclude:
            continue
        if wnid not in label:
            raise DataError(f"{members.source}: val image {file} has the unknown class {wnid}")
        val.append((f"val/images/{file}", label[wnid]))
    if not train or not val:
        raise DataError(f"{members.source}: no train/ or val/ images")
    if exclude:
        source += f"; classes left out: {', '.join(sorted(exclude))}"
    if size and size != TINY_SIZE:
        if not 8 <= size < TINY_SIZE:
            raise DataError(f"size {size}: choose 8..{TINY_SIZE - 1} pixels (the images are {TINY_SIZE}x{TINY_SIZE})")
        source += f"; shrunk to {size}x{size} ({'box average' if TINY_SIZE % size == 0 else 'bilinear, antialiased'})"
    extra = {"wnids": np.asarray(wnids)}
    return {f"tinyimagenet_{split}.npz": shrink(decode_images(members, files, names, source, extra), size)
            for split, files in (("train", train), ("val", val))}


def shrink(arrays: Arrays, size: int | None) -> Arrays:
    """The images at size x size: a box average when 64 is a multiple of it (each output pixel
    the mean of whole input pixels, as downsampled-ImageNet sets are made), else antialiased."""
    x = arrays["x"]
    if not size or size == x.shape[1]:
        return arrays
    if x.shape[1] % size == 0:
        f = x.shape[1] // size
        small = x.reshape(len(x), size, f, size, f, 3).mean((2, 4), dtype=np.float32)
        return arrays | {"x": np.rint(small).astype(np.uint8)}
    from PIL import Image

    resized = [np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None))
               for im in x]
    return arrays | {"x": np.stack(resized) if resized else x[:, :size, :size]}


def parse_val_annotations(raw: bytes, where: str) -> list[tuple[str, str]]:
    """Tiny ImageNet's ``val_annotations.txt``: (file name, wnid) per line, in file order
    (tab-separated: file, wnid, then the bounding box, which is not used).  A file
    is a plain name inside ``images/``: a hostile line cannot point elsewhere."""
    pairs = []
    for number, line in enumerate(_lines(raw), 1):
        fields = line.split("\t")
        if len(fields) < 2 or not fields[0].strip() or not fields[1].strip():
            raise DataError(f"{where}: val_annotations.txt line {number} is not 'file<TAB>wnid...': {line[:80]!r}")
        file = fields[0].strip()
        if "/" in file or "\\" in file or file in (".", ".."):  # a name in images/, never a path out of it
            raise DataError(f"{where}: val_annotations.txt line {number} names {file!r}, not a file in images/")
        pairs.append((file, fields[1].strip()))
    return pairs


def decode_images(members: Members, files: list[tuple[str, int]], names: list[str], source: str,
                  extra: Arrays) -> Arrays:
    """The Tiny ImageNet files (member name, label) at 64x64 RGB, with their labels; also
    what `safespot data nonphoto` reads its held-out photos with (training/nonphoto_sets.py)."""
    from PIL import Image

    x = np.empty((len(files), TINY_SIZE, TINY_SIZE, 3), np.uint8)
    for i, (name, _) in enumerate(files):
        with Image.open(io.BytesIO(members.read(name))) as im:
            rgb = im.convert("RGB")  # a few are greyscale
        if rgb.size != (TINY_SIZE, TINY_SIZE):
            rgb = rgb.resize((TINY_SIZE, TINY_SIZE), Image.Resampling.BILINEAR)
        x[i] = np.asarray(rgb)
    y = np.asarray([label for _, label in files], np.int64)
    return _arrays(x, y, names, source) | extra


def _arrays(x: np.ndarray, y: np.ndarray, names: list[str], source: str) -> Arrays:
    return {"x": x, "y": y, "class_names": np.asarray(names), "source": np.asarray(source)}


def _lines(raw: bytes) -> list[str]:
    return [line for line in raw.decode("utf-8").splitlines() if line.strip()]


CONVERTERS: dict[str, Callable[..., dict[str, Arrays]]] = {
    "cifar10": cifar10_arrays, "tinyimagenet": tinyimagenet_arrays}


def convert(name: str, source: Path, data_dir: Path, description: str, **options: Any) -> list[Path]:
    """Write set `name`'s outputs from an archive or folder `source`; return their paths."""
    members = Members(source, SETS[name].root)
    try:
        outputs = CONVERTERS[name](members, description, **options)
    finally:
        members.close()
    return [write_npz(data_dir / file, arrays) for file, arrays in outputs.items()]


def write_npz(path: Path, arrays: Arrays) -> Path:
    """`arrays` to `path` atomically: a reader sees the old file or the whole new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **cast(dict[str, Any], arrays))
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the data from other users of the volume
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def describe(path: Path) -> dict[str, object]:
    """What an output file holds (shapes from the .npy headers: nothing big is read)."""
    info: dict[str, object] = {"file": path.name, "bytes": path.stat().st_size}
    with zipfile.ZipFile(path) as z:
        for key in ("x", "y"):
            if f"{key}.npy" in z.namelist():
                with z.open(f"{key}.npy") as f:
                    fmt = np.lib.format
                    header = fmt.read_array_header_1_0 if fmt.read_magic(f) == (1, 0) else fmt.read_array_header_2_0
                    shape, _, dtype = header(f)
                info[key] = {"shape": list(shape), "dtype": str(dtype)}
    with np.load(path, allow_pickle=False) as f:
        if "source" in f.files:
            info["source"] = str(f["source"])
    return info
