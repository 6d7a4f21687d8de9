"""Fixtures of the service tests: settings, a fake queue, an app and a client."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")

from fastapi.testclient import TestClient  # noqa: E402
from service_testkit import ADMIN_KEY, CLIENT_KEY, FakeJobBackend  # noqa: E402

from service.app import create_app  # noqa: E402
from service.settings import Settings  # noqa: E402


@pytest.fixture(autouse=True)
def _no_safespot_env(no_safespot_env: None) -> None:
    """Every test here starts without the developer's SAFESPOT_* variables."""


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(api_keys=CLIENT_KEY, admin_keys=ADMIN_KEY, data_dir=tmp_path / "data",
                    checkpoint_dir=tmp_path / "checkpoints", max_upload_bytes=2 * 1024 * 1024,
                    max_pixels=4_000_000, max_checkpoint_bytes=1024 * 1024,
                    webhook_allowed_hosts="hooks.example.com", max_wait_s=5)


@pytest.fixture
def backend() -> FakeJobBackend:
    return FakeJobBackend()


@pytest.fixture
def client(settings: Settings, backend: FakeJobBackend) -> Iterator[TestClient]:
    with TestClient(create_app(settings, backend)) as test_client:
        yield test_client
