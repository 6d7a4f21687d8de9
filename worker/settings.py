"""Settings: environment variables with the ``SAFESPOT_`` prefix.

:class:`SharedSettings` names what the API and the workers both read (paths,
Redis, batching, limits, webhooks); the API's ``service.settings.Settings``
and :class:`WorkerSettings` extend it.  One object per process, built by the
entry point and passed down; nothing reads the environment at import time.
Lists (queues, webhook hosts) are comma-separated in the environment:
``SAFESPOT_QUEUES=safespot-filter,safespot-admin``.

Standard library, pydantic and redis only: no torch, so ``--help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from worker.protocol import ADMIN_QUEUE, FILTER_QUEUE

if TYPE_CHECKING:
    import redis

MIB = 1024 * 1024
NameSet = Annotated[frozenset[str], NoDecode]  # parsed from "a,b,c" by split_csv


def split_csv(value: Any) -> Any:
    """Accept "a, b,c" from the environment as well as any iterable in code."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return () if value is None else value


class SharedSettings(BaseSettings):
    """What the API and the workers must agree on; see each field's description."""

    model_config = SettingsConfigDict(env_prefix="SAFESPOT_", extra="ignore")

    # --- where things live
    redis_url: str | None = Field(
        default=None, description="redis://host:port/db; unset runs the embedded single-process mode")
    redis_timeout_s: float = Field(default=2.0, gt=0, description="socket timeout towards Redis")
    data_dir: Path = Field(default=Path("data"), description="data sets and other files workers read")
    checkpoint_dir: Path | None = Field(
        default=None, description="uploaded checkpoints (shared with workers); default DATA_DIR/checkpoints")
    default_model: str = Field(default="default", description="shipped name or .safetensors path, used when none is active")

    # --- batching
    max_batch: int = Field(default=64, ge=1, le=4096, description="images searched together")
    max_wait_ms: int = Field(default=50, ge=0, le=60_000, description="after the first job, wait this long for more")
    # The search keeps about ten float32 copies of each RGB image: roughly 120 bytes per canvas pixel.
    max_batch_pixels: int = Field(default=32 * MIB, ge=1, description="canvas pixels per search batch (images x H x W)")
    device: str | None = Field(default=None, description="cpu, cuda, cuda:1 (default: cuda when available)")
    threads: int | None = Field(default=None, ge=1, description="torch CPU threads")
    progress_interval_s: float = Field(default=0.5, ge=0, description="progress writes, at most this often")

    # --- limits of the queue and of checkpoints
    max_queue: int = Field(default=256, gt=0, description="queued filter jobs beyond which 429 is answered")
    job_ttl_s: int = Field(default=3600, gt=0, description="how long a queued job may wait before it expires")
    job_timeout_s: int = Field(default=600, gt=0, description="longest a worker may spend on one filter job")
    result_ttl_s: int = Field(default=3600, gt=0, description="how long results and output images are kept")
    max_checkpoint_bytes: int = Field(default=512 * MIB, gt=0, description="largest checkpoint upload")

    # --- webhooks (the rule: worker.protocol.webhook_refusal)
    webhook_allowed_hosts: NameSet = Field(
        default=frozenset(), description="hosts webhooks may target; empty refuses every webhook_url")
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    webhook_retries: int = Field(default=2, ge=0, le=10)

    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("webhook_allowed_hosts", mode="before")
    @classmethod
    def _lower_hosts(cls, value: Any) -> Any:
        return frozenset(host.lower() for host in split_csv(value))

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

    @property
    def checkpoint_path(self) -> Path:
        """Where checkpoints live: `checkpoint_dir`, else DATA_DIR/checkpoints."""
        return self.checkpoint_dir if self.checkpoint_dir is not None else self.data_dir / "checkpoints"

    def redis_client(self) -> redis.Redis:
        """A client that fails fast (timeouts) and retries a dropped connection twice.
        (RQ's workers lengthen the socket timeout for their blocking reads themselves.)"""
        import redis
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        if self.redis_url is None:
            raise ValueError("SAFESPOT_REDIS_URL is not set")
        return redis.Redis.from_url(
            self.redis_url, socket_connect_timeout=self.redis_timeout_s, socket_timeout=self.redis_timeout_s,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError], health_check_interval=30)


class WorkerSettings(SharedSettings):
    """What only a worker process (or the embedded worker) reads."""

    queues: Annotated[list[str], NoDecode] = Field(default_factory=lambda: [FILTER_QUEUE, ADMIN_QUEUE])
    name: str | None = None  # default: safespot-<host>-<pid>

    # Liveness and job bookkeeping (seconds).
    job_heartbeat_ttl_s: int = Field(default=60, ge=2)  # an in-flight job is abandoned this long after its worker died
    maintenance_interval_s: int = Field(default=60, ge=1)  # RQ registry cleanup (abandoned jobs) this often

    # Observability.
    metrics_port: int = Field(default=9100, ge=0, le=65535)  # 0: no metrics server
    log_json: bool = True

    # The search's passes: bf16 autocast where the hardware has bf16 (auto), or forced.
    # Measured: 1.9-2.2x the images/s on a CPU with AVX512-BF16, safe-spot rate under
    # APGD-CE + APGD-T within 1 point of float32 (docs/performance.md).
    search_precision: Literal["auto", "fp32", "bf16"] = "auto"

    # Checkpoint vetting and training.
    # An .npz vetting set, or a folder of <domain>.npz; unset: the sets shipped in models/vetting.
    vetting_data: Path | None = None
    vetting_n: int = Field(default=100, ge=1)  # images in the fixed vetting slice
    vetting_apgd_n: int = Field(default=32, ge=0)  # of them, attacked by APGD-CE + APGD-T (0: none)
    train_holdout: int = Field(default=1000, ge=1)
    train_eval_pgd: int = Field(default=500, ge=0)
    train_batch_size: int = Field(default=128, ge=1)
    # Trainer speed-ups (docs/performance.md): bf16 autocast and channels-last convolutions.
    train_precision: Literal["auto", "fp32", "bf16"] = "auto"
    train_channels_last: bool = True

    _split = field_validator("queues", mode="before")(split_csv)

    @field_validator("queues")
    @classmethod
    def _some_queue(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("a worker needs at least one queue")
        return value

    @classmethod
    def from_shared(cls, shared: SharedSettings, **overrides: Any) -> WorkerSettings:
        """The embedded worker's settings: the API's shared ones, the rest from the environment."""
        values = {name: getattr(shared, name) for name in type(shared).model_fields if name in cls.model_fields}
        return cls(**{**values, "metrics_port": 0, **overrides})  # the API serves /metrics itself
