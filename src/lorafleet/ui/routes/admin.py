"""The admin's pages (admin key only): tenants, a tenant's quotas and API keys; through `/v1/tenants`'
own route functions, so the same checks apply (a quota out of range is the same 400 naming it)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from lorafleet.api.deps import Caller
from lorafleet.api.errors import validation_error
from lorafleet.api.routes import tenants as api
from lorafleet.registry import Quotas
from lorafleet.ui.pages import (
    CheckedFormDep,
    PageAdminDep,
    PageRoute,
    PageSessionDep,
    back_to,
    registry_of,
    render,
)
from lorafleet.ui.session import UiSession

router = APIRouter(prefix="/ui/admin", route_class=PageRoute, include_in_schema=False)


@router.get("", response_class=HTMLResponse)
def tenants_page(request: Request, session: PageSessionDep, admin: PageAdminDep) -> Response:
    return render(request, "admin.html", session, tenants=api.list_tenants(admin, registry_of(request)).data)


@router.post("/tenants", response_class=HTMLResponse)
def create_tenant(request: Request, admin: PageAdminDep, form: CheckedFormDep) -> Response:
    try:
        body = api.TenantCreate(name=str(form.get("name") or ""))
    except ValidationError as err:
        raise validation_error(list(err.errors())) from None
    tenant = api.create_tenant(body, admin, registry_of(request))
    return back_to(f"/ui/admin/tenants/{tenant.id}")


@router.get("/tenants/{tenant}", response_class=HTMLResponse)
def tenant_page(request: Request, tenant: str, session: PageSessionDep, admin: PageAdminDep) -> Response:
    return _tenant_page(request, tenant, session, admin)


@router.post("/tenants/{tenant}/quotas", response_class=HTMLResponse)
def set_quotas(request: Request, tenant: str, admin: PageAdminDep, form: CheckedFormDep) -> Response:
    """Set every quota from the form; an empty field is unlimited."""
    values = {name: form.get(name) or None for name in Quotas.model_fields}
    try:
        quotas = Quotas.model_validate(values)
    except ValidationError as err:
        raise validation_error(list(err.errors())) from None
    api.set_quotas(tenant, quotas, admin, registry_of(request))
    return back_to(f"/ui/admin/tenants/{tenant}")


@router.post("/tenants/{tenant}/keys", response_class=HTMLResponse)
def create_key(
    request: Request, tenant: str, session: PageSessionDep, admin: PageAdminDep, form: CheckedFormDep
) -> Response:
    """A new key, whose secret this one answer shows (it is not stored)."""
    try:
        body = api.KeyCreate(name=str(form.get("name") or "default"))
    except ValidationError as err:
        raise validation_error(list(err.errors())) from None
    key = api.create_key(tenant, body, admin, registry_of(request))
    return _tenant_page(request, tenant, session, admin, new_key=key.key)


@router.post("/tenants/{tenant}/keys/{key_id}/revoke", response_class=HTMLResponse)
def revoke_key(
    request: Request, tenant: str, key_id: str, admin: PageAdminDep, _form: CheckedFormDep
) -> Response:
    api.revoke_key(tenant, key_id, admin, registry_of(request))
    return back_to(f"/ui/admin/tenants/{tenant}")


def _tenant_page(
    request: Request, tenant: str, session: UiSession, admin: Caller, *, new_key: str | None = None
) -> Response:
    registry = registry_of(request)
    return render(
        request,
        "tenant.html",
        session,
        subject=api.get_tenant(tenant, admin, registry),
        keys=api.list_keys(tenant, admin, registry).data,
        new_key=new_key,
    )
