"""The usage page: tokens, compute, storage and their cost per UTC day (a chart and a table), and the
tenant's quotas; read through `GET /v1/usage`'s own route."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from lorafleet.api.routes.usage import get_usage
from lorafleet.registry import Quotas
from lorafleet.ui.pages import PageRoute, PageSessionDep, PageTenantDep, registry_of, render, session_tenant

router = APIRouter(prefix="/ui/usage", route_class=PageRoute, include_in_schema=False)
Day = Annotated[str | None, Query(max_length=10)]


@router.get("", response_class=HTMLResponse)
def usage_page(
    request: Request, session: PageSessionDep, tenant: PageTenantDep, start: Day = None, end: Day = None
) -> Response:
    report = get_usage(request, tenant, registry_of(request), start=start, end=end)
    quotas = Quotas.model_validate(session_tenant(request), from_attributes=True)
    return render(
        request,
        "usage.html",
        session,
        report=report,
        quotas=quotas,
        chart={"days": [d.date for d in report.data], "cost": [d.cost for d in report.data]},
    )
