"""Helpers for the worker tests: requests, PNG uploads, worker subprocesses."""

from __future__ import annotations

import io
import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from PIL import Image

from bench.stack import Stack, service_env
from bench.stack import wait_until as wait_for
from tests.conftest import FIXTURES, PHOTOS, TINY_MODEL, free_port
from worker.protocol import FilterRequest


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    """The CPUs are shared: keep torch to one thread in the test process."""
    import torch

    torch.set_num_threads(1)


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def photo(name: str = "chelsea.jpg", mode: str = "RGB", size: tuple[int, int] | None = None) -> Image.Image:
    """A real photograph, converted to a normalised mode (and resized when asked)."""
    with Image.open(PHOTOS / name) as im:
        image = im.convert("RGB")
    if size is not None:
        image = image.resize(size, Image.Resampling.BILINEAR)
    if mode in ("RGBA", "LA"):
        base = image.convert(mode[0] if mode == "LA" else "RGB")
        w, h = base.size
        alpha = Image.fromarray(np.tile(np.linspace(30, 250, w, dtype=np.uint8), (h, 1)))
        base.putalpha(alpha)
        return base
    return image.convert(mode)


def cifar_png(cifar_mini: dict[str, np.ndarray], index: int = 0) -> bytes:
    return png_bytes(Image.fromarray(cifar_mini["x_test"][index]))


def filter_request(job_id: str, image: Image.Image | None = None, preset: str = "fast",
                   norm: str = "linf", eps: float | None = 8 / 255, **extra: Any) -> FilterRequest:
    w, h = image.size if image is not None else (32, 32)
    request: dict[str, Any] = {
        "job_id": job_id, "preset": preset, "norm": norm, "eps": eps, "delta": eps, "reencode": None,
        "webhook_url": None, "submitted_at": time.time(),
        "image": {"width": w, "height": h, "mode": image.mode if image is not None else "RGB",
                  "format": "PNG", "bytes": 0},
    }
    request.update(extra)
    return cast(FilterRequest, request)


def worker_env(redis_url: str, checkpoint_dir: Path, **settings: Any) -> dict[str, str]:
    """Environment of a `python -m worker.rq_worker` subprocess on the tiny model."""
    return service_env(redis_url, **{
        "default_model": TINY_MODEL, "checkpoint_dir": checkpoint_dir, "data_dir": FIXTURES,
        "vetting_data": FIXTURES / "cifar10_mini.npz", "vetting_n": 8, "metrics_port": 0,
        "log_json": "true", **settings})


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start real worker subprocesses (`python -m worker.rq_worker`); all are stopped after the test."""
    with Stack(tmp_path) as stack:
        yield lambda env, *args: stack.start_worker(env, *args)


class HookServer:
    """A local HTTP server recording JSON POST bodies; ``answers`` scripts the status codes."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.answers: list[int] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                server.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                code = server.answers.pop(0) if server.answers else 200
                self.send_response(code)
                if code in (301, 302, 307):
                    self.send_header("Location", "http://127.0.0.1:9/elsewhere")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def hooks() -> Iterator[HookServer]:
    server = HookServer()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


__all__ = ["FIXTURES", "PHOTOS", "TINY_MODEL", "cifar_png", "filter_request", "free_port", "photo",
           "png_bytes", "wait_for", "worker_env"]
