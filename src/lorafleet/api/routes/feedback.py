"""Feedback on completions (`/v1/feedback`), and the training file that corrections become.

Every completion served to a tenant is in the request log under its response's `id` (`chatcmpl-…`,
`cmpl-…`) for the server's retention (`request_log_days`). Feedback names one of them and gives a
`score` in [0, 1], a `label` and/or a `correction` (the answer it should have given). Another tenant's
completion is answered exactly as an unknown id, 404. `POST /v1/feedback/corrections/export` stores the
latest correction of each completion whose text was logged as a fine-tune file (`/v1/files`), ready to
be a job's `training_file`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from lorafleet.api.deps import CallerDep, RegistryDep, TenantDep
from lorafleet.api.errors import error_responses
from lorafleet.api.routes.files import FilePublic
from lorafleet.errors import ConflictError, NotFoundError
from lorafleet.monitoring.requests import RequestLogWriter, store_corrections
from lorafleet.registry.tables import Feedback

router = APIRouter(prefix="/v1/feedback", tags=["feedback"])
MAX_CORRECTION = 100_000  # characters


class FeedbackCreate(BaseModel):
    """Feedback on one completion: at least one of score, label and correction."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    completion_id: str = Field(
        min_length=1, max_length=64, description="The completion's `id`, as its response gave it."
    )
    score: float | None = Field(None, ge=0.0, le=1.0, description="How good the answer was, 0 to 1.")
    label: str | None = Field(
        None, min_length=1, max_length=64, description="A category of your own: `wrong_field`, `rude`, …"
    )
    correction: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_CORRECTION,
        description="The answer it should have given; exported as a training row.",
    )

    @field_validator("label", "correction")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("is blank")
        return value


class FeedbackPublic(BaseModel):
    id: str
    object: str = "feedback"
    completion_id: str
    score: float | None
    label: str | None
    correction: str | None
    key_id: str | None = Field(description="The API key that sent it; null: the admin key.")
    created_at: int

    @classmethod
    def of(cls, feedback: Feedback) -> FeedbackPublic:
        return cls(
            id=feedback.id,
            completion_id=feedback.completion_id,
            score=feedback.score,
            label=feedback.label,
            correction=feedback.correction,
            key_id=feedback.key_id,
            created_at=int(feedback.created_at),
        )


class FeedbackList(BaseModel):
    object: str = "list"
    data: list[FeedbackPublic]
    has_more: bool = Field(False, description="More feedback follows: ask again with `after` = the last id.")


class CorrectionsExport(BaseModel):
    """Which corrections to export."""

    model_config = ConfigDict(extra="forbid")

    adapter: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="Only completions served by a version of this adapter (null: every completion).",
    )


class SkippedCorrection(BaseModel):
    completion_id: str
    reason: str = Field(description="Why the data layer refuses its training row.")


class CorrectionsFile(FilePublic):
    """The stored fine-tune file (OpenAI's file object), and the corrections left out of it."""

    skipped: list[SkippedCorrection] = Field(
        default_factory=list, description="Corrected completions whose row would not be a valid training row."
    )


@router.post("", response_model=FeedbackPublic, status_code=201)
def create_feedback(
    body: FeedbackCreate, caller: CallerDep, tenant: TenantDep, registry: RegistryDep, request: Request
) -> FeedbackPublic:
    """Score, label or correct one of the tenant's completions (by its response `id`)."""

    def add() -> Feedback:
        return registry.requests.add_feedback(
            tenant,
            body.completion_id,
            score=body.score,
            label=body.label,
            correction=body.correction,
            key_id=caller.key_id,
        )

    return FeedbackPublic.of(_written_first(request, add))


@router.get("", response_model=FeedbackList)
def list_feedback(
    tenant: TenantDep,
    registry: RegistryDep,
    completion_id: str | None = Query(None, max_length=64, description="Only feedback on this completion."),
    after: str | None = Query(None, max_length=40, description="Id of the previous page's last feedback."),
    limit: int = Query(100, ge=1, le=1000, description="Most feedback in the page."),
) -> FeedbackList:
    """The tenant's feedback, oldest first, a page at a time (OpenAI's cursor pagination)."""
    rows, more = registry.requests.feedback(tenant, completion_id=completion_id, after=after, limit=limit)
    return FeedbackList(data=[FeedbackPublic.of(row) for row in rows], has_more=more)


@router.post(
    "/corrections/export", response_model=CorrectionsFile, status_code=201, responses=error_responses(409)
)
def export_corrections(
    tenant: TenantDep, registry: RegistryDep, request: Request, body: CorrectionsExport | None = None
) -> CorrectionsFile:
    """Store the corrections as a fine-tune file (each row: the prompt, then the correction as the answer)."""
    adapter = body.adapter if body is not None else None
    _request_log(request).flush()  # completions served a moment ago are in it too
    pairs = registry.requests.corrections(tenant, adapter=adapter)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    name = f"corrections-{adapter}-{stamp}.jsonl" if adapter else f"corrections-{stamp}.jsonl"
    dataset, skipped = store_corrections(registry, tenant, pairs, request.app.state.tokenizer(), name=name)
    if dataset is None:
        which = f" of completions served by adapter {adapter!r}" if adapter else ""
        raise ConflictError(
            f"no corrections{which} to export: send one with POST /v1/feedback "
            "(completions logged without their text cannot be exported)"
        )
    left_out = [SkippedCorrection(completion_id=s.completion_id, reason=s.reason) for s in skipped]
    return CorrectionsFile(**FilePublic.of(dataset).model_dump(), skipped=left_out)


def _request_log(request: Request) -> RequestLogWriter:
    writer: RequestLogWriter = request.app.state.request_log
    return writer


def _written_first(request: Request, add: Callable[[], Feedback]) -> Feedback:
    """`add()`, again once the request log has written what it holds if the completion was not found:
    a completion just served may still be on its way to the database."""
    try:
        return add()
    except NotFoundError:
        if not _request_log(request).flush():
            raise
        return add()
