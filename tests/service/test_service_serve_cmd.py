"""safespot_cli.serve_cmd: `safespot serve` wiring, without opening a port."""

from __future__ import annotations

import argparse
import subprocess
import sys
import types
from typing import ClassVar

import pytest

from safespot_cli import serve_cmd
from safespot_cli.errors import UsageError


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="safespot")
    serve_cmd.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def test_arguments_and_defaults():
    args = parse()
    assert (args.host, args.port, args.log_level) == ("127.0.0.1", 8000, None)
    args = parse("--host", "0.0.0.0", "--port", "9000", "--log-level", "debug")
    assert (args.host, args.port, args.log_level) == ("0.0.0.0", 9000, "debug")
    assert args.run is serve_cmd.run


class StubEmbedded:
    instances: ClassVar[list[StubEmbedded]] = []

    def __init__(self, settings) -> None:
        self.settings = settings
        self.calls: list[str] = []
        StubEmbedded.instances.append(self)

    def start(self) -> None:
        self.calls.append("start")

    def stop(self) -> None:
        self.calls.append("stop")

    def queue_depth(self) -> int:
        return 0


@pytest.fixture
def fake_uvicorn(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    runs: list[dict] = []
    module = types.ModuleType("uvicorn")
    module.run = lambda app, **kw: runs.append({"app": app, **kw})  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "uvicorn", module)
    return runs


def test_without_redis_the_embedded_worker_runs_in_process(monkeypatch, fake_uvicorn):
    embedded = types.ModuleType("worker.embedded")
    embedded.EmbeddedBackend = StubEmbedded  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "worker.embedded", embedded)
    monkeypatch.setattr("service.log.configure_logging", lambda level: None)
    StubEmbedded.instances.clear()
    assert serve_cmd.run(parse("--port", "8123")) == 0
    (backend,) = StubEmbedded.instances
    assert backend.calls == ["start", "stop"]
    (run,) = fake_uvicorn
    assert run["port"] == 8123 and run["host"] == "127.0.0.1"
    assert run["app"].state.backend is backend and run["app"].state.settings is backend.settings


@pytest.mark.integration
def test_with_redis_only_the_api_runs(monkeypatch, fake_uvicorn, redis_url):
    from service.backends.redis_backend import RedisJobBackend

    monkeypatch.setenv("SAFESPOT_REDIS_URL", redis_url)
    monkeypatch.setattr("service.log.configure_logging", lambda level: None)
    assert serve_cmd.run(parse()) == 0
    assert isinstance(fake_uvicorn[0]["app"].state.backend, RedisJobBackend)


def test_invalid_settings_are_a_usage_error(monkeypatch):
    monkeypatch.setenv("SAFESPOT_MAX_QUEUE", "-3")
    with pytest.raises(UsageError, match="SAFESPOT_MAX_QUEUE"):
        serve_cmd.run(parse())


def test_help_is_instant_and_imports_neither_the_app_nor_torch():
    code = ("import sys, argparse; from safespot_cli import serve_cmd; "
            "p = argparse.ArgumentParser(); serve_cmd.register(p.add_subparsers()); "
            "print(sorted(m for m in ('torch', 'fastapi', 'service.app') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
