"""The stacks the page tests share: one per deployment, for the whole tests/browser package.

Redis (the session's `redis_url`, on a database of its own) with `safespot worker` (which also
serves the training queue here) and `safespot serve` as subprocesses, and `safespot serve` alone
(its embedded worker); the tiny model, a client key and an admin key; vetting on the vetting
set shipped in the package and training runs small enough for a test.  Chromium is Debian's
(`apt-get install -y chromium chromium-driver`); when it is missing these tests FAIL, they never skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.harness import (
    BrowserMissing,
    Stack,
    browser_errors,
    check_browser,
    chromium,
    running_service,
    with_db,
)
from tests.conftest import REPO, TINY_MODEL
from worker.protocol import ADMIN_QUEUE, FILTER_QUEUE, TRAIN_QUEUE

CLIENT_KEY = "browser-test-client-key-0001"
ADMIN_KEY = "browser-test-admin-key-00001"
ARTIFACTS = REPO / "test-artifacts"
STACK_DB = 11  # this package's Redis database: its keys never meet other tests'
STACK_ENV = {
    # No SAFESPOT_VETTING_DATA: uploads are vetted on the set shipped for their domain, as on a
    # fresh machine; fewer images than the default keep it quick.
    "SAFESPOT_VETTING_N": "20", "SAFESPOT_VETTING_APGD_N": "8",
    # A training run of a few seconds: small holdout and evaluation, one batch a step.
    "SAFESPOT_TRAIN_HOLDOUT": "40", "SAFESPOT_TRAIN_EVAL_PGD": "8", "SAFESPOT_TRAIN_BATCH_SIZE": "40",
    "SAFESPOT_QUEUES": f"{FILTER_QUEUE},{ADMIN_QUEUE},{TRAIN_QUEUE}",  # the Redis worker is the trainer too
}


@pytest.fixture(scope="package", params=["redis", "embedded"])
def stack(request: pytest.FixtureRequest, redis_url: str,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Both deployments the page meets: API + RQ worker over Redis, and `safespot serve` alone."""
    try:
        check_browser()  # before minutes of start-up: say at once what is missing
    except BrowserMissing as e:
        pytest.fail(f"the browser tests need Chromium: {e}")
    import redis

    url = with_db(redis_url, STACK_DB)
    conn = redis.Redis.from_url(url)
    conn.flushdb()
    try:
        with running_service(tmp_path_factory.mktemp("stack"),
                             redis_url=url if request.param == "redis" else None,
                             model=str(TINY_MODEL), api_keys=CLIENT_KEY, admin_keys=ADMIN_KEY,
                             extra_env=STACK_ENV) as running:
            yield running
    finally:
        conn.flushdb()
        conn.close()


@pytest.fixture
def downloads(tmp_path: Path) -> Path:
    path = tmp_path / "downloads"
    path.mkdir()
    return path


@pytest.fixture
def driver(downloads: Path) -> Iterator[Any]:
    with chromium(download_dir=downloads) as browser:
        yield browser
        errors = browser_errors(browser)
        assert not errors, f"the page logged errors: {errors}"
