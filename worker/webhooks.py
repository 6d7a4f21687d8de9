"""Job-end webhooks, sent from a background thread so the batch loop never waits on them.

The API checks a webhook URL against SAFESPOT_WEBHOOK_ALLOWED_HOSTS when it
accepts a request; the worker checks the same rule
(:func:`worker.protocol.webhook_refusal`) again before sending (defence in
depth: a job could have been enqueued by something else).  Redirects are not
followed (a redirect could lead off the allowlist).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Collection
from typing import Any, TypeGuard

from worker.logs import fields
from worker.protocol import webhook_refusal
from worker.settings import SharedSettings

log = logging.getLogger("safespot.worker.webhooks")

MAX_PENDING = 1000  # webhooks waiting to be sent; beyond that new ones are dropped (and logged)


def payload(job_id: str, status: str, result: Any = None, error: dict[str, str] | None = None) -> dict[str, Any]:
    """A webhook's body: the job's error when it failed, else its result."""
    return {"job_id": job_id, "status": status, **({"result": result} if error is None else {"error": error})}


class WebhookSender:
    """A daemon thread POSTing JSON bodies, with a timeout and a few retries each."""

    def __init__(self, allowed_hosts: Collection[str], timeout_s: float = 5.0, retries: int = 2,
                 backoff_s: float = 0.5) -> None:
        self.allowed_hosts = list(allowed_hosts)
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._queue: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue(MAX_PENDING)
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(cls, settings: SharedSettings) -> WebhookSender:
        return cls(settings.webhook_allowed_hosts, settings.webhook_timeout_s, settings.webhook_retries)

    def start(self) -> WebhookSender:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="safespot-webhooks", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (within ``timeout_s``), then end the thread."""
        if self._thread is None:
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout_s)
        self._thread.join(timeout_s)
        self._thread = None

    def submit(self, url: str | None, body: dict[str, Any]) -> bool:
        """Queue a webhook; False (logged) when the host is not allowed or the queue is full."""
        if not self._allowed(url, body):
            return False
        try:
            self._queue.put_nowait((url, body))
        except queue.Full:
            log.error("webhook queue full; dropped", extra=fields(job_id=body.get("job_id")))
            return False
        self.start()
        return True

    def send_now(self, url: str | None, body: dict[str, Any]) -> None:
        """Send in the calling thread (for a process that may end right after the job)."""
        if not self._allowed(url, body):
            return
        import httpx

        with httpx.Client(timeout=self.timeout_s, follow_redirects=False) as client:
            self._send(client, url, body)

    def _allowed(self, url: str | None, body: dict[str, Any]) -> TypeGuard[str]:
        """A webhook is wanted (``url``) and its host allowed (else logged)."""
        refusal = webhook_refusal(url, self.allowed_hosts) if url else None
        if refusal is not None:
            log.warning("webhook not sent: %s", refusal, extra=fields(job_id=body.get("job_id")))
        return bool(url) and refusal is None

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=self.timeout_s, follow_redirects=False) as client:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                self._send(client, *item)

    def _send(self, client: Any, url: str, body: dict[str, Any]) -> None:
        job_id = body.get("job_id")
        for attempt in range(self.retries + 1):
            try:
                response = client.post(url, json=body)
                if response.status_code < 500:
                    level = logging.INFO if response.is_success else logging.WARNING
                    log.log(level, "webhook answered %d", response.status_code,
                            extra=fields(job_id=job_id, attempt=attempt + 1))
                    return  # 4xx will not get better by retrying
            except Exception as e:  # network errors: retry
                log.warning("webhook failed: %s", type(e).__name__, extra=fields(job_id=job_id, attempt=attempt + 1))
            if attempt < self.retries:
                time.sleep(self.backoff_s * (2**attempt))
        log.error("webhook gave up", extra=fields(job_id=job_id))
