"""Job pages: the list with a form that starts a job, one job with its events and a loss curve that
grows while it trains (server-sent events), and cancel.

The stream (`/ui/jobs/{id}/stream`) sends the job's events after `Last-Event-ID` (or `?after=`) as
they are written, each with its event id, so a reconnecting browser resumes where it stopped; it ends
with an `end` event once the job has finished, and closes itself after `STREAM_SECONDS` (the browser
reconnects) so no request outlives the server's shutdown by long.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from lorafleet.api.errors import validation_error
from lorafleet.api.routes import fine_tuning as api
from lorafleet.api.routes.files import list_files
from lorafleet.errors import ConfigError
from lorafleet.registry import Registry
from lorafleet.registry.tables import FINISHED_STATES, JobEvent
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

router = APIRouter(prefix="/ui/jobs", route_class=PageRoute, include_in_schema=False)
STREAM_SECONDS = 60.0
POLL_SECONDS = 0.5
CURVE_POINTS = 2000  # the most loss points a job page draws


@router.get("", response_class=HTMLResponse)
def job_list(
    request: Request,
    session: PageSessionDep,
    tenant: PageTenantDep,
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    registry = registry_of(request)
    page = api.list_jobs(tenant, registry, after=after, limit=PAGE_SIZE)
    files = [
        f for f in list_files(tenant, registry, after=None, limit=10_000).data if f.purpose == "fine-tune"
    ]
    return render(
        request,
        "jobs.html",
        session,
        jobs=page.data,
        has_more=page.has_more,
        after=after,
        files=files,
        base_model=request.app.state.settings.base_model,
    )


@router.post("", response_class=HTMLResponse)
def start_job(request: Request, tenant: PageTenantDep, form: CheckedFormDep) -> Response:
    """Queue a job through the API's own checks; a bad field is the error page naming it."""
    recipe_text = str(form.get("recipe") or "").strip()
    try:
        recipe = json.loads(recipe_text) if recipe_text else {}
    except json.JSONDecodeError as err:
        raise ConfigError(f"recipe: not JSON ({err.msg} at line {err.lineno})", field="recipe") from None
    fields: dict[str, Any] = {
        "model": request.app.state.settings.base_model,
        "training_file": form.get("training_file"),
        "adapter": form.get("adapter") or None,
        "parent": form.get("parent") or None,
        "recipe": recipe,
    }
    try:
        body = api.JobCreate.model_validate(fields)
    except ValidationError as err:
        raise validation_error(list(err.errors())) from None
    job = api.create_job(body, request, tenant, registry_of(request))
    return back_to(f"/ui/jobs/{job.id}")


@router.get("/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str, session: PageSessionDep, tenant: PageTenantDep) -> Response:
    registry = registry_of(request)
    job = api.get_job(job_id, tenant, registry)
    events = registry.jobs.events(tenant, job_id, limit=CURVE_POINTS, newest_first=True)[::-1]
    points = [point for event in events if (point := _point(event)) is not None]
    return render(
        request,
        "job.html",
        session,
        job=job,
        finished=job.status in FINISHED_STATES,
        events=[e for e in events if e.type != "metrics"][-PAGE_SIZE:],
        points=points,
        last_event=events[-1].id if events else 0,
    )


@router.get("/{job_id}/stream")
def job_stream(
    request: Request,
    job_id: str,
    _session: PageSessionDep,
    tenant: PageTenantDep,
    after: Annotated[int | None, Query(ge=0, le=2**62)] = None,
    last_event_id: Annotated[str | None, Header(max_length=20)] = None,
) -> StreamingResponse:
    registry = registry_of(request)
    registry.jobs.get(tenant, job_id)  # another tenant's job is a 404 before the stream starts
    if last_event_id is not None and last_event_id.isdigit():
        after = int(last_event_id)
    return StreamingResponse(
        _events(registry, tenant, job_id, after or 0),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.post("/{job_id}/cancel", response_class=HTMLResponse)
def cancel(request: Request, job_id: str, tenant: PageTenantDep, _form: CheckedFormDep) -> Response:
    api.cancel_job(job_id, tenant, registry_of(request))
    return back_to(f"/ui/jobs/{job_id}")


async def _events(registry: Registry, tenant: str, job_id: str, after: int) -> AsyncIterator[str]:
    """Server-sent events: the job's new events as they come, then `end` once it has finished. The wait
    between looks is on the event loop, so an open job page holds no worker thread."""
    deadline = time.monotonic() + STREAM_SECONDS
    yield "retry: 1000\n\n"
    while time.monotonic() < deadline:
        status, events = await run_in_threadpool(_look, registry, tenant, job_id, after)
        for event in events:
            after = event.id
            payload = {"type": event.type, "message": event.message, "point": _point(event), "status": status}
            yield f"id: {event.id}\nevent: job\ndata: {json.dumps(payload)}\n\n"
        if status in FINISHED_STATES:
            yield f"event: end\ndata: {json.dumps({'status': status})}\n\n"
            return
        await asyncio.sleep(POLL_SECONDS)


def _look(registry: Registry, tenant: str, job_id: str, after: int) -> tuple[str, list[JobEvent]]:
    """The job's status, then its events after `after` (status first: no event written before a finish
    is missed)."""
    status = registry.jobs.get(tenant, job_id).status
    return status, registry.jobs.events(tenant, job_id, after=after, limit=500)


def _point(event: JobEvent) -> list[float] | None:
    """A metrics event as a loss-curve point `[step, loss]`; None for other events."""
    data = event.data or {}
    step, loss = data.get("step"), data.get("loss")
    if event.type != "metrics" or not isinstance(step, int) or not isinstance(loss, int | float):
        return None
    return [float(step), float(loss)]
