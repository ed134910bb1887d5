"""Usage: daily sums per UTC day, their cost from a price table, stored bytes, the monthly token quota."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lorafleet.errors import QuotaExceededError
from lorafleet.registry import PriceTable, Quotas, Registry
from lorafleet.registry.tables import Dataset, Tenant, now
from lorafleet.registry.usage import month_start, next_month_start

PRICES = PriceTable(
    prompt_per_million=1.0,
    completion_per_million=2.0,
    trained_per_million=4.0,
    compute_per_hour=3.6,
    storage_per_gb_month=3.0,
)


def at(text: str) -> float:
    """UNIX seconds of a UTC time written `2026-03-31 23:59:59`."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_daily_sums_and_costs_per_utc_day(registry: Registry, tenant: Tenant, other_tenant: Tenant) -> None:
    record = registry.usage.record
    record(tenant.id, "storage", storage_bytes=1_000_000_000, created_at=at("2026-03-30 12:00:00"))
    record(
        tenant.id,
        "inference",
        prompt_tokens=1_000_000,
        completion_tokens=500_000,
        created_at=at("2026-03-31 00:00:00"),
    )
    record(tenant.id, "inference", prompt_tokens=250_000, created_at=at("2026-03-31 10:00:00"))
    record(
        tenant.id,
        "training",
        trained_tokens=2_000_000,
        compute_seconds=1800.0,
        created_at=at("2026-03-31 20:00:00"),
    )
    record(tenant.id, "storage", storage_bytes=3_000_000_000, created_at=at("2026-03-31 23:59:59"))
    record(tenant.id, "storage", storage_bytes=-1_000_000_000, created_at=at("2026-04-01 00:00:00"))
    record(
        tenant.id, "inference", prompt_tokens=100, completion_tokens=100, created_at=at("2026-04-01 12:00:00")
    )
    record(tenant.id, "inference", prompt_tokens=10**9, created_at=at("2026-04-02 00:00:00"))  # at `end`: out
    record(other_tenant.id, "inference", prompt_tokens=10**9, created_at=at("2026-03-31 12:00:00"))

    days = registry.usage.daily(
        tenant.id, start=at("2026-03-31 00:00:00"), end=at("2026-04-02 00:00:00"), prices=PRICES
    )

    assert [d.date for d in days] == ["2026-03-31", "2026-04-01"]
    first, second = days
    assert (first.prompt_tokens, first.completion_tokens, first.trained_tokens) == (
        1_250_000,
        500_000,
        2_000_000,
    )
    assert (first.compute_seconds, first.requests, first.storage_bytes) == (1800.0, 2, 4_000_000_000)
    # prompt 1.25 M × 1 + completion 0.5 M × 2 + trained 2 M × 4 + 0.5 h × 3.6 + 4 GB × 3 / 30 days
    assert first.cost == pytest.approx(1.25 + 1.0 + 8.0 + 1.8 + 0.4)
    assert (second.prompt_tokens, second.completion_tokens, second.requests) == (100, 100, 1)
    assert second.storage_bytes == 3_000_000_000
    # 100 prompt × 1e-6 + 100 completion × 2e-6 + 3 GB × 3 / 30 days
    assert second.cost == pytest.approx(0.0001 + 0.0002 + 0.3)
    assert (
        registry.usage.daily(other_tenant.id, start=0, end=at("2026-04-02 00:00:00"))[0].prompt_tokens
        == 10**9
    )


def test_the_default_price_table(registry: Registry, tenant: Tenant) -> None:
    registry.usage.record(
        tenant.id,
        "inference",
        prompt_tokens=2_000_000,
        completion_tokens=1_000_000,
        created_at=at("2026-01-05 08:00:00"),
    )
    registry.usage.record(
        tenant.id,
        "training",
        trained_tokens=1_000_000,
        compute_seconds=7200.0,
        created_at=at("2026-01-05 09:00:00"),
    )
    [day] = registry.usage.daily(tenant.id, start=at("2026-01-05 00:00:00"), end=at("2026-01-06 00:00:00"))
    assert day.cost == pytest.approx(2 * 0.10 + 1 * 0.40 + 1 * 2.00 + 2 * 0.50)


def test_unknown_usage_kind_is_refused(registry: Registry, tenant: Tenant) -> None:
    with pytest.raises(ValueError, match="inference"):
        registry.usage.record(tenant.id, "mining", prompt_tokens=1)


def test_storage_at_day_end_follows_adds_and_deletes(
    registry: Registry,
    tenant: Tenant,
    add_dataset: Callable[..., Dataset],
    make_adapter_dir: Callable[..., Path],
) -> None:
    kept, dropped = (
        add_dataset(tenant.id, "kept.jsonl", rows=3),
        add_dataset(tenant.id, "dropped.jsonl", rows=5),
    )
    first = registry.adapters.register(
        tenant.id, "support", make_adapter_dir("a", b"a" * 100), base_model="t"
    )
    second = registry.adapters.register(
        tenant.id, "support", make_adapter_dir("b", b"b" * 300), base_model="t"
    )
    registry.datasets.delete(tenant.id, dropped.id)
    registry.adapters.delete_version(tenant.id, "support", 1)
    today = registry.usage.daily(tenant.id, start=now() - 86_400 * 2, end=now() + 1)[-1]
    assert today.storage_bytes == kept.bytes + second.bytes
    assert first.bytes < second.bytes
    registry.adapters.delete(tenant.id, "support")
    today = registry.usage.daily(tenant.id, start=now() - 86_400 * 2, end=now() + 1)[-1]
    assert today.storage_bytes == kept.bytes


def test_monthly_token_quota(registry: Registry, tenant: Tenant, add_dataset: Callable[..., Dataset]) -> None:
    dataset = add_dataset(tenant.id)
    registry.tenants.set_quotas(tenant.id, Quotas(max_monthly_tokens=1000))
    registry.usage.record(
        tenant.id, "inference", prompt_tokens=10**6, created_at=month_start() - 1
    )  # last month
    registry.usage.record(tenant.id, "inference", prompt_tokens=600, completion_tokens=299)
    registry.usage.record(tenant.id, "training", trained_tokens=100)
    registry.usage.check_tokens(tenant.id)  # 999 of 1000
    registry.usage.record(tenant.id, "inference", completion_tokens=1)
    with pytest.raises(QuotaExceededError, match="1,000 of its 1,000") as refused:
        registry.usage.check_tokens(tenant.id)
    assert 0 < refused.value.retry_after <= next_month_start() - now() + 1
    with pytest.raises(QuotaExceededError):
        registry.jobs.create(tenant.id, adapter_name="support", dataset_id=dataset.id, base_model="tiny")
    registry.tenants.set_quotas(tenant.id, Quotas(max_monthly_tokens=None))
    registry.usage.check_tokens(tenant.id)
