"""The one settings class: every environment variable the project reads is a field here.

Defaults give the *embedded* configuration (SQLite database, a Celery broker on SQLite through
kombu's SQLAlchemy transport, artifacts under ``./var/``): nothing to install but Python.
Production sets ``DATABASE_URL`` (Postgres) and ``BROKER_URL`` (Redis).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Service, worker and CLI settings, read from the environment (and ``.env`` if present)."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    # storage
    database_url: str = Field(
        "sqlite:///./var/lora.db", description="SQLAlchemy URL of the job/model/adapter database."
    )
    broker_url: str = Field(
        "sqla+sqlite:///./var/broker.db",
        description="Celery broker URL: Redis in production, kombu's SQLite transport embedded.",
    )
    artifact_dir: Path = Field(
        Path("./var/artifacts"), description="Directory for checkpoints, models and adapters."
    )
    data_dir: Path = Field(
        Path("./var/data"), description="Directory holding MNIST/raw (torchvision layout)."
    )
    mnist_download: bool = Field(
        True, description="Download MNIST with torchvision when the files are missing."
    )
    auto_migrate: bool = Field(
        False,
        description="Run `alembic upgrade head` at start-up instead of refusing an unmigrated DB.",
    )

    # worker and job robustness
    training_queue: str = Field("training", description="Celery queue that training tasks use.")
    visibility_timeout: int = Field(
        3600,
        ge=1,
        description="Redis visibility timeout (s): an unacknowledged message is redelivered "
        "after this long, even while its job still runs; the job's lease makes that "
        "delivery a no-op. Keep it above the longest job to avoid such deliveries. Also how "
        "long a queued job waits before its message is presumed lost and sent again.",
    )
    heartbeat_seconds: float = Field(
        5.0, gt=0, description="How often a running job renews its lease (s)."
    )
    lease_seconds: float = Field(
        30.0,
        gt=0,
        description="A running job whose heartbeat is older than this is stale: its worker "
        "is presumed dead and the job is requeued (s). More than 2 x HEARTBEAT_SECONDS.",
    )
    reaper_seconds: float = Field(
        10.0, gt=0, description="How often workers look for stale jobs to requeue (s)."
    )
    max_attempts: int = Field(
        3,
        ge=1,
        le=100,
        description="Runs a job may start; when the worker of the last one dies too, the job "
        "ends failed (worker_lost).",
    )
    broker_poll_seconds: float = Field(
        0.1, gt=0, description="Polling interval of the embedded SQLite broker (s)."
    )

    # serving
    default_model_id: str | None = Field(
        None, description="Model /predict uses when none is named (default: newest pretrained)."
    )
    adapter_cache_size: int = Field(8, ge=1, description="Adapters kept in memory (LRU).")
    model_cache_size: int = Field(4, ge=1, description="Base models kept in memory (LRU).")
    predict_batch_window_ms: float = Field(
        2.0, ge=0, description="How long /predict waits to gather a micro-batch (ms)."
    )
    predict_max_batch: int = Field(64, ge=1, description="Most samples in one micro-batch.")
    predict_max_images: int = Field(32, ge=1, description="Most images in one /predict request.")
    predict_threads: int = Field(
        1,
        ge=1,
        le=64,
        description="torch intra-op threads in the API process (process-wide; /predict runs "
        "one forward pass at a time, and on a small machine extra threads only contend).",
    )
    # --- issue 16: serving precision ---
    serving_precision: Literal["fp32", "bf16", "auto"] = Field(
        "fp32",
        description="Matmul precision of /predict and /evaluate: fp32, bf16 (served weights "
        "cast to bf16 once at load) or auto (bf16 where the hardware has it: CUDA with bf16, "
        "a CPU with AMX/AVX512-BF16; else fp32).",
    )

    # events and webhooks
    event_poll_seconds: float = Field(
        0.2,
        gt=0,
        le=10,
        description="How often a live event stream (SSE) reads the database for new events (s).",
    )
    event_ping_seconds: float = Field(
        15.0, gt=0, description="Heartbeat comment interval on live event streams (s)."
    )
    webhook_url: str | None = Field(
        None, description="Webhook URL for jobs that name none (terminal statuses are POSTed)."
    )
    webhook_secret: SecretStr | None = Field(
        None,
        description="Standard Webhooks signing secret (`whsec_` + base64); required when any "
        "job has a webhook.",
    )
    webhook_retry_seconds: float = Field(
        900.0,
        gt=0,
        description="How long a webhook message is retried (exponential backoff) after its job "
        "ended, while the receiver answers no 2xx (s).",
    )
    webhook_backoff_seconds: float = Field(
        1.0, gt=0, description="First webhook retry delay (s); doubles per attempt, at most 5 min."
    )
    webhook_timeout_seconds: float = Field(
        10.0, gt=0, description="How long one webhook POST may take (s)."
    )
    webhook_allow_private: bool = Field(
        False,
        description="Allow webhook URLs on private, loopback or link-local addresses "
        "(for tests and private networks).",
    )
    webhook_poll_seconds: float = Field(
        0.5,
        gt=0,
        le=60,
        description="How often each API process looks for webhook messages to send (s).",
    )

    # limits and security
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated bearer keys; empty means the API is open (embedded only).",
    )
    max_request_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="Largest request body accepted (bytes)."
    )
    max_image_pixels: int = Field(
        4096 * 4096, ge=784, description="Largest decoded image accepted (pixels)."
    )
    max_adapter_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Largest adapter weights file accepted (bytes)."
    )
    page_size_max: int = Field(200, ge=1, description="Largest `limit` on list endpoints.")
    sweep_max_jobs: int = Field(
        200, ge=1, description="Most jobs one sweep may create (bases + variants x seeds)."
    )

    # --- issue 17: faults around the service ---
    queued_resend_seconds: float = Field(
        60.0,
        gt=0,
        description="A queued job whose latest message was sent this long ago without being "
        "claimed gets another one (a message lost with a broker's memory, or never sent while "
        "the broker was down); a duplicate is a no-op (s).",
    )
    rate_limit_per_second: float | None = Field(
        None,
        gt=0,
        description="Requests a second each API key (or client address on an open API) may "
        "send to POST /predict and to POST /jobs, per API process; 429 rate_limited beyond "
        "(unset: no limit).",
    )
    rate_limit_burst: int = Field(
        20,
        ge=1,
        description="Requests a key may send at once before RATE_LIMIT_PER_SECOND applies.",
    )
    max_active_jobs_per_key: int | None = Field(
        None,
        ge=1,
        description="Most queued + running jobs one API key may have; POST /jobs beyond is 429 "
        "too_many_active_jobs (unset: no cap; needs API_KEYS).",
    )
    job_max_runtime_seconds: float | None = Field(
        None,
        gt=0,
        description="Longest a job may run, from its first start (s); a job still training "
        "then ends failed with code timeout. A job's own config.max_runtime_seconds can only "
        "lower it (the smaller applies; unset: the job's own, else no limit).",
    )
    # --- end issue 17 ---

    # HTTP and CLI
    host: str = Field("127.0.0.1", description="Address the API binds to.")
    port: int = Field(8000, ge=1, le=65535, description="Port the API listens on.")
    api_url: str = Field(
        "http://127.0.0.1:8000", description="Service URL that the `compare` CLI talks to."
    )
    api_key: SecretStr | None = Field(None, description="Bearer key the CLI sends, if any.")
    log_level: str = Field("INFO", description="Python logging level.")

    # --- issue 14: observability (metrics, logs, probes) ---
    log_format: Literal["text", "json"] = Field(
        "text",
        description="Log lines as `text` or `json` (one object per line: time, level, logger, "
        "message, request_id, job_id, attempt, worker).",
    )
    metrics_enabled: bool = Field(
        True, description="Record Prometheus metrics and serve `GET /metrics` (API and workers)."
    )
    metrics_token: SecretStr | None = Field(
        None,
        description="Bearer token `GET /metrics` requires instead of an API key (unset: "
        "`/metrics` follows API_KEYS).",
    )
    prometheus_multiproc_dir: Path | None = Field(
        None,
        description="prometheus-client multiprocess directory: set it (empty, shared) when "
        "several API processes on one host are scraped as one; prometheus-client reads it too.",
    )
    metrics_adapter_labels: int = Field(
        64,
        ge=1,
        description="Most distinct adapter ids one process labels metrics with; further "
        'adapters count under `adapter="_other"` (deleted ones are never exported).',
    )
    worker_metrics_port: int = Field(
        9101,
        ge=0,
        le=65535,
        description="First port a worker serves its metrics on; taken ports are skipped "
        "(the next 31 are tried), 0 picks any free port. The chosen one is logged.",
    )
    worker_heartbeat_file: Path = Field(
        Path("./var/worker.heartbeat"),
        description="File a worker rewrites every WORKER_HEARTBEAT_FILE_SECONDS (also while "
        "training); `lora-service worker-health` checks it. One per worker process.",
    )
    worker_heartbeat_file_seconds: float = Field(
        2.0, gt=0, description="How often a worker rewrites its heartbeat file (s)."
    )
    worker_health_max_age: float = Field(
        15.0,
        gt=0,
        description="`lora-service worker-health` fails when the heartbeat file is older (s).",
    )

    @field_validator("metrics_token", mode="before")
    @classmethod
    def _empty_token_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    # --- end issue 14 ---

    # --- issue 15: artifact store (object storage), GPU routing, retention ---
    artifact_url: str = Field(
        "",
        description="Where artifacts are kept: empty = ARTIFACT_DIR itself (one shared "
        "filesystem), or `s3://bucket/prefix` (MinIO or any S3-compatible store); then "
        "ARTIFACT_DIR is only this process's scratch space and cache.",
    )
    s3_endpoint_url: str | None = Field(
        None, description="S3 endpoint (e.g. `http://minio:9000`); unset: AWS's own."
    )
    s3_access_key_id: str | None = Field(None, description="S3 access key id.")
    s3_secret_access_key: SecretStr | None = Field(None, description="S3 secret access key.")
    s3_region: str = Field("us-east-1", description="S3 region name.")
    artifact_cache_bytes: int = Field(
        2_000_000_000,
        ge=0,
        description="Bytes of downloaded artifacts a process keeps under ARTIFACT_DIR/.cache "
        "(least recently used evicted first; only with an `s3://` ARTIFACT_URL).",
    )

    gpu_training_queue: str = Field(
        "training-gpu",
        description='Celery queue of jobs whose config says `"device": "cuda"` (GPU workers '
        "consume it and TRAINING_QUEUE; `auto` and `cpu` jobs go to TRAINING_QUEUE).",
    )
    worker_device: Literal["cpu", "cuda"] = Field(
        "cpu",
        description="What a worker trains on: a `cuda` worker consumes GPU_TRAINING_QUEUE "
        "too and refuses to start without a CUDA device (so does any worker told to consume "
        "GPU_TRAINING_QUEUE through TRAINING_QUEUE).",
    )
    gpu_wait_seconds: float = Field(
        600.0,
        gt=0,
        description='A `"device": "cuda"` job still queued after this long (no GPU worker '
        "took it) ends `failed` with code `no_gpu_worker` (checked by every worker's reaper).",
    )

    checkpoint_retention_seconds: float | None = Field(
        None,
        gt=0,
        description="`lora-service gc` deletes the kept checkpoints of jobs finished longer "
        "ago than this (s); unset: kept until the job is deleted.",
    )

    @field_validator("artifact_url")
    @classmethod
    def _artifact_url_is_s3(cls, value: str) -> str:
        value = value.strip()
        if value and (not value.startswith("s3://") or not value[5:].split("/")[0]):
            raise ValueError(f"ARTIFACT_URL must be empty or s3://bucket[/prefix], not {value!r}")
        return value

    # --- end issue 15 ---

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @model_validator(mode="after")
    def _lease_outlasts_heartbeats(self) -> Settings:
        if self.lease_seconds <= 2 * self.heartbeat_seconds:
            raise ValueError(
                f"LEASE_SECONDS ({self.lease_seconds:g}) must exceed 2 x HEARTBEAT_SECONDS "
                f"({self.heartbeat_seconds:g}): a worker gives its lease up after "
                "LEASE_SECONDS - 2 x HEARTBEAT_SECONDS without a renewal."
            )
        return self

    @property
    def is_sqlite(self) -> bool:
        """True when the database is SQLite (embedded configuration)."""
        return self.database_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once. Tests call ``get_settings.cache_clear()``."""
    return Settings()


def settings_markdown() -> str:
    """The settings as a Markdown table (environment variable, default, meaning).

    The README's settings table is this output (tests/service/test_readme.py checks it):
    ``python -m service.core.settings`` prints it.
    """
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        shown = "(unset)" if default is None or default == [] else f"`{default}`"
        lines.append(f"| `{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(settings_markdown())
