"""Configuration of the API process, from `SAFESPOT_*` environment variables.

One `Settings` object per process: the CLI builds it, `create_app` keeps it
on `app.state` and routes receive it as a dependency.  Nothing here is a
module-level global.  What the workers read too (paths, Redis, limits,
webhooks) is declared once in `worker.settings.SharedSettings`.  Invalid
values stop the process at start-up with a message that names the variable
(fail fast, not on the first request).
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from worker.protocol import PRESETS, Norm
from worker.settings import MIB, NameSet, SharedSettings, split_csv

WEAK_KEY_CHARS = 16  # keys shorter than this are accepted with a warning

logger = logging.getLogger("safespot.service")

class Settings(SharedSettings):
    """Everything the API needs to know; see each field's description."""

    model_config = SettingsConfigDict(env_prefix="SAFESPOT_", extra="ignore", frozen=True)

    # --- auth: comma-separated bearer keys
    api_keys: NameSet = Field(
        frozenset(), description="client keys; EMPTY MEANS CLIENT ROUTES ARE OPEN (no auth)")
    admin_keys: NameSet = Field(
        frozenset(), description="admin keys; empty means admin routes are always refused")

    # --- upload limits
    max_upload_bytes: int = Field(20 * MIB, gt=0, description="largest accepted image file")
    max_pixels: int = Field(40_000_000, gt=0, description="largest accepted width*height")
    max_concurrent_decodes: int = Field(
        4, ge=1, description="uploads decoded at once (each may take ~4 bytes x max_pixels)")

    # --- the queue
    job_retries: int = Field(1, ge=0, le=5, description="re-runs of a job whose worker died")
    vet_timeout_s: int = Field(1800, gt=0, description="longest checkpoint validation + vetting")
    train_timeout_s: int = Field(24 * 3600, gt=0, description="longest training run")
    seconds_per_job: float = Field(
        2.0, gt=0, description="rough worker time per image, used for Retry-After estimates")
    max_wait_s: float = Field(60.0, ge=0, description="largest `wait` a client may ask for")

    # --- threat model bounds and defaults (pixel units, images in [0, 1])
    max_eps_linf: float = Field(16 / 255, gt=0, le=1)
    max_eps_l2: float = Field(2.0, gt=0)
    default_norm: Norm = "linf"
    # None: a filter job takes the budget the active checkpoint was trained for (4/255 for the
    # shipped photo model), else the paper's (8/255, 0.5); set them to force one budget for all.
    default_eps_linf: float | None = Field(None, gt=0)
    default_eps_l2: float | None = Field(None, gt=0)
    default_preset: str = "standard"
    allowed_presets: NameSet = Field(frozenset(PRESETS), description="presets clients may ask for")

    # --- browsers
    cors_origins: NameSet = Field(frozenset(), description="origins allowed by CORS; empty: no CORS")

    _split = field_validator(
        "api_keys", "admin_keys", "allowed_presets", "cors_origins", mode="before")(split_csv)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        unknown = self.allowed_presets - set(PRESETS)
        if unknown:
            raise ValueError(f"allowed_presets: unknown {sorted(unknown)}; known: {list(PRESETS)}")
        if not self.allowed_presets:
            raise ValueError("allowed_presets: at least one preset must be allowed")
        if self.default_preset not in self.allowed_presets:
            raise ValueError(f"default_preset {self.default_preset!r} is not in allowed_presets")
        if self.default_eps_linf is not None and self.default_eps_linf > self.max_eps_linf:
            raise ValueError("default_eps_linf exceeds max_eps_linf")
        if self.default_eps_l2 is not None and self.default_eps_l2 > self.max_eps_l2:
            raise ValueError("default_eps_l2 exceeds max_eps_l2")
        for key in self.api_keys | self.admin_keys:
            if any(ch.isspace() for ch in key):
                raise ValueError("api_keys/admin_keys: a key contains whitespace")
        return self

    # ------------------------------------------------------------------ helpers
    def max_eps(self, norm: str) -> float:
        return self.max_eps_linf if norm == "linf" else self.max_eps_l2

    def budget_refusal(self, name: str, value: float | None, norm: str) -> str | None:
        """Why a budget (eps, delta) is refused under `norm`'s limit, or None when it is not."""
        limit = self.max_eps(norm)
        if value is not None and value > limit + 1e-12:
            return f"{name}: {value:.6g} exceeds the {norm} limit {limit:.6g}"
        return None

    def default_eps(self, norm: str) -> float | None:
        """The configured budget of a filter job that names none (None: the checkpoint's own)."""
        return self.default_eps_linf if norm == "linf" else self.default_eps_l2

    def warn_about_weak_setup(self) -> None:
        """Log (once, at start-up) configurations that work but are risky."""
        if not self.api_keys:
            logger.warning("SAFESPOT_API_KEYS is empty: client routes are open to anyone")
        if not self.admin_keys:
            logger.warning("SAFESPOT_ADMIN_KEYS is empty: admin routes are disabled")
        if any(len(k) < WEAK_KEY_CHARS for k in self.api_keys | self.admin_keys):
            logger.warning("some API keys are shorter than %d characters", WEAK_KEY_CHARS)


def load_settings(**overrides: Any) -> Settings:
    """Read the environment (plus explicit overrides); raise SystemExit with a
    readable message when the configuration is invalid."""
    from pydantic import ValidationError

    try:
        return Settings(**overrides)
    except ValidationError as e:
        lines = [f"  SAFESPOT_{'_'.join(str(p) for p in err['loc']).upper() or '(settings)'}: {err['msg']}"
                 for err in e.errors()]
        raise SystemExit("invalid configuration:\n" + "\n".join(lines)) from None
