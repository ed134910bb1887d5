"""Usage and cost per tenant and day (`/v1/usage`), priced by the server's price table."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from lorafleet.api.deps import RegistryDep, TenantDep
from lorafleet.errors import ConfigError
from lorafleet.registry import DayUsage, PriceTable

router = APIRouter(prefix="/v1/usage", tags=["usage"])


class UsageReport(BaseModel):
    object: str = "usage"
    tenant_id: str
    start: str
    end: str
    currency: str
    prices: PriceTable
    data: list[DayUsage]
    total_cost: float


def _day(text: str | None, field: str, default: date) -> date:
    if text is None:
        return default
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{field}: {text!r} is not a date like 2026-11-01") from None


@router.get("", response_model=UsageReport)
def get_usage(
    request: Request,
    tenant: TenantDep,
    registry: RegistryDep,
    start: str | None = Query(None, description="First UTC day (YYYY-MM-DD); default: 30 days ago."),
    end: str | None = Query(None, description="Last UTC day, included; default: today."),
) -> UsageReport:
    """Tokens served and trained, compute seconds, stored bytes and their cost, per UTC day."""
    today = datetime.fromtimestamp(time.time(), UTC).date()
    first = _day(start, "start", today - timedelta(days=30))
    last = _day(end, "end", today)
    if last < first:
        raise ConfigError(f"end {last} is before start {first}")
    prices: PriceTable = request.app.state.settings.prices
    since = datetime(first.year, first.month, first.day, tzinfo=UTC).timestamp()
    until = datetime(last.year, last.month, last.day, tzinfo=UTC).timestamp() + 86_400
    days = registry.usage.daily(tenant, start=since, end=until, prices=prices)
    return UsageReport(
        tenant_id=tenant,
        start=first.isoformat(),
        end=last.isoformat(),
        currency=prices.currency,
        prices=prices,
        data=days,
        total_cost=round(sum(day.cost for day in days), 6),
    )
