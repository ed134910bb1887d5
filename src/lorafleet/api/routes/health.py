"""Liveness (`/healthz`), readiness (`/readyz`: database and engine up) and Prometheus `/metrics`."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy import text

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


class Readiness(BaseModel):
    """What /readyz checked: each part is "ok", or why not."""

    status: Literal["ready", "not ready"]
    database: str
    engine: str | None = Field(None, description="Only when the server serves models: ok or loading.")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready: a part is down or still loading"}},
)
def readyz(request: Request) -> JSONResponse:
    """The database answers and, when the server serves models, the base model is loaded (else 503)."""
    checks: dict[str, str] = {}
    try:
        with request.app.state.registry.db.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as err:
        checks["database"] = f"error: {type(err).__name__}"
    if request.app.state.settings.serve_models:
        checks["engine"] = "ok" if request.app.state.inference is not None else "loading"
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", **checks}, status_code=200 if ready else 503
    )


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text"}
    },
)
def metrics(request: Request) -> Response:
    """Prometheus metrics: requests, latencies, engine queue and slots, jobs, tokens."""
    request.app.state.metrics.refresh()
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
