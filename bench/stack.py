"""The service as child processes, for the benchmarks and the integration tests alike.

- :class:`RedisServer`: a private ``redis-server`` on a free port that keeps
  nothing on disk (stop it and start it again on the same port: an empty Redis,
  as after a restart without persistence);
- :class:`Stack`: ``safespot serve`` and workers (``python -m worker.rq_worker``
  or ``safespot worker``) started with their logs in one folder, health-checked
  over HTTP, and stopped (their whole process group) at the end;
- :func:`service_env`: the environment they run in, only the ``SAFESPOT_*``
  settings given (the caller's own never leak in).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll `condition` until it returns something truthy, and return that; TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL after `timeout`; to the whole group when the process leads one
    (`safespot serve` may have children of its own)."""
    def send(sig: int) -> None:
        with suppress(ProcessLookupError):
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)

    if proc.poll() is not None:
        return
    send(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        proc.wait(timeout=timeout)


def service_env(redis_url: str | None = None, *, threads: int = 1, **settings: Any) -> dict[str, str]:
    """The caller's environment less its SAFESPOT_* settings, plus `settings` as SAFESPOT_<NAME>
    (None leaves one unset) and `threads` for torch, the BLAS libraries and the worker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFESPOT_")}
    env.update(PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p),
               OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    settings = {"redis_url": redis_url, "threads": threads, **settings}
    env.update({f"SAFESPOT_{k.upper()}": str(v) for k, v in settings.items() if v is not None})
    return env


class RedisServer:
    """A private redis-server on 127.0.0.1 that keeps nothing on disk."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir, self.port = workdir, port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("no redis-server on PATH: install it or give a Redis URL")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)

        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_until(listening, 10, f"redis-server to listen on port {self.port}", interval=0.05)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Stack:
    """Service processes with their logs in `workdir`; `with` (or stop_all) ends them."""

    workdir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    url: str = ""  # the API's base URL, with a trailing slash, once start_api has run

    def start(self, name: str, module_args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """`python -m <module_args>` in the repository, in a session of its own, logging to <name>.log."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.workdir / f"{name}.log", "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", *module_args], cwd=REPO, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def start_worker(self, env: dict[str, str], *args: str, name: str | None = None) -> subprocess.Popen[bytes]:
        return self.start(name or f"worker-{len(self.procs)}", ["worker.rq_worker", *args], env)

    def start_api(self, env: dict[str, str], port: int | None = None, name: str = "api") -> str:
        """`safespot serve` (Redis mode when the env names a Redis, else its embedded worker),
        until /healthz answers; returns its base URL."""
        port = port or free_port()
        proc = self.start(name, ["safespot_cli.main", "serve", "--host", "127.0.0.1", "--port", str(port)], env)
        self.url = f"http://127.0.0.1:{port}/"
        self.wait_http(self.url + "healthz", 60, f"{name} to answer /healthz", watch=[proc])
        return self.url

    def wait_http(self, url: str, timeout: float, what: str,
                  watch: Iterable[subprocess.Popen[bytes]] | None = None) -> None:
        """Until GET `url` answers 200; a watched process (all by default) that exits meanwhile,
        or the timeout, ends the wait with the logs."""
        import httpx

        watched = list(self.procs.values() if watch is None else watch)

        def answered() -> bool:
            for name, proc in self.procs.items():
                if proc in watched and proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}\n{self.log_tail()}")
            try:
                return httpx.get(url, timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_until(answered, timeout, what, interval=0.25)
        except TimeoutError as e:
            raise TimeoutError(f"{e}\n{self.log_tail()}") from None

    def log_tail(self, chars: int = 3000) -> str:
        logs = {name: self.workdir / f"{name}.log" for name in self.procs}
        return "\n".join(f"--- {path.name} (last {chars} chars)\n{path.read_text(errors='replace')[-chars:]}"
                         for path in logs.values() if path.exists())

    def stop(self, name: str) -> None:
        stop_process(self.procs.pop(name))

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
