"""The options of a filter request, checked against the configured bounds.

Form fields arrive as strings; this module turns them into the typed values
of `protocol.FilterRequest` or raises `Validation` (422) with a message that
says which field is wrong and what is allowed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import cast

import worker.protocol as protocol
from service.errors import Validation
from service.settings import Settings
from worker.protocol import ErrorCode, Norm, Preset, Reencode

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


def parse_budget(name: str, raw: str | None) -> float | None:
    """A budget as a float ("0.0314") or a fraction of 255 ("8/255"); None when blank."""
    if raw is None or not raw.strip():
        return None
    try:
        return protocol.parse_budget(raw)
    except ValueError as e:
        raise Validation(f"{name}: {e}") from None


def parse_reencode(raw: str | None) -> Reencode | None:
    """`jpeg:85` -> {"format": "jpeg", "quality": 85}; empty or "none" -> None."""
    if raw is None or raw.strip().lower() in ("", "none", "png"):
        return None
    match = _REENCODE.match(raw.strip().lower())
    if not match or not 1 <= int(match.group(2)) <= 100:
        raise Validation(f"reencode: expected 'jpeg:<quality 1-100>' (e.g. jpeg:85), got {raw!r}")
    return Reencode(format="jpeg", quality=int(match.group(2)))


def check_webhook(url: str | None, settings: Settings) -> str | None:
    """The URL when `protocol.webhook_refusal` allows it (the worker checks the same rule)."""
    if url is None or not url.strip():
        return None
    url = url.strip()
    if len(url) > MAX_WEBHOOK_URL_CHARS:
        raise Validation("webhook_url: too long")
    if not settings.webhook_allowed_hosts:
        raise Validation("webhook_url: webhooks are disabled on this server",
                         code=ErrorCode.WEBHOOKS_DISABLED)
    refusal = protocol.webhook_refusal(url, settings.webhook_allowed_hosts)
    if refusal is not None:
        raise Validation(f"webhook_url: {refusal}")
    return url


def parse_filter_options(settings: Settings, *, preset: str | None, norm: str | None,
                         eps: str | None, delta: str | None, reencode: str | None,
                         webhook_url: str | None, wait: float | None) -> FilterOptions:
    """Combine the request's fields with the configured defaults and bounds."""
    preset = (preset or settings.default_preset).strip().lower()
    if preset not in settings.allowed_presets:
        raise Validation(f"preset: {preset!r} is not allowed; allowed: {sorted(settings.allowed_presets)}")
    norm = (norm or settings.default_norm).strip().lower()
    if norm not in protocol.NORMS:
        raise Validation(f"norm: expected one of {list(protocol.NORMS)}, got {norm!r}")
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
