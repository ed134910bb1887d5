"""Usage and its bill: records per request and job, daily sums, a configurable price table, quotas.

A tenant's quotas (columns of `Tenant`, None = unlimited) are checked where the work is admitted:
concurrent jobs and monthly tokens when a job is created, monthly tokens before a completion,
stored adapters and bytes when a version or file is stored (before its upload, and again under the
tenant's lock when its row is recorded: uploads racing each other cannot pass the quota). Each refusal
is a `QuotaExceededError` with the seconds after which trying again can succeed (HTTP 429 +
Retry-After). Every count is read from the database, so the quotas hold across server replicas.
"""

from __future__ import annotations

import calendar
import time
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lorafleet.errors import QuotaExceededError
from lorafleet.registry.database import Database
from lorafleet.registry.tables import Adapter, AdapterVersion, Dataset, Job, Tenant, UsageRecord

USAGE_KINDS = ("inference", "training", "storage")
_DAY = 86_400.0


class PriceTable(BaseModel):
    """What usage costs; every price is per unit in `currency`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    currency: str = Field("USD", min_length=3, max_length=3, description="ISO 4217 code.")
    prompt_per_million: float = Field(0.10, ge=0, description="Per million prompt tokens served.")
    completion_per_million: float = Field(0.40, ge=0, description="Per million generated tokens.")
    trained_per_million: float = Field(2.00, ge=0, description="Per million tokens trained on.")
    compute_per_hour: float = Field(0.50, ge=0, description="Per hour of fine-tuning compute.")
    storage_per_gb_month: float = Field(0.02, ge=0, description="Per GB of stored artifacts per 30 days.")


class DayUsage(BaseModel):
    """One tenant's usage on one UTC day and what it costs."""

    date: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    trained_tokens: int = 0
    compute_seconds: float = 0.0
    requests: int = 0
    storage_bytes: int = Field(0, description="Bytes stored at the end of the day.")
    cost: float = 0.0


def day_of(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d")


def month_start(timestamp: float | None = None) -> float:
    moment = datetime.fromtimestamp(time.time() if timestamp is None else timestamp, UTC)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC).timestamp()


def next_month_start(timestamp: float | None = None) -> float:
    moment = datetime.fromtimestamp(time.time() if timestamp is None else timestamp, UTC)
    days = calendar.monthrange(moment.year, moment.month)[1]
    return month_start(timestamp) + days * _DAY


class Usage:
    """Usage records of every tenant: write them, sum them per day, and check the quotas."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, tenant_id: str, kind: str, **amounts: Any) -> None:
        """Add one record (`prompt_tokens=…, completion_tokens=…, model=…, key_id=…`, …)."""
        with self.db.session() as session:
            record_usage(session, tenant_id, kind, **amounts)

    def daily(
        self, tenant_id: str, *, start: float, end: float, prices: PriceTable | None = None
    ) -> list[DayUsage]:
        """Usage per UTC day in [start, end), each day's cost by `prices`; days without usage are left out."""
        prices = prices or PriceTable()
        with self.db.session() as session:
            rows = session.scalars(
                select(UsageRecord)
                .where(UsageRecord.tenant_id == tenant_id, UsageRecord.created_at < end)
                .order_by(UsageRecord.created_at)
            ).all()
        days: dict[str, DayUsage] = {}
        stored = 0
        for row in rows:
            stored += row.storage_bytes
            if row.created_at < start:
                continue
            day = days.setdefault(day_of(row.created_at), DayUsage(date=day_of(row.created_at)))
            day.prompt_tokens += row.prompt_tokens
            day.completion_tokens += row.completion_tokens
            day.trained_tokens += row.trained_tokens
            day.compute_seconds += row.compute_seconds
            day.requests += row.kind == "inference"
            day.storage_bytes = stored
        for day in days.values():
            day.cost = round(
                day.prompt_tokens / 1e6 * prices.prompt_per_million
                + day.completion_tokens / 1e6 * prices.completion_per_million
                + day.trained_tokens / 1e6 * prices.trained_per_million
                + day.compute_seconds / 3600 * prices.compute_per_hour
                + day.storage_bytes / 1e9 * prices.storage_per_gb_month / 30,
                6,
            )
        return list(days.values())

    def check_tokens(self, tenant_id: str) -> None:
        """`QuotaExceededError` if the tenant has used its monthly tokens."""
        with self.db.session() as session:
            check_monthly_tokens(session, session.get_one(Tenant, tenant_id))


def record_usage(session: Session, tenant_id: str, kind: str, **amounts: Any) -> None:
    if kind not in USAGE_KINDS:
        raise ValueError(f"usage kind {kind!r} is not one of {USAGE_KINDS}")
    session.add(UsageRecord(tenant_id=tenant_id, kind=kind, **amounts))


def tokens_this_month(session: Session, tenant_id: str) -> int:
    total = session.scalar(
        select(
            func.coalesce(
                func.sum(
                    UsageRecord.prompt_tokens + UsageRecord.completion_tokens + UsageRecord.trained_tokens
                ),
                0,
            )
        ).where(UsageRecord.tenant_id == tenant_id, UsageRecord.created_at >= month_start())
    )
    return int(total or 0)


def check_monthly_tokens(session: Session, tenant: Tenant) -> None:
    if tenant.max_monthly_tokens is None:
        return
    used = tokens_this_month(session, tenant.id)
    if used >= tenant.max_monthly_tokens:
        raise QuotaExceededError(
            f"tenant {tenant.name!r} has used {used:,} of its {tenant.max_monthly_tokens:,} tokens "
            "this month",
            retry_after=max(1.0, next_month_start() - time.time()),
        )


def check_concurrent_jobs(session: Session, tenant: Tenant) -> None:
    if tenant.max_concurrent_jobs is None:
        return
    active = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.tenant_id == tenant.id, Job.status.in_(("queued", "running")))
    )
    if (active or 0) >= tenant.max_concurrent_jobs:
        raise QuotaExceededError(
            f"tenant {tenant.name!r} has {active} jobs queued or running; its quota is "
            f"{tenant.max_concurrent_jobs}. Wait for one to finish or cancel one",
            retry_after=60.0,
        )


def stored_bytes(session: Session, tenant_id: str) -> int:
    versions = session.scalar(
        select(func.coalesce(func.sum(AdapterVersion.bytes), 0)).where(AdapterVersion.tenant_id == tenant_id)
    )
    datasets = session.scalar(
        select(func.coalesce(func.sum(Dataset.bytes), 0)).where(Dataset.tenant_id == tenant_id)
    )
    return int(versions or 0) + int(datasets or 0)


def lock_tenant(session: Session, tenant_id: str) -> Tenant:
    """The tenant's row, locked until the transaction ends: a quota's check and the row it admits are one
    step, even for replicas admitting work at once. PostgreSQL's `FOR NO KEY UPDATE` still lets other
    transactions insert rows that reference the tenant (usage, the request log); SQLite's
    `BEGIN IMMEDIATE` already holds the write lock."""
    return session.get_one(Tenant, tenant_id, with_for_update={"key_share": True})


def check_storage(session: Session, tenant: Tenant, *, new_bytes: int, new_adapter: bool) -> None:
    """Refuse a new artifact of `new_bytes` (and a new adapter name) beyond the tenant's storage quotas."""
    if new_adapter and tenant.max_adapters is not None:
        count = session.scalar(
            select(func.count()).select_from(Adapter).where(Adapter.tenant_id == tenant.id)
        )
        if (count or 0) >= tenant.max_adapters:
            raise QuotaExceededError(
                f"tenant {tenant.name!r} stores {count} adapters; its quota is {tenant.max_adapters}. "
                "Delete an adapter first",
                retry_after=3600.0,
            )
    if tenant.max_storage_bytes is not None:
        used = stored_bytes(session, tenant.id)
        if used + new_bytes > tenant.max_storage_bytes:
            raise QuotaExceededError(
                f"tenant {tenant.name!r} stores {used:,} bytes; {new_bytes:,} more would pass its quota "
                f"of {tenant.max_storage_bytes:,}. Delete versions or datasets first",
                retry_after=3600.0,
            )
