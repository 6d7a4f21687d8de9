"""Worker settings: environment variables with the ``SAFESPOT_`` prefix.

One :class:`WorkerSettings` object per process, built by the entry point
(``safespot worker``, :class:`worker.embedded.EmbeddedBackend`) and passed
down; nothing reads the environment at import time.  Lists (queues, webhook
hosts) are comma-separated in the environment:
``SAFESPOT_QUEUES=safespot-filter,safespot-admin``.

Standard library and pydantic only: no torch, so ``--help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from worker.protocol import ADMIN_QUEUE, FILTER_QUEUE

MAX_CHECKPOINT_BYTES = 2 * 1024**3  # same limit as models.checkpoint (which imports torch)


class WorkerSettings(BaseSettings):
    """Everything a worker process (or the embedded worker) needs to know."""

    model_config = SettingsConfigDict(env_prefix="SAFESPOT_", extra="ignore")

    redis_url: str | None = None
    data_dir: Path = Path("data")
    checkpoint_dir: Path | None = None  # shared with the API; default DATA_DIR/checkpoints
    default_model: str = "default"  # shipped name or .safetensors path, used when none is active
    queues: Annotated[list[str], NoDecode] = Field(default_factory=lambda: [FILTER_QUEUE, ADMIN_QUEUE])
    name: str | None = None  # default: safespot-<host>-<pid>

    # Batching.
    max_batch: int = Field(default=64, ge=1, le=4096)  # images searched together
    max_wait_ms: int = Field(default=50, ge=0, le=60_000)  # after the first job, wait this long for more
    # Canvas pixels per search batch (images x largest H x largest W).  The search keeps about ten
    # float32 copies of each RGB image, so budget roughly 120 bytes of memory per canvas pixel.
    max_batch_pixels: int = Field(default=32 * 1024 * 1024, ge=1)
    device: str | None = None  # cpu, cuda, cuda:1 (default: cuda when available)
    threads: int | None = Field(default=None, ge=1)  # torch CPU threads

    # Liveness and job bookkeeping (seconds).
    job_heartbeat_ttl_s: int = Field(default=60, ge=2)  # an in-flight job is abandoned this long after its worker died
    maintenance_interval_s: int = Field(default=60, ge=1)  # RQ registry cleanup (abandoned jobs) this often
    progress_interval_s: float = Field(default=0.5, ge=0)  # job.meta progress writes, at most this often

    # Observability.
    metrics_port: int = Field(default=9100, ge=0, le=65535)  # 0: no metrics server
    log_level: str = "INFO"
    log_json: bool = True

    # Webhooks.
    webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    webhook_retries: int = Field(default=2, ge=0, le=10)

    # Checkpoint vetting and training.
    vetting_data: Path | None = None  # .npz (x, y or x_test, y_test); default DATA_DIR/cifar10_test.npz
    vetting_n: int = Field(default=100, ge=1)  # images in the fixed vetting slice
    max_checkpoint_bytes: int = Field(default=MAX_CHECKPOINT_BYTES, ge=1)
    train_holdout: int = Field(default=1000, ge=1)
    train_eval_pgd: int = Field(default=500, ge=0)
    train_batch_size: int = Field(default=128, ge=1)
    # Trainer speed-ups (docs/performance.md): bf16 autocast and channels-last convolutions.
    train_precision: Literal["fp32", "bf16"] = "fp32"
    train_channels_last: bool = True

    @field_validator("queues", "webhook_allowed_hosts", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("queues")
    @classmethod
    def _some_queue(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("a worker needs at least one queue")
        return value

    @model_validator(mode="after")
    def _default_checkpoint_dir(self) -> WorkerSettings:
        if self.checkpoint_dir is None:  # the API's default too (service.settings.checkpoints_path)
            self.checkpoint_dir = self.data_dir / "checkpoints"
        return self

    @property
    def checkpoint_path(self) -> Path:
        """The checkpoint directory, resolved (never None after validation)."""
        return self.checkpoint_dir if self.checkpoint_dir is not None else self.data_dir / "checkpoints"

    @classmethod
    def from_service(cls, service_settings: Any, **overrides: Any) -> WorkerSettings:
        """Worker settings for the embedded worker: the environment, overridden by the
        attributes the service's Settings object has (read defensively: the service
        may name fewer)."""
        shared = ("redis_url", "checkpoint_dir", "data_dir", "default_model", "max_batch",
                  "max_wait_ms", "max_batch_pixels", "device", "threads", "webhook_allowed_hosts",
                  "webhook_timeout_s", "webhook_retries", "vetting_data", "vetting_n",
                  "max_checkpoint_bytes", "train_holdout", "train_eval_pgd", "train_batch_size",
                  "train_precision", "train_channels_last",
                  "progress_interval_s")
        values = {k: getattr(service_settings, k) for k in shared
                  if getattr(service_settings, k, None) is not None}
        resolved_dir = getattr(service_settings, "checkpoints_path", None)  # the API's resolved default
        if resolved_dir is not None:
            values["checkpoint_dir"] = resolved_dir
        values.update(overrides)
        values.setdefault("metrics_port", 0)  # the service serves /metrics itself
        return cls(**values)
