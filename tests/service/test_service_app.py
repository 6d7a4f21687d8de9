"""service.app: wiring rules of create_app."""

from __future__ import annotations

import pytest
from service_testkit import FakeJobBackend

from service.app import DEFAULT_BODY_BYTES, body_limit_for, create_app
from service.settings import Settings


def test_without_backend_or_redis_there_is_nothing_to_serve():
    with pytest.raises(ValueError, match="SAFESPOT_REDIS_URL"):
        create_app(Settings())


def test_state_holds_one_settings_backend_and_metrics(settings):
    backend = FakeJobBackend()
    app = create_app(settings, backend)
    assert app.state.settings is settings and app.state.backend is backend
    assert app.state.metrics.registry is not None


def test_body_limits_follow_the_route(settings):
    limit = body_limit_for(settings)
    assert limit("POST", "/v1/filter") > settings.max_upload_bytes
    assert limit("POST", "/api/v1/filter/") == limit("POST", "/v1/filter")  # behind a proxy prefix
    assert limit("POST", "/v1/checkpoints") > settings.max_checkpoint_bytes
    assert limit("POST", "/v1/training-jobs") == DEFAULT_BODY_BYTES
    assert limit("GET", "/v1/filter") == DEFAULT_BODY_BYTES
