"""Helpers for the worker tests: requests, PNG uploads, worker subprocesses."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.conftest import FIXTURES, PHOTOS, REPO, TINY_MODEL, free_port


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
                   norm: str = "linf", eps: float = 8 / 255, **extra: Any) -> dict[str, Any]:
    w, h = image.size if image is not None else (32, 32)
    request: dict[str, Any] = {
        "job_id": job_id, "preset": preset, "norm": norm, "eps": eps, "delta": eps, "reencode": None,
        "webhook_url": None, "submitted_at": time.time(),
        "image": {"width": w, "height": h, "mode": image.mode if image is not None else "RGB",
                  "format": "PNG", "bytes": 0},
    }
    request.update(extra)
    return request


def worker_env(redis_url: str, checkpoint_dir: Path, **settings: Any) -> dict[str, str]:
    """Environment of a `python -m worker.rq_worker` subprocess on the tiny model."""
    env = dict(os.environ)
    env.update({
        "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
        "SAFESPOT_REDIS_URL": redis_url, "SAFESPOT_DEFAULT_MODEL": str(TINY_MODEL),
        "SAFESPOT_CHECKPOINT_DIR": str(checkpoint_dir), "SAFESPOT_DATA_DIR": str(FIXTURES),
        "SAFESPOT_VETTING_DATA": str(FIXTURES / "cifar10_mini.npz"), "SAFESPOT_VETTING_N": "8",
        "SAFESPOT_THREADS": "1", "SAFESPOT_METRICS_PORT": "0", "SAFESPOT_LOG_JSON": "true",
    })
    env.update({f"SAFESPOT_{k.upper()}": str(v) for k, v in settings.items()})
    return env


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start real worker subprocesses (`python -m worker.rq_worker`); all are stopped after the test."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"worker-{len(procs)}.log", "wb")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen([sys.executable, "-m", "worker.rq_worker", *args], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


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


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


__all__ = ["FIXTURES", "PHOTOS", "TINY_MODEL", "cifar_png", "filter_request", "free_port", "photo",
           "png_bytes", "wait_for", "worker_env"]
