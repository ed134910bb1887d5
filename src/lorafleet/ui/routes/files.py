"""The files page: the tenant's uploads and an upload form checked exactly as `POST /v1/files` checks,
so a bad row is named by file and line on the page and nothing is stored."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from lorafleet.api.errors import ApiError
from lorafleet.api.routes import files as api
from lorafleet.errors import DataError, LorafleetError
from lorafleet.ui.pages import (
    PAGE_SIZE,
    CheckedFormDep,
    PageRoute,
    PageSessionDep,
    PageTenantDep,
    back_to,
    registry_of,
    render,
)
from lorafleet.ui.session import UiSession

router = APIRouter(prefix="/ui/files", route_class=PageRoute, include_in_schema=False)


@router.get("", response_class=HTMLResponse)
def file_list(
    request: Request,
    session: PageSessionDep,
    tenant: PageTenantDep,
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    return _files_page(request, session, tenant, after=after)


@router.post("", response_class=HTMLResponse)
async def upload(
    request: Request, session: PageSessionDep, tenant: PageTenantDep, form: CheckedFormDep
) -> Response:
    file = form.get("file")
    purpose = str(form.get("purpose") or "fine-tune")
    scrub = form.get("scrub") == "on"
    try:
        if not isinstance(file, UploadFile) or not file.filename:
            raise DataError("choose a file to upload", field="file")
        # the check tokenizes every row: off the event loop
        await run_in_threadpool(
            api.add_file,
            request,
            tenant,
            registry_of(request),
            file.filename,
            file.file,
            purpose,
            scrub=scrub,
        )
    except LorafleetError as err:
        return _files_page(request, session, tenant, failure=ApiError.of(err))
    return back_to("/ui/files")


def _files_page(
    request: Request,
    session: UiSession,
    tenant: str,
    *,
    after: str | None = None,
    failure: ApiError | None = None,
) -> Response:
    page = api.list_files(tenant, registry_of(request), after=after, limit=PAGE_SIZE)
    return render(
        request,
        "files.html",
        session,
        failure=failure,
        files=page.data,
        has_more=page.has_more,
        after=after,
        suffixes=", ".join(api.SUFFIXES),
        purposes=api.PURPOSES,
    )
