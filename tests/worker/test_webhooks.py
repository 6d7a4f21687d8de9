"""Webhook allowlist and sending: never blocks the caller, retries server errors, no redirects."""

from __future__ import annotations

import pytest

from tests.worker.conftest import wait_for
from worker.protocol import webhook_refusal
from worker.webhooks import WebhookSender, payload


@pytest.mark.parametrize(("url", "allowed", "ok"), [
    ("https://hooks.example.com/x", ["hooks.example.com"], True),
    ("https://HOOKS.example.com./x", ["hooks.example.com"], True),
    ("https://a.b.example.com/x", ["*.example.com"], False),  # exact hosts only, as the API checks
    ("https://example.com/x", ["*.example.com"], False),
    ("https://evil.com/x", ["hooks.example.com"], False),
    ("https://hooks.example.com.evil.com/x", ["hooks.example.com"], False),
    ("https://user:pw@hooks.example.com/x", ["hooks.example.com"], False),
    ("ftp://hooks.example.com/x", ["hooks.example.com"], False),
    ("http://anything.org/", ["*"], False),
    ("http://anything.org/", [], False),
    ("not a url", ["*"], False),
])
def test_host_allowlist(url: str, allowed: list[str], ok: bool) -> None:
    assert (webhook_refusal(url, allowed) is None) is ok


def test_server_errors_are_retried_and_redirects_not_followed(hooks) -> None:
    sender = WebhookSender(["127.0.0.1"], timeout_s=2, retries=2, backoff_s=0.01)
    hooks.answers[:] = [503, 500]  # two failures, then 200
    assert sender.submit(hooks.url, payload("j1", "finished", result={"x": 1}))
    wait_for(lambda: len(hooks.received) == 3, 10, "three attempts")
    hooks.answers[:] = [302]
    assert sender.submit(hooks.url, payload("j2", "failed", error={"code": "c", "message": "m"}))
    sender.stop()
    assert [b["job_id"] for b in hooks.received] == ["j1", "j1", "j1", "j2"]  # the redirect was not followed
    assert hooks.received[-1] == {"job_id": "j2", "status": "failed", "error": {"code": "c", "message": "m"}}
    assert not sender.submit("http://elsewhere.org/", payload("j3", "finished"))
    assert not sender.submit(None, payload("j4", "finished"))
