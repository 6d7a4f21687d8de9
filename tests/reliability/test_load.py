"""Issue 7, item 5: the bounded queue under a concurrent burst, end to end.

tests/service checks that a full queue answers 429 with Retry-After (one
request at a time).  Here bursts of simultaneous uploads hit the live API on a
real Redis: the queue must never hold more than SAFESPOT_MAX_QUEUE jobs (the
depth check alone races: every request of a burst can read the same depth),
every refusal is a JSON 429 with a usable Retry-After, nothing of a refused
upload stays in Redis, and with a worker draining the queue every accepted
job finishes (none lost, none twice).

The soak run at saturation is a benchmark, not a test:
`python -m bench soak` (see docs/reliability.md).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.reliability.conftest import (
    LiveApi,
    RedisServer,
    WorkerPool,
    api_settings,
    client_auth,
    poll_job,
    queue_state,
    small_photo,
    wait_ready,
)

pytestmark = pytest.mark.integration

MAX_QUEUE = 4


def burst(api: LiveApi, n: int, image: bytes) -> list[httpx.Response]:
    """`n` uploads released at the same instant, one connection each."""
    barrier = threading.Barrier(n)
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def one() -> None:
        with api.client() as client:
            barrier.wait()
            response = client.post("/v1/filter", headers=client_auth(), data={"preset": "fast"},
                                   files={"image": ("a.png", image, "image/png")})
        with lock:
            answers.append(response)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return answers


def check_refusals(answers: list[httpx.Response]) -> list[str]:
    """Every answer is 202 or a JSON 429 with an integer Retry-After; returns the accepted ids."""
    assert {a.status_code for a in answers} <= {202, 429}, Counter(a.status_code for a in answers)
    for refused in (a for a in answers if a.status_code == 429):
        assert refused.json()["error"]["code"] == "queue_full"
        assert int(refused.headers["retry-after"]) >= 1
    return [a.json()["job_id"] for a in answers if a.status_code == 202]


@pytest.fixture
def own_redis(tmp_path: Path) -> Any:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def test_a_burst_never_overfills_the_queue_and_refusals_leave_nothing(
        own_redis: RedisServer, tmp_path: Path) -> None:
    """No worker: the queue only fills.  Three bursts of 24 against a bound of 4."""
    api = LiveApi(api_settings(own_redis.url, tmp_path, max_queue=MAX_QUEUE)).start()
    conn = own_redis.client()
    try:
        image = small_photo()
        for _ in range(3):
            conn.flushdb()
            accepted = check_refusals(burst(api, 24, image))
            assert len(accepted) == MAX_QUEUE
            assert queue_state(conn) == {"queued": MAX_QUEUE, "jobs": MAX_QUEUE, "uploads": MAX_QUEUE,
                                         "started": 0}
        with api.client() as client:  # one more, alone: refused before its image is decoded
            late = client.post("/v1/filter", headers=client_auth(),
                               files={"image": ("a.png", image, "image/png")})
        assert late.status_code == 429 and int(late.headers["retry-after"]) >= 1
    finally:
        api.stop()


@pytest.mark.slow
def test_under_bursts_with_a_worker_every_accepted_job_finishes_exactly_once(
        own_redis: RedisServer, tmp_path: Path) -> None:
    """Bursts of 16 while a worker drains the queue.  (Admission is by position
    after the push, so a refused job may sit in the list for a moment before it
    takes itself back; what is checked is what stays once the answers are in.)"""
    workers = WorkerPool(tmp_path)
    workers.start_tiny(own_redis.url, tmp_path / "checkpoints", max_batch=4, max_wait_ms=50)
    api = LiveApi(api_settings(own_redis.url, tmp_path, max_queue=MAX_QUEUE)).start()
    conn = own_redis.client()
    try:
        with api.client() as client:
            wait_ready(client)
            accepted: list[str] = []
            refused = 0
            depths = []
            for _ in range(4):
                answers = burst(api, 16, small_photo(size=(40, 30)))
                depths.append(queue_state(conn)["queued"])
                accepted += check_refusals(answers)
                refused += sum(a.status_code == 429 for a in answers)
                time.sleep(0.5)
            ended = {job_id: poll_job(client, job_id, timeout=90) for job_id in accepted}
        assert refused > 0 and len(accepted) >= MAX_QUEUE
        assert max(depths) <= MAX_QUEUE, f"the queue held {depths} jobs after the bursts"
        assert {body["status"] for body in ended.values()} == {"finished"}
        finished = conn.zcard("rq:finished:safespot-filter")
        assert finished == len(accepted) == len(set(accepted))  # each once, none twice, none lost
        state = queue_state(conn)
        assert state["queued"] == 0 and state["started"] == 0
        # Uploads of finished jobs stay until their TTL (queue wait + retries): see the docs.
    finally:
        api.stop()
        workers.stop_all()
