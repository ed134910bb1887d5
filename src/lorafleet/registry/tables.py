"""The registry's tables (SQLAlchemy 2 declarative). Every row but `Tenant` belongs to one tenant.

Times are UNIX seconds (float, UTC), the same on SQLite and PostgreSQL and what OpenAI's shapes use.
Ids are short prefixed strings (`ftjob-…`, `file-…`) so they read well in URLs and logs.
The schema is created by the Alembic migrations in `registry/migrations/`; a test checks they match.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, TypeVar
from uuid import uuid4

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from lorafleet.errors import NotFoundError

_Row = TypeVar("_Row")
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED_STATES = ("succeeded", "failed", "cancelled")


def new_id(prefix: str) -> str:
    """A fresh id such as `ftjob-3f9c…` (24 hex digits after the prefix)."""
    return f"{prefix}-{uuid4().hex[:24]}"


def now() -> float:
    """The current time in UNIX seconds."""
    return time.time()


def owned(session: Session, table: type[_Row], row_id: str, tenant_id: str, *, what: str) -> _Row:
    """The row of `table` with that id if it belongs to the tenant; else `NotFoundError` (another
    tenant's row is "not found" too, so ids reveal nothing across tenants)."""
    row = session.get(table, row_id)
    if row is None or row.tenant_id != tenant_id:  # type: ignore[attr-defined]
        raise NotFoundError(f"no {what} {row_id!r}")
    return row


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, int: Integer, float: Float}


class Tenant(Base):
    """A customer of the server; quotas are None when unlimited. `log_text` off: the request log keeps no
    prompt or answer text of the tenant's completions."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("tn"))
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(default=now)
    max_concurrent_jobs: Mapped[int | None] = mapped_column(default=None)
    max_adapters: Mapped[int | None] = mapped_column(default=None)
    max_storage_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    max_monthly_tokens: Mapped[int | None] = mapped_column(BigInteger, default=None)
    requests_per_minute: Mapped[int | None] = mapped_column(default=None)
    log_text: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())


class ApiKey(Base):
    """A tenant's API key: only its SHA-256 is stored; the key itself is shown once, at creation."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("key"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    prefix: Mapped[str] = mapped_column(String(16))  # the first characters, to tell keys apart in lists
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(default=now)
    revoked_at: Mapped[float | None] = mapped_column(default=None)


class RateBucket(Base):
    """An API key's rate-limit token bucket (`registry.rate_limits`): shared by every server replica."""

    __tablename__ = "rate_buckets"

    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"), primary_key=True)
    tokens: Mapped[float] = mapped_column(Float)  # requests the key may still make now (may be fractional)
    counted_at: Mapped[float] = mapped_column(Float)  # wall-clock time `tokens` was computed at


class Dataset(Base):
    """An uploaded training file, validated on upload (OpenAI's "file" with purpose fine-tune)."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("file"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32), default="fine-tune")
    format: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    rows: Mapped[int]
    tokens: Mapped[int] = mapped_column(BigInteger)
    artifact: Mapped[str] = mapped_column(Text)  # URL of the stored file
    created_at: Mapped[float] = mapped_column(default=now)


class Job(Base):
    """A fine-tuning job: queued → running → succeeded | failed | cancelled."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ftjob"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    adapter_name: Mapped[str] = mapped_column(String(64))
    base_model: Mapped[str] = mapped_column(String(255))
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"))
    validation_dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id"), default=None)
    parent_version_id: Mapped[str | None] = mapped_column(String(40), default=None)
    recipe: Mapped[dict[str, Any]] = mapped_column(default=dict)  # recipe fields the job sets
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(default=0)
    max_retries: Mapped[int] = mapped_column(default=0)
    worker_id: Mapped[str | None] = mapped_column(String(128), default=None)
    heartbeat_at: Mapped[float | None] = mapped_column(default=None)
    step: Mapped[int] = mapped_column(default=0)
    total_steps: Mapped[int | None] = mapped_column(default=None)
    trained_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    version_id: Mapped[str | None] = mapped_column(String(40), default=None)  # the version it registered
    created_at: Mapped[float] = mapped_column(default=now, index=True)
    started_at: Mapped[float | None] = mapped_column(default=None)
    finished_at: Mapped[float | None] = mapped_column(default=None)


class JobEvent(Base):
    """One line of a job's event log (status changes, training logs, step metrics)."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    created_at: Mapped[float] = mapped_column(default=now)
    level: Mapped[str] = mapped_column(String(8), default="info")
    type: Mapped[str] = mapped_column(String(16), default="message")  # message | metrics | status
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class Adapter(Base):
    """A named adapter of a tenant; its versions are numbered 1, 2, 3 … and never change."""

    __tablename__ = "adapters"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ad"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(default=now)
    latest_version: Mapped[int] = mapped_column(default=0)
    # `evaluation.gate.GatePolicy` as JSON; None: promotions are not gated
    gate_policy: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class AdapterVersion(Base):
    """An immutable trained adapter: its stored artifact, digest, metrics and lineage."""

    __tablename__ = "adapter_versions"
    __table_args__ = (UniqueConstraint("adapter_id", "number"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("av"))
    adapter_id: Mapped[str] = mapped_column(ForeignKey("adapters.id"), index=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    number: Mapped[int]
    artifact: Mapped[str] = mapped_column(Text)  # URL of the stored adapter directory
    sha256: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(BigInteger)
    base_model: Mapped[str] = mapped_column(String(255))
    dataset_id: Mapped[str | None] = mapped_column(String(40), default=None)
    job_id: Mapped[str | None] = mapped_column(String(40), default=None)
    parent_version_id: Mapped[str | None] = mapped_column(String(40), default=None)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[float] = mapped_column(default=now)


class Alias(Base):
    """A movable name (`production`, `staging`, …) for one version of an adapter."""

    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("adapter_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    adapter_id: Mapped[str] = mapped_column(ForeignKey("adapters.id"), index=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(64))
    version_id: Mapped[str] = mapped_column(ForeignKey("adapter_versions.id"))
    updated_at: Mapped[float] = mapped_column(default=now)


class AliasMove(Base):
    """The audit trail of aliases: every promote and rollback, who did it, from which version to which."""

    __tablename__ = "alias_moves"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    adapter_id: Mapped[str] = mapped_column(ForeignKey("adapters.id"), index=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    alias: Mapped[str] = mapped_column(String(64))
    from_version_id: Mapped[str | None] = mapped_column(String(40), default=None)
    to_version_id: Mapped[str | None] = mapped_column(String(40), default=None)
    action: Mapped[str] = mapped_column(String(16))  # promote | rollback | delete
    actor: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[float] = mapped_column(default=now)
    forced: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())  # past a failed gate
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)  # the gate report, if gated


class AdapterEvent(Base):
    """The audited history of an adapter beyond its alias moves: canaries and experiments set and cleared,
    and whatever else acts on it (a controller's triggers, jobs, gates, promotions). `id` is the order;
    `kind` a short word (`canary_set`, `job_started`, …), `detail` what the event carries."""

    __tablename__ = "adapter_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    adapter_id: Mapped[str] = mapped_column(ForeignKey("adapters.id"), index=True)
    kind: Mapped[str] = mapped_column(String(40))
    actor: Mapped[str] = mapped_column(String(128))
    job_id: Mapped[str | None] = mapped_column(
        String(40), default=None
    )  # not a foreign key: jobs come and go
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[float] = mapped_column(default=now)


class RouteSplit(Base):
    """A canary or an A/B experiment of a tenant: how the requests naming `model` are split.

    `spec` is the `serving.router.Canary` or `Experiment` as JSON; a canary's `name` is its `model`.
    A tenant has at most one canary and one experiment per model.
    """

    __tablename__ = "route_splits"
    __table_args__ = (
        UniqueConstraint("tenant_id", "kind", "model"),
        UniqueConstraint("tenant_id", "kind", "name"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    model: Mapped[str] = mapped_column(String(160))  # the reference split: `support`, `support:production`
    kind: Mapped[str] = mapped_column(String(16))  # canary | experiment
    name: Mapped[str] = mapped_column(String(160))
    spec: Mapped[dict[str, Any]] = mapped_column()
    actor: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[float] = mapped_column(default=now)


class EvalSuite(Base):
    """A held-out set registered for an adapter: an uploaded file (purpose `eval`) and its metric.

    Every new version of the adapter, and of any adapter trained from it, is scored on it by the worker.
    """

    __tablename__ = "eval_suites"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("suite"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    adapter_id: Mapped[str] = mapped_column(ForeignKey("adapters.id"), index=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    metric: Mapped[str] = mapped_column(String(32))  # json_fields | exact_match | perplexity
    created_at: Mapped[float] = mapped_column(default=now)


class UsageRecord(Base):
    """What one request or job used: tokens, compute seconds, stored bytes; billed by the price table."""

    __tablename__ = "usage_records"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # inference | training | storage
    created_at: Mapped[float] = mapped_column(default=now, index=True)
    key_id: Mapped[str | None] = mapped_column(String(40), default=None)
    model: Mapped[str | None] = mapped_column(String(255), default=None)
    job_id: Mapped[str | None] = mapped_column(String(40), default=None)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    trained_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    compute_seconds: Mapped[float] = mapped_column(default=0.0)
    storage_bytes: Mapped[int] = mapped_column(BigInteger, default=0)


class LoggedCompletion(Base):
    """One completion served to a tenant (the request log), kept for the server's retention period.

    `id` is the response id the client saw (`chatcmpl-…`, `cmpl-…`); `adapter_version_id` the version
    that served it (None: the base model; not a foreign key, so deleting a version keeps its log),
    `version` the same as the response's `system_fingerprint` names it (`support@3`, or the base model's
    name) and `route` why the router chose it (`alias`, `explicit`, `canary`, `ab:<experiment>`, `base`).
    `prompt` (completions) or `messages` (chat) and `text` are None when the tenant logs no text.
    """

    __tablename__ = "completions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    key_id: Mapped[str | None] = mapped_column(String(40), default=None)
    model: Mapped[str] = mapped_column(String(255))  # as the client named it
    adapter_version_id: Mapped[str | None] = mapped_column(String(40), default=None, index=True)
    version: Mapped[str | None] = mapped_column(String(255), default=None)
    route: Mapped[str | None] = mapped_column(String(80), default=None)
    prompt: Mapped[str | None] = mapped_column(Text, default=None)
    messages: Mapped[list[dict[str, str]] | None] = mapped_column(JSON(none_as_null=True), default=None)
    text: Mapped[str | None] = mapped_column(Text, default=None)
    prompt_tokens: Mapped[int] = mapped_column(default=0)
    completion_tokens: Mapped[int] = mapped_column(default=0)
    latency_ms: Mapped[float] = mapped_column(default=0.0)  # from queueing to the last token
    finish_reason: Mapped[str] = mapped_column(String(16))  # stop | length | error | cancelled
    created_at: Mapped[float] = mapped_column(default=now, index=True)


class Feedback(Base):
    """A tenant's judgement of one logged completion: a score in [0, 1], a label, and/or a correction
    (the answer it should have given, which becomes a training row)."""

    __tablename__ = "feedback"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("fb"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    completion_id: Mapped[str] = mapped_column(ForeignKey("completions.id"), index=True)
    score: Mapped[float | None] = mapped_column(default=None)
    label: Mapped[str | None] = mapped_column(String(64), default=None)
    correction: Mapped[str | None] = mapped_column(Text, default=None)
    key_id: Mapped[str | None] = mapped_column(String(40), default=None)  # who sent it; None: the admin
    created_at: Mapped[float] = mapped_column(default=now, index=True)


class AdaptationPolicyRow(Base):
    """An adaptation policy (`rollout.policy.AdaptationPolicy`) on one alias of an adapter, and what the
    controller last saw of the alias (`status`: its monitor's figures and the rollout under way)."""

    __tablename__ = "adaptation_policies"
    __table_args__ = (UniqueConstraint("adapter_id", "alias"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    adapter_id: Mapped[str] = mapped_column(ForeignKey("adapters.id"), index=True)
    alias: Mapped[str] = mapped_column(String(64))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    actor: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[float] = mapped_column(default=now)
    status: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), default=None)
    status_at: Mapped[float | None] = mapped_column(Float, default=None)


ROLLOUT_STATES = ("waiting", "training", "canary", "promoted", "rolled_back", "failed")
ROLLOUT_ACTIVE = ("waiting", "training", "canary")


class Rollout(Base):
    """One pass of the adaptation loop on an alias: triggered → (waiting for corrections) → training (its
    job) → canary (its version on a share of users) → promoted, rolled back or failed. The controller keeps
    its state here, so a controller that restarts resumes it."""

    __tablename__ = "rollouts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ro"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    adapter_id: Mapped[str] = mapped_column(ForeignKey("adapters.id"), index=True)
    alias: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))  # one of ROLLOUT_STATES
    trigger: Mapped[dict[str, Any]] = mapped_column(JSON)  # which trigger fired, with its figures
    from_version_id: Mapped[str] = mapped_column(String(40))  # the alias's version when triggered
    job_id: Mapped[str | None] = mapped_column(String(40), default=None)
    candidate_version_id: Mapped[str | None] = mapped_column(String(40), default=None)
    canary_started_at: Mapped[float | None] = mapped_column(Float, default=None)
    outcome: Mapped[str | None] = mapped_column(Text, default=None)  # why it ended
    created_at: Mapped[float] = mapped_column(default=now, index=True)
    updated_at: Mapped[float] = mapped_column(default=now)
    finished_at: Mapped[float | None] = mapped_column(Float, default=None)


EXPORT_STATES = ("queued", "running", "succeeded", "failed")


class Export(Base):
    """An export job of one adapter version (`lorafleet.export`): queued → running → succeeded | failed.
    A succeeded one names its stored folder (the exported files and their `export.json`)."""

    __tablename__ = "exports"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("export"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    version_id: Mapped[str] = mapped_column(ForeignKey("adapter_versions.id"), index=True)
    format: Mapped[str] = mapped_column(String(16))
    quant: Mapped[str | None] = mapped_column(String(64), default=None)  # as asked: a variant, a list, all
    target: Mapped[str | None] = mapped_column(String(64), default=None)
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)  # one of EXPORT_STATES
    worker_id: Mapped[str | None] = mapped_column(String(128), default=None)
    artifact: Mapped[str | None] = mapped_column(Text, default=None)  # URL of the stored export folder
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    report: Mapped[dict[str, Any]] = mapped_column(default=dict)  # its export.json
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[float] = mapped_column(default=now, index=True)
    started_at: Mapped[float | None] = mapped_column(Float, default=None)
    finished_at: Mapped[float | None] = mapped_column(Float, default=None)
