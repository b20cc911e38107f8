"""Process settings, read once at start from ``SKILLMIX_*`` environment variables or ``.env``.

Endpoints are named so a job says ``endpoint: "openai"`` and never carries a key: the key itself stays in
the environment variable the endpoint names (``api_key_env``).
"""

import math
from functools import lru_cache
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, HttpUrl, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.base import StrictModel


class EndpointSettings(StrictModel):
    """One OpenAI-compatible endpoint and the limits its provider grants us."""

    base_url: HttpUrl = Field(description="up to and including /v1, e.g. https://api.openai.com/v1")
    model: str = Field(min_length=1)
    api_key_env: str | None = Field(default=None, description="name of the env var holding the key")
    rpm: int = Field(default=500, ge=1, description="requests per minute")
    tpm: int = Field(default=2_000_000, ge=1, description="tokens (prompt + completion) per minute")
    max_concurrency: int = Field(
        default=0, ge=0, le=4096, description="requests in flight; 0 = enough for the rpm at 1 s latency (32..256)"
    )
    concurrency: Literal["fixed", "adaptive"] = Field(
        default="fixed",
        description="fixed: max_concurrency in flight; adaptive: a fleet-wide limit (shared in Redis by every "
        "worker) found by AIMD on latency and errors, at most max_concurrency: for self-hosted servers (vLLM, "
        "llama.cpp, TGI) that queue requests instead of answering 429",
    )
    timeout_s: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=6, ge=0, le=50)
    json_schema: bool = Field(default=False, description="supports response_format with a JSON schema")
    schema_string_bounds: bool = Field(
        default=False, description="enforces minLength/maxLength in JSON schemas (llama.cpp, vLLM; not OpenAI)"
    )
    usd_per_mtok_prompt: float = Field(default=0.0, ge=0)
    usd_per_mtok_completion: float = Field(default=0.0, ge=0)
    batch: bool = Field(
        default=False, description="also serves OpenAI's /v1/files + /v1/batches: jobs may run with mode=batch"
    )
    batch_price_factor: float = Field(
        default=0.5, gt=0, le=1, description="a batch line costs the online price times this (OpenAI: half)"
    )
    batch_max_requests: int = Field(default=50_000, ge=1, le=50_000, description="lines in one batch input file")
    batch_max_mb: float = Field(default=200, gt=0, le=200, description="size of one batch input file (MiB)")
    batch_poll_s: float = Field(default=10.0, gt=0, le=3600, description="how often an open batch is polled")

    @field_validator("base_url")
    @classmethod
    def _no_trailing_route(cls, value: HttpUrl) -> HttpUrl:
        if str(value).rstrip("/").endswith("/chat/completions"):
            raise ValueError("base_url must stop at the API root (…/v1), not at /chat/completions")
        return value

    @model_validator(mode="after")
    def _concurrency(self) -> Self:
        if self.max_concurrency == 0:  # throughput is capped at concurrency / latency: leave headroom
            self.max_concurrency = min(256, max(32, math.ceil(self.rpm / 60)))
        return self

    @property
    def chat_url(self) -> str:
        return str(self.base_url).rstrip("/") + "/chat/completions"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SKILLMIX_", env_file=".env", env_nested_delimiter="__", extra="ignore"
    )

    redis_url: str = "redis://127.0.0.1:6379/0"
    data_dir: Path = Path("./data")
    recipes: str = Field(
        default="",
        description="plug-in recipe modules (importable names, comma-separated), loaded by the API and every "
        "worker at start; each registers its spec (and, in a worker, its implementation)",
    )
    max_upload_mb: float = Field(
        default=200, gt=0, description="largest seed dataset accepted as an upload (MiB); larger ones are a 413"
    )
    api_key: SecretStr | None = Field(
        default=None, description="the key the CLI's client commands (submit, export, curate, ...) send to the API"
    )
    auth_fail_burst: int = Field(
        default=20,
        ge=1,
        description="failed authentications one client address may make per auth_fail_window_s; "
        "past it every request from there is a 429 until the window ends",
    )
    forwarded_allow_ips: str = Field(
        default="",
        description="proxies whose X-Forwarded-For gives the client's address (comma-separated IPs); "
        "none by default: the throttle then counts the connection's own address",
    )
    auth_fail_window_s: int = Field(default=60, ge=1)
    max_body_kb: int = Field(
        default=4096,
        ge=1,
        description="largest JSON request body (KiB); larger is a 413 (uploads: max_upload_mb)",
    )
    idempotency_wait_s: float = Field(
        default=10,
        ge=0,
        description="a repeated Idempotency-Key waits this long for the first request to finish; past it, a 409 "
        "asking to retry",
    )
    endpoints: dict[str, EndpointSettings] = Field(default_factory=dict)
    default_endpoint: str = "local"
    chunk_size: int = Field(default=32, ge=1, le=10_000)
    worker_max_jobs: int = Field(default=16, ge=1, description="chunks one worker process runs at once")
    chunk_timeout_s: int = Field(
        default=1800,
        ge=5,
        description="a chunk running longer is abandoned and retried (a killed worker's chunks are picked "
        "up sooner: see heartbeat_s)",
    )
    curate_batch: int = Field(default=64, ge=1, description="stream entries one curate read takes")
    redis_timeout_s: float = Field(
        default=10.0, gt=0, le=300, description="Redis connect and reply timeout; longer than any blocking read"
    )
    heartbeat_s: float = Field(
        default=5.0, gt=0, le=60, description="worker heartbeat; silent for 3 beats = dead, its chunks rerun"
    )
    stop_grace_s: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="on SIGTERM/SIGINT a worker sends no new call and waits this long for calls in flight, "
        "then cancels the rest; its unfinished chunks go back to the queue at once either way",
    )
    claim_idle_ms: int = Field(default=60_000, ge=1000, description="re-deliver curate entries idle this long")
    stall_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="a job with work outstanding and no progress this long is checked by the watchdog: chunks "
        "that are neither queued nor running are enqueued again, or the job fails with the reason",
    )
    replay_max_mb: float = Field(
        default=256,
        ge=0,
        description="answers one job keeps for replay (MiB; a chunk's are dropped once its items are generated); "
        "past it new answers are not kept; 0 turns the replay cache off",
    )
    replay_ttl_s: int = Field(
        default=172_800, ge=60, description="kept answers expire this long after their chunk's last write"
    )
    batch_gather_s: float = Field(
        default=2.0,
        gt=0,
        le=3600,
        description="batch mode: a job's requests for an endpoint are gathered this long (or up to the endpoint's "
        "file bounds) before their file is submitted",
    )
    batch_window_h: int = Field(
        default=24, ge=1, le=24, description="batch mode: the completion window asked of the provider (hours)"
    )
    local_model: Path | None = Field(default=None, description="a GGUF file for quickstart / local-llm")
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="a worker serves its own Prometheus metrics on this port (one port per worker process)",
    )
    metrics_host: str = Field(default="127.0.0.1", description="address the worker metrics server binds")
    log_format: Literal["text", "json"] = Field(
        default="text", description="json: one JSON object per line (ts, level, logger, msg, job_id, exc)"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


@lru_cache
def get_settings() -> Settings:
    return Settings()
