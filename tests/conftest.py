"""Shared fixtures: a real Redis server, the shipped test fixtures, a tiny model.

Redis: `REDIS_URL` when given (CI may point at its own server); otherwise a
throwaway `redis-server` on a free port, started once per session.  Tests
that need Redis and find neither fail loudly rather than skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PHOTOS = FIXTURES / "photos"
TINY_MODEL = FIXTURES / "tiny.safetensors"
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real Redis server (REDIS_URL, or a private one started here)."""
    given = os.environ.get("REDIS_URL")
    if given:
        yield given
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("integration tests need Redis: install redis-server or set REDIS_URL")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    _wait_for_port(port)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def redis_conn(redis_url: str):  # type: ignore[no-untyped-def]
    """A client on a flushed database (each test starts empty)."""
    import redis

    conn = redis.Redis.from_url(redis_url)
    conn.flushdb()
    yield conn
    conn.flushdb()
    conn.close()


def _wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


@pytest.fixture(scope="session")
def cifar_mini() -> dict[str, np.ndarray]:
    """400 train / 200 test JPEG-derived CIFAR-10 images (uint8 NHWC) with labels."""
    with np.load(FIXTURES / "cifar10_mini.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="session")
def tiny_checkpoint():  # type: ignore[no-untyped-def]
    """The small adversarially trained test model (models.checkpoint.LoadedCheckpoint)."""
    from models.checkpoint import load_checkpoint

    return load_checkpoint(TINY_MODEL)


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):  # type: ignore[no-untyped-def]
    return tiny_checkpoint.model
