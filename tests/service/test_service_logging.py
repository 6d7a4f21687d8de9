"""Structured logs: JSON lines carrying the job id of the request."""

from __future__ import annotations

import json
import logging

from service_testkit import client_auth, photo_bytes

from worker.logs import JsonFormatter


def test_access_and_app_logs_are_json_with_the_job_id(client, caplog):
    caplog.set_level(logging.INFO)
    job_id = client.post("/v1/filter", headers=client_auth(),
                         files={"image": ("a.jpg", photo_bytes(), "image/jpeg")}).json()["job_id"]
    formatter = JsonFormatter()
    lines = [json.loads(formatter.format(r)) for r in caplog.records
             if r.name.startswith("safespot")]
    queued = next(line for line in lines if line["message"] == "filter job queued")
    assert queued["job_id"] == job_id and queued["width"] == 451
    access = next(line for line in lines if line["logger"] == "safespot.access")
    assert access["route"] == "/v1/filter" and access["status"] == 202
    assert access["job_id"] == job_id and access["duration_ms"] >= 0


def test_records_without_a_job_have_no_job_id():
    record = logging.LogRecord("safespot.x", logging.INFO, __file__, 1, "hello %s", ("world",), None)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "hello world" and "job_id" not in line and line["level"] == "info"


def test_the_request_context_adds_the_job_id():
    from service.log import REQUEST_JOB_ID, JobIdFilter

    token = REQUEST_JOB_ID.set("j1")
    record = logging.LogRecord("safespot.x", logging.INFO, __file__, 1, "queued", (), None)
    assert JobIdFilter().filter(record)
    REQUEST_JOB_ID.reset(token)
    assert json.loads(JsonFormatter().format(record))["job_id"] == "j1"
