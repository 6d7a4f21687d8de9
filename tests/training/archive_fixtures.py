"""Small copies of the public archives in their real formats, and a local HTTP
server that serves them with Range support and can cut a transfer short.

- CIFAR-10 python version: a .tar.gz of ``cifar-10-batches-py/`` whose batches
  are pickles written as Python 2's cPickle wrote the originals (protocol 2,
  byte strings as BINSTRING, arrays rebuilt by ``numpy.core.multiarray``);
- Tiny ImageNet: a .zip of ``tiny-imagenet-200/`` with wnids.txt, words.txt,
  ``train/<wnid>/images/*.JPEG``, ``val/images`` + ``val_annotations.txt`` and
  a ``test/`` folder that must never be read.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import struct
import tarfile
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


PurePickler: Any = pickle._Pickler  # the pure-Python pickler, whose opcodes a subclass can choose


class Py2Pickler(PurePickler):
    """Protocol 2 as Python 2 wrote it: str and bytes as BINSTRING, numpy.core paths."""

    dispatch = PurePickler.dispatch.copy()

    def save_bytes(self, obj: bytes) -> None:
        n = len(obj)
        self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj if n < 256
                   else pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    def save_str(self, obj: str) -> None:
        self.save_bytes(obj.encode("latin1"))

    def save_global(self, obj: Any, name: str | None = None) -> None:
        module = getattr(obj, "__module__", "")
        if module == "numpy._core.multiarray":  # numpy 1.x, as the originals name it
            self.write(pickle.GLOBAL + f"numpy.core.multiarray\n{name or obj.__name__}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def py2_pickle(obj: Any) -> bytes:
    out = io.BytesIO()
    Py2Pickler(out, protocol=2).dump(obj)
    return out.getvalue()


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def cifar_archive(path: Path, per_batch: int = 4, seed: int = 0,
                  batch_pickle: bytes | None = None) -> dict[str, np.ndarray]:
    """A cifar-10-python.tar.gz with `per_batch` images per batch file; the arrays it holds
    (x_train/y_train/x_test/y_test, uint8 NHWC).  `batch_pickle` replaces data_batch_3."""
    rng = np.random.default_rng(seed)
    expected: dict[str, list[np.ndarray]] = {"x_train": [], "y_train": [], "x_test": [], "y_test": []}
    with tarfile.open(path, "w:gz") as tar:
        add(tar, "cifar-10-batches-py/batches.meta",
            py2_pickle({"num_cases_per_batch": per_batch, "label_names": CIFAR_CLASSES, "num_vis": 3072}))
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
            labels = [int(v) for v in rng.integers(0, 10, per_batch)]
            batch = {"batch_label": f"{name} of 5", "labels": labels, "data": data,
                     "filenames": [f"img_{name}_{i}.png" for i in range(per_batch)]}
            raw = batch_pickle if (batch_pickle is not None and name == "data_batch_3") else py2_pickle(batch)
            add(tar, f"cifar-10-batches-py/{name}", raw)
            split = "test" if name == "test_batch" else "train"
            expected[f"x_{split}"].append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            expected[f"y_{split}"].append(np.asarray(labels, np.int64))
        add(tar, "cifar-10-batches-py/readme.html", b"<html>CIFAR-10</html>")
    return {k: np.concatenate(v) for k, v in expected.items()}


TINY_WNIDS = ["n03000134", "n01443537", "n02124075"]  # not sorted: the output sorts them
TINY_WORDS = {"n01443537": "goldfish, Carassius auratus", "n02124075": "Egyptian cat",
              "n03000134": "chainlink fence", "n09999999": "not in this set"}


def colour(label: int) -> tuple[int, int, int]:
    return [(200, 30, 30), (30, 200, 30), (30, 30, 200)][label]


def jpeg(rgb: tuple[int, int, int], size: int = 64, grey: bool = False) -> bytes:
    image = Image.new("RGB", (size, size), rgb)
    out = io.BytesIO()
    (image.convert("L") if grey else image).save(out, "JPEG", quality=95)
    return out.getvalue()


def tiny_archive(path: Path, train_per_class: int = 3, val_per_class: int = 2) -> dict[str, int]:
    """A tiny-imagenet-200.zip; labels follow sorted wnids, each class has its own colour."""
    root = "tiny-imagenet-200"
    ordered = sorted(TINY_WNIDS)
    annotations: list[str] = []
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{root}/wnids.txt", "\n".join(TINY_WNIDS) + "\n")
        z.writestr(f"{root}/words.txt", "".join(f"{w}\t{n}\n" for w, n in TINY_WORDS.items()))
        for wnid in TINY_WNIDS:
            label = ordered.index(wnid)
            z.writestr(f"{root}/train/{wnid}/{wnid}_boxes.txt", "")
            for i in range(train_per_class):
                grey = i == 0 and label == 0  # Tiny ImageNet has a few greyscale images
                z.writestr(f"{root}/train/{wnid}/images/{wnid}_{i}.JPEG", jpeg(colour(label), grey=grey))
            for _ in range(val_per_class):
                name = f"val_{len(annotations)}.JPEG"
                z.writestr(f"{root}/val/images/{name}", jpeg(colour(label)))
                annotations.append(f"{name}\t{wnid}\t0\t0\t63\t63")
        z.writestr(f"{root}/val/val_annotations.txt", "\n".join(annotations) + "\n")
        for i in range(4):  # never read: not even a valid image
            z.writestr(f"{root}/test/images/test_{i}.JPEG", b"not an image")
    return {"train": train_per_class * len(TINY_WNIDS), "val": val_per_class * len(TINY_WNIDS)}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class ArchiveServer:
    """Serves `files` (URL path -> bytes) on 127.0.0.1 with `Range: bytes=N-` support.
    `cut_after`: the next GETs send their headers (the full length) but only this
    many bytes, then drop the connection, `cuts` times."""

    files: dict[str, bytes]
    cut_after: int | None = None
    cuts: int = 0
    honour_range: bool = True
    requests: list[tuple[str, str | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append((self.path, self.headers.get("Range")))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start, status = 0, 200
                asked = self.headers.get("Range")
                if asked and server.honour_range:
                    start = int(asked.removeprefix("bytes=").rstrip("-"))
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                rest = body[start:]
                self.send_response(status)
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(rest)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if server.cuts > 0 and server.cut_after is not None:
                    server.cuts -= 1
                    self.wfile.write(rest[:server.cut_after])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(rest)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}{path}"

    def __enter__(self) -> ArchiveServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
