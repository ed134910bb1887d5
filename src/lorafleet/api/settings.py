"""The server's settings: every field also reads `LORAFLEET_<FIELD>` from the environment."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from lorafleet.jobs.worker import WorkerSettings
from lorafleet.registry import PriceTable
from lorafleet.rollout.controller import ControllerSettings


class ServerSettings(BaseSettings):
    """What `lorafleet serve` runs: the database, artifacts, the base model, workers, limits, prices."""

    model_config = SettingsConfigDict(env_prefix="LORAFLEET_", env_nested_delimiter="__", extra="forbid")

    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default SQLite at $LORAFLEET_HOME/registry.db."
    )
    artifacts_url: str | None = Field(
        None,
        description="Where datasets and adapters are stored: a directory or fsspec URL (s3://bucket/prefix; "
        "an S3-compatible endpoint and its keys from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY).",
    )
    admin_key: str | None = Field(
        None,
        min_length=16,
        description="Bearer key for the admin routes (tenants, keys, quotas); unset: admin routes refuse.",
    )
    ui_secret: str | None = Field(
        None,
        min_length=16,
        description="Signs the dashboard's session cookies; unset: a random one per process (sessions end "
        "when the server restarts; replicas behind one address need the same value).",
    )
    base_model: str = Field("default", min_length=1, description="The base model served and fine-tuned.")
    serve_models: bool = Field(True, description="Load the base model and answer completions.")
    device: str | None = Field(None, description="cpu or cuda; default: the best present.")
    max_batch: int = Field(32, ge=1, le=1024, description="Requests decoded together.")
    max_slots: int = Field(32, ge=1, le=4096, description="Adapters resident in the engine at once.")
    queue_size: int = Field(256, ge=1, le=100_000, description="Requests waiting before 429s.")
    workers: int = Field(1, ge=0, le=64, description="Local job workers started with the server (0: none).")
    worker: WorkerSettings = Field(default_factory=WorkerSettings, description="How workers run jobs.")
    adaptation: bool = Field(
        True,
        description="Run the adaptation controller with the workers (it needs workers ≥ 1 for its jobs).",
    )
    controller: ControllerSettings = Field(
        default_factory=ControllerSettings, description="How the adaptation controller looks at aliases."
    )
    max_upload_bytes: int = Field(
        100 * 1024 * 1024, ge=1, description="Largest dataset upload accepted (bytes)."
    )
    max_job_retries: int = Field(1, ge=0, le=100, description="Re-queues of a job whose worker died.")
    requests_per_minute: int | None = Field(
        None, ge=1, description="Per-key requests per minute when the tenant sets none (None: unlimited)."
    )
    prices: PriceTable = Field(default_factory=PriceTable, description="What usage costs (GET /v1/usage).")
    request_log_days: float = Field(
        30.0,
        gt=0,
        le=36_500,
        description="Days a completion served stays in the request log (with its feedback) before pruning.",
    )
    scrub_request_log: bool = Field(
        False,
        description="Replace PHI/PII in each logged completion's prompt, messages and answer with "
        "pseudonyms before it is stored (the `privacy` extra; the originals are never written).",
    )
