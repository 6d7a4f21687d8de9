"""service.settings: environment parsing, defaults, and failing fast."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings, load_settings


def test_defaults_are_safe_and_documented():
    s = Settings()
    assert s.redis_url is None  # embedded single-process mode
    assert s.api_keys == frozenset() and s.admin_keys == frozenset()
    assert s.max_upload_bytes == 20 * 1024 * 1024 and s.max_pixels == 40_000_000
    assert s.max_queue == 256 and s.job_ttl_s == s.result_ttl_s == 3600
    assert s.max_eps("linf") == pytest.approx(16 / 255) and s.max_eps("l2") == 2.0
    assert s.default_eps("linf") is None  # the active checkpoint's own budget (the worker's)
    assert s.allowed_presets == {"standard", "fast", "paper"}
    assert s.webhook_allowed_hosts == frozenset()  # webhooks refused until allowed
    assert s.checkpoint_path == Path("data") / "checkpoints"


def test_one_budget_rule_for_filter_and_training_requests():
    s = Settings(max_eps_linf=8 / 255)
    assert s.budget_refusal("eps", 8 / 255, "linf") is None and s.budget_refusal("eps", None, "linf") is None
    assert s.budget_refusal("delta", 9 / 255, "linf") == "delta: 0.0352941 exceeds the linf limit 0.0313725"
    assert s.budget_refusal("eps", 2.0, "l2") is None and "l2 limit 2" in str(s.budget_refusal("eps", 2.1, "l2"))


def test_environment_with_comma_separated_lists(monkeypatch):
    monkeypatch.setenv("SAFESPOT_REDIS_URL", "redis://cache:6379/2")
    monkeypatch.setenv("SAFESPOT_API_KEYS", " key-one , key-two,,")
    monkeypatch.setenv("SAFESPOT_ADMIN_KEYS", "root-key")
    monkeypatch.setenv("SAFESPOT_WEBHOOK_ALLOWED_HOSTS", "Hooks.Example.com")
    monkeypatch.setenv("SAFESPOT_ALLOWED_PRESETS", "fast")
    monkeypatch.setenv("SAFESPOT_DEFAULT_PRESET", "fast")
    monkeypatch.setenv("SAFESPOT_CHECKPOINT_DIR", "/srv/ckpt")
    monkeypatch.setenv("SAFESPOT_LOG_LEVEL", "WARNING")
    s = Settings()
    assert s.redis_url == "redis://cache:6379/2"
    assert s.api_keys == {"key-one", "key-two"} and s.admin_keys == {"root-key"}
    assert s.webhook_allowed_hosts == {"hooks.example.com"}
    assert s.allowed_presets == {"fast"} and s.checkpoint_path == Path("/srv/ckpt")
    assert s.log_level == "warning"


def test_an_empty_redis_url_means_embedded_mode(monkeypatch):
    monkeypatch.setenv("SAFESPOT_REDIS_URL", "")
    assert Settings().redis_url is None


@pytest.mark.parametrize(("env", "value", "needle"), [
    ("SAFESPOT_REDIS_URL", "http://redis:6379", "SAFESPOT_REDIS_URL"),
    ("SAFESPOT_MAX_QUEUE", "0", "SAFESPOT_MAX_QUEUE"),
    ("SAFESPOT_MAX_UPLOAD_BYTES", "lots", "SAFESPOT_MAX_UPLOAD_BYTES"),
    ("SAFESPOT_DEFAULT_PRESET", "turbo", "default_preset"),
    ("SAFESPOT_ALLOWED_PRESETS", "standard,warp", "allowed_presets"),
    ("SAFESPOT_DEFAULT_EPS_LINF", "0.5", "default_eps_linf"),
    ("SAFESPOT_LOG_LEVEL", "chatty", "SAFESPOT_LOG_LEVEL"),
])
def test_invalid_configuration_fails_fast_with_the_variable_named(monkeypatch, env, value, needle):
    monkeypatch.setenv(env, value)
    with pytest.raises(SystemExit) as stopped:
        load_settings()
    assert "invalid configuration" in str(stopped.value) and needle in str(stopped.value)


def test_keys_with_whitespace_are_refused():
    with pytest.raises(ValidationError):
        Settings(api_keys=["has space"])


def test_settings_are_immutable_once_built():
    s = Settings()
    with pytest.raises(ValidationError):
        s.max_queue = 5  # type: ignore[misc]


def test_weak_setups_are_logged(caplog):
    Settings(api_keys="short").warn_about_weak_setup()
    text = caplog.text
    assert "admin routes are disabled" in text and "shorter than" in text
