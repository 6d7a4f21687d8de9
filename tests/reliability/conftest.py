"""Fixtures of the reliability tests: real processes, real sockets, real Redis.

- `RedisServer` (bench/stack.py, like every process started here): a private
  `redis-server` that a test may stop and start again on the same port (the
  session's shared server must not be restarted);
- `LiveApi`: the FastAPI app served by uvicorn on a real socket, in a thread
  of the test process (cheap: no torch, starts in well under a second);
- `WorkerPool`: `python -m worker.rq_worker` subprocesses on the tiny test
  model (the same helper environment as tests/worker).

The package shares one stack (`stack`) across its modules where a test does
not need to break them, once per deployment: one Redis, one API and one worker
process; and the single-process mode (`safespot serve` without Redis: the API
with the embedded worker in this process).  The fault tests start their own.  Workers import torch (seconds on a busy machine), so they are few.
"""

from __future__ import annotations

import contextlib
import io
import json
import select
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from PIL import Image

from bench.stack import RedisServer, free_port, stop_process
from bench.stack import Stack as Processes
from bench.stack import service_env as stack_env
from bench.stack import wait_until as wait_for
from tests.conftest import FIXTURES, PHOTOS, TINY_MODEL
from tests.worker.conftest import worker_env
from worker.protocol import FILTER_QUEUE, PREFIX

CLIENT_KEY = "reliability-client-key-0123456789"
ADMIN_KEY = "reliability-admin-key-0123456789"
TERMINAL = frozenset({"finished", "failed", "canceled", "expired"})


def client_auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {CLIENT_KEY}"}


def admin_auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_KEY}"}


def small_photo(name: str = "chelsea.jpg", size: tuple[int, int] = (48, 32), fmt: str = "PNG") -> bytes:
    """A real photograph, shrunk so the tiny model filters it in well under a second."""
    with Image.open(PHOTOS / name) as im:
        image = im.convert("RGB").resize(size, Image.Resampling.BILINEAR)
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


# ----------------------------------------------------------------------- API
class LiveApi:
    """`create_app(settings, backend)` served by uvicorn on 127.0.0.1:<port> in a daemon thread."""

    def __init__(self, settings: Any, port: int | None = None, backend: Any = None) -> None:
        import uvicorn

        from service.app import create_app

        self.port = port or free_port()
        self.app = create_app(settings, backend)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_config=None,
                                access_log=False, lifespan="on", log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="live-api", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LiveApi:
        self.thread.start()
        wait_for(lambda: self.server.started, 15, "uvicorn to start", interval=0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 30.0), **kw)


def api_settings(redis_url: str | None, tmp: Path, **overrides: Any) -> Any:
    from service.settings import Settings

    values: dict[str, Any] = dict(
        redis_url=redis_url, api_keys=CLIENT_KEY, admin_keys=ADMIN_KEY, data_dir=tmp / "data",
        checkpoint_dir=tmp / "checkpoints", max_upload_bytes=1024 * 1024, max_pixels=4_000_000,
        max_checkpoint_bytes=1024 * 1024, max_wait_s=30, redis_timeout_s=1.0, seconds_per_job=1)
    values.update(overrides)
    return Settings(**values)


def serve_subprocess(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    """`safespot serve` (Redis mode: the API only) as its own process, logging to `log`."""
    processes = Processes(log.parent)
    processes.start_api(env, port, name=log.stem)
    return processes.procs[log.stem]


def service_env(redis_url: str, tmp: Path, **settings: Any) -> dict[str, str]:
    return stack_env(redis_url, api_keys=CLIENT_KEY, admin_keys=ADMIN_KEY, data_dir=tmp / "data",
                     checkpoint_dir=tmp / "checkpoints", redis_timeout_s=1, log_level="warning", **settings)


class WorkerPool(Processes):
    """Workers on the tiny model (tests/worker's environment), logs in the test's folder."""

    def start_tiny(self, redis_url: str, checkpoint_dir: Path, *args: str, **settings: Any) -> subprocess.Popen[bytes]:
        return self.start_worker(worker_env(redis_url, checkpoint_dir, **settings), *args)


def wait_ready(api: httpx.Client, timeout: float = 90) -> None:
    """Until /readyz says a worker holds a model (the worker imports torch first)."""
    wait_for(lambda: api.get("/readyz").status_code == 200, timeout, "a ready worker", interval=0.25)


# --------------------------------------------------------------- Redis state
def queue_state(conn: redis.Redis) -> dict[str, int]:
    """What a request costs the queue: queued ids, jobs, uploads, started executions."""
    return {
        "queued": int(conn.llen(f"rq:queue:{FILTER_QUEUE}")),
        "jobs": sum(1 for _ in conn.scan_iter("rq:job:*", count=1000)),
        "uploads": sum(1 for _ in conn.scan_iter(f"{PREFIX}upload:*", count=1000)),
        "started": int(conn.zcard(f"rq:wip:{FILTER_QUEUE}")),
    }


def poll_job(api: httpx.Client, job_id: str, timeout: float = 60) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body = api.get(f"/v1/jobs/{job_id}", headers=client_auth()).json()
        return body if body.get("status") in TERMINAL else None

    return wait_for(done, timeout, f"job {job_id} to end", interval=0.1)


# ------------------------------------------------------- raw-socket uploads
def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], dict[str, Any]]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, json.loads(body[:length] or b"{}")


def stream_upload(port: int, path: str, field_name: str, auth: dict[str, str], total: int, *,
                  chunked: bool, first_bytes: bytes = b"\xff\xd8\xff") -> tuple[int, int, dict[str, Any]]:
    """POST a multipart body with a file part of about `total` bytes to `path`
    over a raw socket (httpx would buffer it), stopping as soon as the server
    answers or stops reading.  Returns (file bytes sent, status, JSON body)."""
    head = (f"--b\r\nContent-Disposition: form-data; name=\"{field_name}\"; filename=\"big.bin\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + first_bytes
    tail = b"\r\n--b--\r\n"
    framing = ("Transfer-Encoding: chunked" if chunked
               else f"Content-Length: {len(head) + total + len(tail)}")
    request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth['Authorization']}\r\n"
               f"Content-Type: multipart/form-data; boundary=b\r\n{framing}\r\n\r\n").encode()

    def frame(data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data) if chunked else data

    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answered_early = not chunked and bool(select.select([sock], [], [], 1.0)[0])
        if not answered_early:  # a declared length over the limit is answered before any body
            sock.sendall(frame(head))
        sock.settimeout(2)
        while not answered_early and sent < total and not select.select([sock], [], [], 0)[0]:
            try:
                sock.sendall(frame(b"\0" * min(65536, total - sent)))
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                break  # the server stopped reading: what we want
            sent += min(65536, total - sent)
        if sent >= total:
            with contextlib.suppress(OSError):
                sock.sendall(frame(tail) + (b"0\r\n\r\n" if chunked else b""))
        sock.settimeout(10)
        status, _headers, body = _read_response(sock)
    return sent, status, body


# ------------------------------------------------------------------ fixtures
@pytest.fixture(autouse=True)
def _no_safespot_env(no_safespot_env: None) -> None:
    """Every test here starts without the developer's SAFESPOT_* variables."""


@dataclass
class Stack:
    """One deployment shared by the non-destructive tests: Redis + a worker process + the API,
    or the API with the embedded worker (`redis` and `workers` None)."""

    redis: RedisServer | None
    api: LiveApi
    workers: WorkerPool | None
    tmp: Path

    @property
    def conn(self) -> Any:
        assert self.redis is not None, "the embedded stack has no Redis"
        return self.redis.client()

    @property
    def checkpoint_dir(self) -> Path:
        return self.tmp / "checkpoints"

    def queue_state(self) -> dict[str, int]:
        """What a refused request must not change: the queue and the jobs it holds."""
        if self.redis is None:
            jobs = list(self.api.app.state.backend._jobs.values())
            return {"queued": sum(j.status == "queued" for j in jobs), "jobs": len(jobs),
                    "started": sum(j.status == "started" for j in jobs)}
        return queue_state(self.conn)

    def worker_alive(self) -> bool:
        if self.workers is None:
            return self.api.app.state.backend.ready()[0]
        return next(iter(self.workers.procs.values())).poll() is None


@pytest.fixture(scope="package", params=["redis", "embedded"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp(f"stack-{request.param}")
    if request.param == "embedded":
        from worker.embedded import EmbeddedBackend

        settings = api_settings(None, tmp, default_model=str(TINY_MODEL), max_wait_ms=50, threads=1)
        backend = EmbeddedBackend(settings).start()
        api = LiveApi(settings, backend=backend).start()
        try:
            with api.client() as client:
                wait_ready(client)
            yield Stack(None, api, None, tmp)
        finally:
            api.stop()
            backend.stop()
        return
    server = RedisServer(tmp / "redis").start()
    workers = WorkerPool(tmp)
    workers.start_tiny(server.url, tmp / "checkpoints", max_wait_ms=50, job_heartbeat_ttl_s=10,
                       max_checkpoint_bytes=1024 * 1024)
    api = LiveApi(api_settings(server.url, tmp)).start()
    try:
        with api.client() as client:
            wait_ready(client)
        yield Stack(server, api, workers, tmp)
    finally:
        api.stop()
        workers.stop_all()
        server.stop()

__all__ = ["ADMIN_KEY", "CLIENT_KEY", "FIXTURES", "TINY_MODEL", "LiveApi", "RedisServer", "WorkerPool",
           "stop_process", "wait_for"]
