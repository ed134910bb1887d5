"""The monitors page: every watched alias of the tenant with what its monitor saw last (drift, quality,
canary share and verdict), the rollouts under way or ended, and the tenant's canaries and experiments."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from lorafleet.api.routes import adaptation, splits
from lorafleet.ui.pages import PageRoute, PageSessionDep, PageTenantDep, registry_of, render

router = APIRouter(prefix="/ui/monitors", route_class=PageRoute, include_in_schema=False)


@router.get("", response_class=HTMLResponse)
def monitors_page(request: Request, session: PageSessionDep, tenant: PageTenantDep) -> Response:
    registry = registry_of(request)
    watched = sorted({w.adapter for w in registry.adaptation.watched(tenant)})
    return render(
        request,
        "monitors.html",
        session,
        policies=[p for name in watched for p in adaptation.list_policies(name, tenant, registry).data],
        rollouts={name: adaptation.list_rollouts(name, tenant, registry, limit=5).data for name in watched},
        canaries=registry.routing.canaries(tenant),
        experiments=splits.list_experiments(tenant, registry).data,
    )
