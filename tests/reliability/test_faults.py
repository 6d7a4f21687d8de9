"""Issue 7, item 4: faults with real processes.

(a) SIGKILL a worker in the middle of a batch while other jobs wait and a
    second worker runs: the dead worker's jobs end retried (then finished by
    the survivor) or failed, never "started" for good; the others finish.
(b) Restart Redis under load: while it is gone the API answers 503 JSON (with
    Retry-After) and keeps its process; once it is back on the same port the
    same API process and worker recover by themselves and new jobs complete.
    Redis here keeps nothing on disk, so the jobs it held die with it (they
    answer 404 afterwards): docs/reliability.md recommends AOF in production.
(c) Restart the API while jobs run: results and images remain retrievable
    from a new API process (jobs live in Redis, not in the API).

tests/worker/test_rq_worker.py kills a lone worker and runs the registry
cleanup by hand; tests/service/test_service_redis_http.py restarts Redis
under an in-process app with no worker.  These run the whole chain.
"""

from __future__ import annotations

import io
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from rq.job import Job
from rq.serializers import JSONSerializer

from tests.conftest import free_port
from tests.reliability.conftest import (
    LiveApi,
    RedisServer,
    WorkerPool,
    api_settings,
    client_auth,
    poll_job,
    queue_state,
    serve_subprocess,
    service_env,
    small_photo,
    stop_process,
    wait_for,
    wait_ready,
)
from worker.protocol import WORKERS_KEY

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def own_redis(tmp_path: Path) -> Any:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def workers(tmp_path: Path) -> Any:
    pool = WorkerPool(tmp_path)
    yield pool
    pool.stop_all()


def submit(api: httpx.Client, preset: str = "fast", size: tuple[int, int] = (48, 32),
           photo: str = "chelsea.jpg", **data: str) -> httpx.Response:
    return api.post("/v1/filter", headers=client_auth(), data={"preset": preset, **data},
                    files={"image": ("a.png", small_photo(photo, size=size), "image/png")})


def status_of(api: httpx.Client, job_id: str) -> dict[str, Any]:
    response = api.get(f"/v1/jobs/{job_id}", headers=client_auth())
    assert response.status_code == 200, response.text
    return response.json()


def ready_workers(conn: Any) -> int:
    return sum(1 for raw in conn.hvals(WORKERS_KEY) if json.loads(raw).get("model"))


# -------------------------------------------------------------------- (a)
def test_a_worker_killed_mid_batch_loses_no_job_and_the_other_worker_carries_on(
        own_redis: RedisServer, workers: WorkerPool, tmp_path: Path) -> None:
    conn = own_redis.client()
    knobs = {"max_batch": 2, "max_wait_ms": 300, "job_heartbeat_ttl_s": 3, "maintenance_interval_s": 2}
    victim = workers.start_tiny(own_redis.url, tmp_path / "checkpoints", name="victim", **knobs)
    survivor = workers.start_tiny(own_redis.url, tmp_path / "checkpoints", name="survivor", **knobs)
    api = LiveApi(api_settings(own_redis.url, tmp_path, job_retries=1)).start()
    try:
        with api.client() as client:
            wait_for(lambda: ready_workers(conn) == 2, 90, "both workers to load the model", interval=0.25)
            # Two long searches and two short ones; whoever takes the long ones is the victim.
            slow = [submit(client, preset="paper").json()["job_id"] for _ in range(2)]
            fast = [submit(client).json()["job_id"] for _ in range(2)]

            def slow_job_in_progress() -> tuple[str, str] | None:
                for job_id in slow:
                    body = status_of(client, job_id)
                    if body["status"] == "started" and body["progress"].get("grad_evals"):
                        job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
                        return job_id, str(job.worker_name)
                return None

            _, holder = wait_for(slow_job_in_progress, 60, "a long search to be under way")
            on_holder = [j for j in slow + fast
                         if status_of(client, j)["status"] == "started"
                         and Job.fetch(j, connection=conn, serializer=JSONSerializer).worker_name == holder]
            assert on_holder
            later = [submit(client).json()["job_id"] for _ in range(3)]  # queued as the worker dies
            killed, other = (victim, survivor) if holder == "victim" else (survivor, victim)
            killed.send_signal(signal.SIGKILL)
            killed.wait(timeout=10)
            assert queue_state(conn)["started"] >= len(on_holder)  # its jobs still look started

            every = slow + fast + later
            ended = {j: poll_job(client, j, timeout=150) for j in every}
        for job_id, body in ended.items():
            assert body["status"] in ("finished", "failed"), (job_id, body)
            if body["status"] == "failed":  # only the dead worker's jobs may fail, and visibly so
                assert job_id in on_holder and body["error"]["code"] == "worker_lost", body
        assert all(ended[j]["status"] == "finished" for j in every if j not in on_holder)
        for job_id in on_holder:  # the survivor finished what the dead worker held (one retry)
            job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
            assert ended[job_id]["status"] == "failed" or job.worker_name != holder
        state = queue_state(conn)
        assert state["queued"] == 0 and state["started"] == 0
        assert other.poll() is None
        print(f"killed {holder} holding {len(on_holder)} job(s): "
              f"{sorted(ended[j]['status'] for j in on_holder)}; "
              f"the other {len(every) - len(on_holder)} job(s): "
              f"{sorted({ended[j]['status'] for j in every if j not in on_holder})}")
    finally:
        api.stop()


# -------------------------------------------------------------------- (b)
class Load:
    """Clients submitting small jobs back to back, recording every answer."""

    def __init__(self, api: LiveApi, clients: int = 2) -> None:
        self.api = api
        # (sent at, status, code, retry-after, answered at)
        self.answers: list[tuple[float, int, str, str | None, float]] = []
        self.accepted: dict[str, float] = {}
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        with self.api.client(timeout=15) as client:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    response = submit(client)
                except httpx.HTTPError as e:  # must not happen: the API answers, even without Redis
                    with self.lock:
                        self.answers.append((started, 0, type(e).__name__, None, time.monotonic()))
                    continue
                body = response.json()
                with self.lock:
                    code = "" if response.status_code < 300 else body["error"]["code"]
                    self.answers.append((started, response.status_code, code,
                                         response.headers.get("retry-after"), time.monotonic()))
                    if response.status_code in (200, 202):
                        self.accepted[body["job_id"]] = started
                time.sleep(0.05)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=20)

    def since(self, moment: float) -> list[tuple[float, int, str, str | None, float]]:
        with self.lock:
            return [a for a in self.answers if a[0] >= moment]


def test_redis_restarted_under_load_is_503_then_recovers_without_restarting_anything(
        own_redis: RedisServer, workers: WorkerPool, tmp_path: Path) -> None:
    worker = workers.start_tiny(own_redis.url, tmp_path / "checkpoints", max_batch=8, max_wait_ms=50,
                           job_heartbeat_ttl_s=10)
    api = LiveApi(api_settings(own_redis.url, tmp_path, redis_timeout_s=0.5)).start()
    try:
        with api.client() as client:
            wait_ready(client)
            with Load(api) as load:

                def finished_so_far() -> set[str]:
                    return {j for j in dict(load.accepted)
                            if client.get(f"/v1/jobs/{j}", headers=client_auth()).json()["status"] == "finished"}

                wait_for(lambda: len(finished_so_far()) >= 3, 60, "jobs finished under load", interval=0.3)
                finished_before = finished_so_far()
                before_outage = dict(load.accepted)

                down_at = time.monotonic()
                own_redis.stop()
                wait_for(lambda: len([a for a in load.since(down_at + 0.5) if a[1] == 503]) >= 4, 20,
                         "503s while Redis is gone")
                probe = client.get(f"/v1/jobs/{next(iter(before_outage))}", headers=client_auth())
                assert probe.status_code == 503 and probe.json()["error"]["code"] == "queue_unavailable"
                assert client.get("/readyz").status_code == 503
                assert client.get("/healthz").status_code == 200
                assert "safespot_redis_up 0.0" in client.get("/metrics").text
                time.sleep(1.0)

                up_at = time.monotonic()
                own_redis.start()  # same port, empty: what a restart without persistence gives
                wait_for(lambda: any(a[1] == 202 for a in load.since(up_at)), 30,
                         "the API to accept jobs again")
                recovered_at = min(a[0] for a in load.since(up_at) if a[1] == 202)
                recovered_in = min(a[4] for a in load.since(up_at) if a[1] == 202) - up_at
                wait_ready(client, timeout=30)  # the worker re-announced itself
                after = wait_for(lambda: [j for j, t in load.accepted.items() if t >= recovered_at][:4]
                                 if len([j for j, t in load.accepted.items() if t >= recovered_at]) >= 4
                                 else None, 30, "jobs accepted after the restart")
            for job_id in after:
                assert poll_job(client, job_id, timeout=60)["status"] == "finished"

            # Sent and answered while Redis was gone (a request sent just before it came back
            # may be answered 202 after the client's reconnect retry: that is right too).
            outage = [a for a in load.answers if down_at + 0.5 <= a[0] and a[4] < up_at]
            assert outage and all(a[1] == 503 and a[2] == "queue_unavailable" and a[3] for a in outage), \
                sorted({(a[1], a[2]) for a in outage})
            assert not [a for a in load.answers if (a[1] >= 500 and a[1] != 503) or a[1] == 0]
            # Jobs Redis held when it went away are gone with it (no persistence here), and
            # say so with a 404; the ones that had finished and been read were delivered.
            lost = [j for j in before_outage
                    if client.get(f"/v1/jobs/{j}", headers=client_auth()).status_code == 404]
            assert set(lost) == set(before_outage)  # the restarted Redis is empty
            print(f"accepted before the outage: {len(before_outage)}, finished before it: "
                  f"{len(finished_before)}, 503s during it: {len(outage)}, "
                  f"first 202 answered {recovered_in:.1f} s after Redis came back")
        assert worker.poll() is None, "the worker survived the outage without a restart"
    finally:
        api.stop()


# -------------------------------------------------------------------- (c)
def test_results_stay_retrievable_across_an_api_restart(
        own_redis: RedisServer, workers: WorkerPool, tmp_path: Path) -> None:
    workers.start_tiny(own_redis.url, tmp_path / "checkpoints", max_batch=4, max_wait_ms=100)
    env = service_env(own_redis.url, tmp_path)
    first_port, second_port = free_port(), free_port()
    first = serve_subprocess(env, first_port, tmp_path / "api-1.log")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{first_port}", timeout=30) as old:
            wait_ready(old)
            sizes = [(451, 300), (300, 451), (256, 256), (64, 48)]
            ids = [submit(old, preset="standard", size=size).json()["job_id"] for size in sizes]
            first.send_signal(signal.SIGKILL)  # a crash, not a graceful stop, while the jobs run
            first.wait(timeout=10)
        assert any(status != "finished" for status in
                   (Job.fetch(j, connection=own_redis.client(), serializer=JSONSerializer).get_status().value
                    for j in ids)), "the jobs had all ended before the API died: nothing was tested"
        second = serve_subprocess(env, second_port, tmp_path / "api-2.log")
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{second_port}", timeout=30) as new:
                for job_id, size in zip(ids, sizes, strict=True):
                    body = poll_job(new, job_id, timeout=90)
                    assert body["status"] == "finished", body
                    image = new.get(f"/v1/jobs/{job_id}/image", headers=client_auth())
                    assert image.status_code == 200
                    assert Image.open(io.BytesIO(image.content)).size == size
                fresh = submit(new, wait="30").json()
                assert fresh["status"] == "finished"
        finally:
            stop_process(second)
    finally:
        stop_process(first)

