"""Every JobBackend through the same cases: the in-process one of ``safespot serve``
(EmbeddedBackend) and the deployment's (RedisJobBackend + a real ``safespot worker``
subprocess).  What a client sees must not depend on the mode.  Cancelling is not part
of the JobBackend protocol; a time limit is, and is checked here."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from PIL import Image

from service.backends.redis_backend import RedisJobBackend
from service.settings import Settings
from tests.conftest import REPO
from tests.worker.conftest import cifar_png, filter_request, photo, png_bytes, wait_for, worker_env
from tests.worker.test_embedded import service_settings
from worker.embedded import EmbeddedBackend
from worker.protocol import JobBackend, JobView

pytestmark = pytest.mark.integration
MakeBackend = Callable[..., JobBackend]  # (job_timeout_s=...) -> a backend whose jobs get run


@pytest.fixture(scope="module", params=["embedded", "redis"])
def make_backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                 redis_url: str) -> Iterator[MakeBackend]:
    tmp = tmp_path_factory.mktemp(request.param)
    made: list[Any] = []
    if request.param == "embedded":
        def make(job_timeout_s: int = 600) -> JobBackend:
            backend = EmbeddedBackend(service_settings(tmp, job_timeout_s=job_timeout_s, max_wait_ms=50)).start()
            made.append(backend)
            return backend

        yield make
        for backend in made:
            backend.stop()
        return
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    log = open(tmp / "worker.log", "wb")  # noqa: SIM115 (closed below)
    worker = subprocess.Popen([sys.executable, "-m", "worker.rq_worker"], cwd=REPO, stdout=log,
                              stderr=subprocess.STDOUT, env=worker_env(redis_url, tmp / "checkpoints", max_wait_ms=50))

    def make_redis(job_timeout_s: int = 600) -> JobBackend:
        settings = Settings(redis_url=redis_url, data_dir=tmp, checkpoint_dir=tmp / "checkpoints",
                            job_timeout_s=job_timeout_s, job_retries=0)
        backend = RedisJobBackend(settings)
        made.append(backend)
        wait_for(lambda: backend.ready()[0], 60, "a worker with a loaded model")
        return backend

    yield make_redis
    worker.terminate()
    worker.wait(timeout=60)
    log.close()
    for backend in made:
        backend.close()


def ended(backend: JobBackend, job_id: str) -> JobView:
    return wait_for(lambda: (v := backend.get_job(job_id)) and v["status"] in ("finished", "failed") and v,
                    90, f"job {job_id} to end")


def test_a_job_ends_with_its_result_and_image(make_backend, cifar_mini) -> None:
    backend = make_backend()
    assert backend.ready()[0]
    backend.submit_filter(filter_request("contract-ok"), cifar_png(cifar_mini, 1))
    view = ended(backend, "contract-ok")
    assert view["status"] == "finished" and view["error"] is None
    result = view["result"]
    assert result is not None and result["image"] == {"width": 32, "height": 32, "mode": "RGB"}
    assert result["model"]["name"] == "tiny-test-fixture" and result["grad_evals"] > 0
    assert view["progress"]["phase"] == "done" and view["progress"]["fraction"] == 1.0
    assert view["ended_at"] >= view["started_at"] >= view["created_at"] - 1
    image = backend.get_result_image("contract-ok")
    assert image is not None and Image.open(io.BytesIO(image)).size == (32, 32)
    assert backend.queue_depth() == 0


def test_a_failing_job_ends_with_an_error_code_and_no_image(make_backend) -> None:
    backend = make_backend()
    backend.submit_filter(filter_request("contract-bad"), b"\x89PNG\r\n\x1a\n truncated")
    view = ended(backend, "contract-bad")
    assert view["status"] == "failed" and view["result"] is None
    assert view["error"] is not None and view["error"]["code"] == "invalid_image"
    assert view["progress"]["phase"] == "done"
    assert backend.get_result_image("contract-bad") is None


def test_an_unknown_job_is_none(make_backend) -> None:
    backend = make_backend()
    assert backend.get_job("contract-unknown") is None
    assert backend.get_result_image("contract-unknown") is None


def test_a_job_past_its_time_limit_fails_with_timeout(make_backend) -> None:
    backend = make_backend(job_timeout_s=1)
    big = photo("coffee.webp")
    backend.submit_filter(filter_request("contract-slow", big, preset="paper"), png_bytes(big))
    view = ended(backend, "contract-slow")
    assert view["status"] == "failed" and view["error"] is not None
    assert view["error"]["code"] == "timeout", view["error"]
    assert backend.get_result_image("contract-slow") is None
