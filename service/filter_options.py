"""The options of a filter request, checked against the configured bounds.

Form fields arrive as strings; this module turns them into the typed values
of `protocol.FilterRequest` or raises `Validation` (422) with a message that
says which field is wrong and what is allowed.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import cast
from urllib.parse import urlsplit

from service.errors import Validation
from service.settings import Settings
from worker.protocol import Norm, Preset, Reencode

_REENCODE = re.compile(r"^(jpeg|jpg):(\d{1,3})$")
MAX_WEBHOOK_URL_CHARS = 2048


@dataclass(frozen=True)
class FilterOptions:
    preset: Preset
    norm: Norm
    eps: float  # pixel units, images in [0, 1]
    delta: float
    reencode: Reencode | None
    webhook_url: str | None
    wait_s: float


def parse_budget(name: str, raw: str | float | None) -> float | None:
    """A budget as a float ("0.0314") or a fraction of 255 ("8/255")."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    try:
        value = float(Fraction(str(raw).strip())) if "/" in str(raw) else float(raw)
    except (ValueError, ZeroDivisionError):
        raise Validation(f"{name}: expected a number such as 0.0314 or 8/255, got {raw!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise Validation(f"{name}: must be a positive number, got {raw!r}")
    return value


def parse_reencode(raw: str | None) -> Reencode | None:
    """`jpeg:85` -> {"format": "jpeg", "quality": 85}; empty or "none" -> None."""
    if raw is None or raw.strip().lower() in ("", "none", "png"):
        return None
    match = _REENCODE.match(raw.strip().lower())
    if not match or not 1 <= int(match.group(2)) <= 100:
        raise Validation(f"reencode: expected 'jpeg:<quality 1-100>' (e.g. jpeg:85), got {raw!r}")
    return Reencode(format="jpeg", quality=int(match.group(2)))


def check_webhook(url: str | None, settings: Settings) -> str | None:
    """Allow only http(s) URLs whose host is listed in `webhook_allowed_hosts`.

    An allow-list (not a deny-list) because the worker calls this URL from
    inside the cluster: anything else would let a client make it POST to
    internal services (SSRF).  Literal IP addresses must be listed explicitly."""
    if url is None or not url.strip():
        return None
    url = url.strip()
    if len(url) > MAX_WEBHOOK_URL_CHARS:
        raise Validation("webhook_url: too long")
    if not settings.webhook_allowed_hosts:
        raise Validation("webhook_url: webhooks are disabled on this server",
                         code="webhooks_disabled")
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host or parts.username or parts.password:
        raise Validation("webhook_url: expected http(s)://host/path without credentials")
    if host not in settings.webhook_allowed_hosts:
        kind = "address" if _is_ip(host) else "host"
        raise Validation(f"webhook_url: {kind} {host!r} is not in SAFESPOT_WEBHOOK_ALLOWED_HOSTS")
    return url


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_filter_options(settings: Settings, *, preset: str | None, norm: str | None,
                         eps: str | None, delta: str | None, reencode: str | None,
                         webhook_url: str | None, wait: float | None) -> FilterOptions:
    """Combine the request's fields with the configured defaults and bounds."""
    preset = (preset or settings.default_preset).strip().lower()
    if preset not in settings.allowed_presets:
        raise Validation(f"preset: {preset!r} is not allowed; allowed: {sorted(settings.allowed_presets)}")
    norm = (norm or settings.default_norm).strip().lower()
    if norm not in ("linf", "l2"):
        raise Validation(f"norm: expected 'linf' or 'l2', got {norm!r}")
    limit = settings.max_eps(norm)
    eps_value = parse_budget("eps", eps) or settings.default_eps(norm)
    delta_value = parse_budget("delta", delta) or eps_value
    for name, value in (("eps", eps_value), ("delta", delta_value)):
        if value > limit + 1e-12:
            raise Validation(f"{name}: {value:.6g} exceeds the {norm} limit {limit:.6g}")
    wait_s = 0.0 if wait is None else float(wait)
    if not math.isfinite(wait_s) or wait_s < 0 or wait_s > settings.max_wait_s:
        raise Validation(f"wait: must be between 0 and {settings.max_wait_s:g} seconds")
    return FilterOptions(preset=cast(Preset, preset), norm=cast(Norm, norm), eps=eps_value,
                         delta=delta_value, reencode=parse_reencode(reencode),
                         webhook_url=check_webhook(webhook_url, settings), wait_s=wait_s)
