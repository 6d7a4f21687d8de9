"""schemathesis against the OpenAPI document of the live API on a real Redis.

tests/service/test_service_openapi.py runs schemathesis against the app on an
in-memory queue; this run sends its generated requests over a real socket to
uvicorn, with the Redis backend and a real worker behind it, so the Redis
paths (enqueue, job lookup, checkpoint registry, training queue) are fuzzed
too.  Every answer must conform to the schema (status documented, body of the
documented shape), no answer may be a 5xx, and every error must be JSON of
the one error shape.  Bounded: SCHEMATHESIS_EXAMPLES per operation (default 15).
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.reliability.conftest import ADMIN_KEY, CLIENT_KEY, Stack

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore")]

EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "15"))


def _document() -> dict:
    """The same OpenAPI document the live API serves (built without connecting anywhere)."""
    from service.app import create_app
    from service.settings import Settings

    return create_app(Settings(redis_url="redis://127.0.0.1:1/0")).openapi()


SCHEMA = schemathesis.openapi.from_dict(_document())


FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                       HealthCheck.function_scoped_fixture])


def check(case, key: str, stack: Stack) -> None:
    auth = {"Authorization": f"Bearer {key}"}
    response = case.call(base_url=stack.api.url, headers=auth, timeout=30)
    assert response.status_code < 500, f"{case.method} {case.path}: {response.status_code} {response.text[:300]}"
    # Not "positive data accepted": a schema cannot say which bytes are a valid
    # image or checkpoint, so schema-valid uploads are rightly refused (400/415).
    case.validate_response(response, headers=auth, excluded_checks=[positive_data_acceptance])
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"} and {"code", "message"} <= set(body["error"])


@SCHEMA.parametrize()
@FUZZ
def test_the_live_api_conforms_to_its_schema_with_an_admin_key(case, stack: Stack):
    """Admin requests get past auth everywhere: the routes' own validation is fuzzed."""
    check(case, ADMIN_KEY, stack)


@SCHEMA.parametrize()
@FUZZ
def test_the_live_api_conforms_to_its_schema_with_a_client_key(case, stack: Stack):
    """Client requests meet 403 on admin routes: documented and in the error shape."""
    check(case, CLIENT_KEY, stack)


def test_the_fuzzing_left_no_job_stuck(stack: Stack) -> None:
    """Whatever the fuzzer managed to enqueue was taken by the worker (none waits
    forever, none stays started)."""
    from tests.reliability.conftest import wait_for

    wait_for(lambda: stack.queue_state()["queued"] == 0 and stack.queue_state()["started"] == 0,
             60, "the filter queue to drain")
