"""Adapter pages: the list, one adapter (versions, aliases with promote and roll back, monitors and
rollouts, audit history), one version (metrics, lineage, gate and forgetting reports, exports, download).

Each page reads through the API's own route functions, with the session's tenant: the same registry
calls, the same scoping, the same errors (another tenant's adapter is a 404 page).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse

from lorafleet.api.errors import ApiError
from lorafleet.api.routes import adaptation, exports, splits
from lorafleet.api.routes import adapters as api
from lorafleet.errors import ConfigError, LorafleetError, NotFoundError
from lorafleet.ui.pages import (
    PAGE_SIZE,
    CheckedFormDep,
    PageRoute,
    PageSessionDep,
    PageTenantDep,
    back_to,
    page_caller,
    registry_of,
    render,
)
from lorafleet.ui.session import UiSession

router = APIRouter(prefix="/ui/adapters", route_class=PageRoute, include_in_schema=False)
MATRIX_ROWS = 20  # the newest versions of a lineage shown in the forgetting matrix
After = Annotated[str | None, Query(max_length=64)]
AfterNumber = Annotated[int | None, Query(ge=0, le=2**31 - 1)]


@router.get("", response_class=HTMLResponse)
def adapter_list(
    request: Request, session: PageSessionDep, tenant: PageTenantDep, after: After = None
) -> Response:
    page = api.list_adapters(tenant, registry_of(request), after=after, limit=PAGE_SIZE)
    return render(request, "adapters.html", session, adapters=page.data, has_more=page.has_more, after=after)


@router.get("/{name}", response_class=HTMLResponse)
def adapter_page(
    request: Request, name: str, session: PageSessionDep, tenant: PageTenantDep, after: AfterNumber = None
) -> Response:
    return _adapter_page(request, name, session, tenant, after=after)


def _adapter_page(
    request: Request,
    name: str,
    session: UiSession,
    tenant: str,
    *,
    after: int | None = None,
    failure: ApiError | None = None,
) -> Response:
    registry = registry_of(request)
    adapter = registry.adapters.get(tenant, name)
    versions = api.list_versions(name, tenant, registry, after=after, limit=PAGE_SIZE)
    try:
        canary: splits.CanaryPublic | None = splits.get_canary(name, tenant, registry, model=None)
    except NotFoundError:
        canary = None
    return render(
        request,
        "adapter.html",
        session,
        failure=failure,
        adapter=adapter,
        aliases=registry.adapters.aliases(tenant, name),
        versions=versions.data,
        has_more=versions.has_more,
        after=after,
        history=list(reversed(api.alias_history(name, tenant, registry).data))[:PAGE_SIZE],
        events=list(reversed(api.adapter_events(name, tenant, registry, since_id=None).data))[:PAGE_SIZE],
        policies=adaptation.list_policies(name, tenant, registry).data,
        rollouts=adaptation.list_rollouts(name, tenant, registry, limit=10).data,
        canary=canary,
    )


@router.post("/{name}/promote", response_class=HTMLResponse)
def promote(
    request: Request, name: str, session: PageSessionDep, tenant: PageTenantDep, form: CheckedFormDep
) -> Response:
    """Point the form's alias at its version (gated: a refusal shows the gate's verdict on the page)."""
    alias = str(form.get("alias") or "production")
    number = str(form.get("version") or "")
    if not (number.isascii() and number.isdigit()):
        raise ConfigError(f"version: {number!r} is not a version number", field="version")
    body = api.Promotion(version=int(number), force=form.get("force") == "on")
    try:
        api.promote(name, alias, body, tenant, page_caller(session), registry_of(request))
    except LorafleetError as err:
        return _adapter_page(request, name, session, tenant, failure=ApiError.of(err))
    return back_to(f"/ui/adapters/{name}")


@router.post("/{name}/aliases/{alias}/rollback", response_class=HTMLResponse)
def rollback(
    request: Request,
    name: str,
    alias: str,
    session: PageSessionDep,
    tenant: PageTenantDep,
    _form: CheckedFormDep,
) -> Response:
    try:
        api.rollback(name, alias, tenant, page_caller(session), registry_of(request))
    except LorafleetError as err:
        return _adapter_page(request, name, session, tenant, failure=ApiError.of(err))
    return back_to(f"/ui/adapters/{name}")


@router.get("/{name}/versions/{version}", response_class=HTMLResponse)
def version_page(
    request: Request, name: str, version: str, session: PageSessionDep, tenant: PageTenantDep
) -> Response:
    registry = registry_of(request)
    answer = api.get_version(name, version, tenant, registry)
    moves = [m for m in api.alias_history(name, tenant, registry).data if m.to_version == answer.version]
    matrix = (answer.lineage_evaluation or {}).get("matrix") or {"versions": [], "scores": []}
    return render(
        request,
        "version.html",
        session,
        version=answer,
        gate_reports=[m for m in moves if m.report is not None],
        exports=exports.list_exports(name, version, tenant, registry).data,
        lineage=matrix["versions"],  # the chain's labels, oldest first, as lineage_evaluation read them
        matrix_rows=list(zip(matrix["versions"], matrix["scores"], strict=True))[-MATRIX_ROWS:],
    )


@router.get("/{name}/versions/{version}/download")
def download(
    request: Request, name: str, version: str, _session: PageSessionDep, tenant: PageTenantDep
) -> StreamingResponse:
    return api.download_version(name, version, tenant, registry_of(request))


@router.get("/{name}/versions/{version}/exports/{export_id}/download")
def download_export(
    request: Request, name: str, version: str, export_id: str, _session: PageSessionDep, tenant: PageTenantDep
) -> StreamingResponse:
    return exports.download_export(name, version, export_id, tenant, registry_of(request))
