"""Configuration of the API process, from `SAFESPOT_*` environment variables.

One `Settings` object per process: the CLI builds it, `create_app` keeps it
on `app.state` and routes receive it as a dependency.  Nothing here is a
module-level global.  Invalid values stop the process at start-up with a
message that names the variable (fail fast, not on the first request).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIB = 1024 * 1024
KNOWN_PRESETS = ("standard", "fast", "paper")  # the presets of safespot.SearchConfig
WEAK_KEY_CHARS = 16  # keys shorter than this are accepted with a warning

logger = logging.getLogger("safespot.service")

KeySet = Annotated[frozenset[str], NoDecode]  # parsed from "a,b,c" by _split_csv
NameSet = Annotated[frozenset[str], NoDecode]


def _split_csv(value: Any) -> Any:
    """Accept "a, b,c" from the environment as well as any iterable in code."""
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset(part.strip() for part in value.split(",") if part.strip())
    return frozenset(value)


class Settings(BaseSettings):
    """Everything the API needs to know; see each field's description."""

    model_config = SettingsConfigDict(env_prefix="SAFESPOT_", extra="ignore", frozen=True)

    # --- where things live
    redis_url: str | None = Field(
        None, description="redis://host:port/db; unset runs the embedded single-process mode")
    data_dir: Path = Field(Path("data"), description="data sets and other files workers read")
    checkpoint_dir: Path | None = Field(
        None, description="uploaded checkpoints (shared with workers); default DATA_DIR/checkpoints")

    # --- auth: comma-separated bearer keys
    api_keys: KeySet = Field(
        frozenset(), description="client keys; EMPTY MEANS CLIENT ROUTES ARE OPEN (no auth)")
    admin_keys: KeySet = Field(
        frozenset(), description="admin keys; empty means admin routes are always refused")

    # --- upload limits
    max_upload_bytes: int = Field(20 * MIB, gt=0, description="largest accepted image file")
    max_pixels: int = Field(40_000_000, gt=0, description="largest accepted width*height")
    max_checkpoint_bytes: int = Field(512 * MIB, gt=0, description="largest checkpoint upload")
    max_concurrent_decodes: int = Field(
        4, ge=1, description="uploads decoded at once (each may take ~4 bytes x max_pixels)")

    # --- the queue
    max_queue: int = Field(256, gt=0, description="queued filter jobs beyond which 429 is answered")
    job_ttl_s: int = Field(3600, gt=0, description="how long a queued job may wait before it expires")
    result_ttl_s: int = Field(3600, gt=0, description="how long results and output images are kept")
    job_timeout_s: int = Field(600, gt=0, description="longest a worker may spend on one filter job")
    job_retries: int = Field(1, ge=0, le=5, description="re-runs of a job whose worker died")
    vet_timeout_s: int = Field(1800, gt=0, description="longest checkpoint validation + vetting")
    train_timeout_s: int = Field(24 * 3600, gt=0, description="longest training run")
    seconds_per_job: float = Field(
        2.0, gt=0, description="rough worker time per image, used for Retry-After estimates")
    max_wait_s: float = Field(60.0, ge=0, description="largest `wait` a client may ask for")
    redis_timeout_s: float = Field(2.0, gt=0, description="socket timeout towards Redis")

    # --- threat model bounds and defaults (pixel units, images in [0, 1])
    max_eps_linf: float = Field(16 / 255, gt=0, le=1)
    max_eps_l2: float = Field(2.0, gt=0)
    default_norm: Literal["linf", "l2"] = "linf"
    default_eps_linf: float = Field(8 / 255, gt=0)
    default_eps_l2: float = Field(0.5, gt=0)
    default_preset: str = "standard"
    allowed_presets: NameSet = Field(frozenset(KNOWN_PRESETS), description="presets clients may ask for")

    # --- outbound calls and browsers
    webhook_allowed_hosts: NameSet = Field(
        frozenset(), description="hosts webhooks may target; empty refuses every webhook_url")
    cors_origins: NameSet = Field(frozenset(), description="origins allowed by CORS; empty: no CORS")

    log_level: Literal["debug", "info", "warning", "error"] = "info"

    _split = field_validator(
        "api_keys", "admin_keys", "allowed_presets", "webhook_allowed_hosts", "cors_origins",
        mode="before")(_split_csv)

    @field_validator("redis_url", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("webhook_allowed_hosts")
    @classmethod
    def _lower_hosts(cls, value: frozenset[str]) -> frozenset[str]:
        return frozenset(host.lower() for host in value)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        unknown = self.allowed_presets - set(KNOWN_PRESETS)
        if unknown:
            raise ValueError(f"allowed_presets: unknown {sorted(unknown)}; known: {list(KNOWN_PRESETS)}")
        if not self.allowed_presets:
            raise ValueError("allowed_presets: at least one preset must be allowed")
        if self.default_preset not in self.allowed_presets:
            raise ValueError(f"default_preset {self.default_preset!r} is not in allowed_presets")
        if self.default_eps_linf > self.max_eps_linf:
            raise ValueError("default_eps_linf exceeds max_eps_linf")
        if self.default_eps_l2 > self.max_eps_l2:
            raise ValueError("default_eps_l2 exceeds max_eps_l2")
        for key in self.api_keys | self.admin_keys:
            if any(ch.isspace() for ch in key):
                raise ValueError("api_keys/admin_keys: a key contains whitespace")
        return self

    # ------------------------------------------------------------------ helpers
    @property
    def checkpoints_path(self) -> Path:
        """Where uploaded checkpoints go: `checkpoint_dir`, else DATA_DIR/checkpoints."""
        return self.checkpoint_dir if self.checkpoint_dir is not None else self.data_dir / "checkpoints"

    def max_eps(self, norm: str) -> float:
        return self.max_eps_linf if norm == "linf" else self.max_eps_l2

    def default_eps(self, norm: str) -> float:
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
