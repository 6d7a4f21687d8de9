"""service.errors: the hierarchy, the one mapping to HTTP, foreign backend errors."""

from __future__ import annotations

import pytest

from service import errors


@pytest.mark.parametrize(("cls", "status"), [
    (errors.BadImage, 400), (errors.Unauthorized, 401),
    (errors.Forbidden, 403), (errors.NotFound, 404), (errors.Conflict, 409),
    (errors.PayloadTooLarge, 413), (errors.UnsupportedMediaType, 415), (errors.Validation, 422),
    (errors.NotReady, 503),
])
def test_each_error_has_a_status_and_a_stable_code(cls, status):
    error = cls("something went wrong")
    assert isinstance(error, errors.SafeSpotError)
    assert error.status == status and error.code.isidentifier() and error.message


def test_queue_full_always_says_when_to_retry():
    assert errors.QueueFull("full", retry_after_s=0).headers["Retry-After"] == "1"
    assert errors.QueueFull("full", retry_after_s=42.7).headers["Retry-After"] == "42"  # type: ignore[arg-type]
    assert errors.NotReady("down").headers["Retry-After"] == "5"
    assert errors.Unauthorized("who").headers["WWW-Authenticate"] == "Bearer"


class ForeignQueueFull(Exception):
    code = "queue_full"
    retry_after_s = 12


@pytest.mark.parametrize(("exc", "cls"), [
    (KeyError("ckpt"), errors.NotFound), (LookupError("x"), errors.NotFound),
    (ValueError("is active"), errors.Conflict), (ConnectionError("refused"), errors.NotReady),
    (TimeoutError("slow"), errors.NotReady), (ForeignQueueFull("full"), errors.QueueFull),
    (errors.Forbidden("mine"), errors.Forbidden),
])
def test_backend_exceptions_are_translated(exc, cls):
    translated = errors.from_backend(exc)
    assert isinstance(translated, cls)
    if cls is errors.QueueFull:
        assert translated.headers["Retry-After"] == "12"


def test_unknown_backend_exceptions_stay_bugs():
    with pytest.raises(ZeroDivisionError):
        errors.from_backend(ZeroDivisionError("bug"))


def test_unexpected_exceptions_become_a_json_500(settings):
    from fastapi.testclient import TestClient
    from service_testkit import FakeJobBackend, client_auth

    from service.app import create_app

    class Buggy(FakeJobBackend):
        def get_job(self, job_id):
            return 1 / 0

    with TestClient(create_app(settings, Buggy()), raise_server_exceptions=False) as client:
        response = client.get("/v1/jobs/" + "a" * 32, headers=client_auth())
    assert response.status_code == 500
    assert response.json() == {"error": {"code": "internal_error",
                                         "message": "an unexpected error occurred"}}


def test_the_worker_errors_keep_their_meaning_over_http():
    from worker.errors import CheckpointNotFoundError, CheckpointStateError, QueueFullError

    assert errors.from_backend(CheckpointNotFoundError("gone")).status == 404
    assert errors.from_backend(CheckpointStateError("active")).status == 409
    full = errors.from_backend(QueueFullError("full", retry_after_s=7))
    assert full.status == 429 and full.code == "queue_full" and full.headers["Retry-After"] == "7"
    assert errors.BadImage("empty", code=errors.ErrorCode.EMPTY_FILE).status == 400  # the class's status
