"""A version's model card (`GET /v1/adapters/{name}/versions/{v}/card`): Markdown for a reviewer.

Gathered through the API's own route functions (the version with its lineage evaluation, the gate
report, the exports, the training file), so the card shows exactly what those routes answer.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from lorafleet.api.deps import RegistryDep, TenantDep
from lorafleet.api.routes.adapters import get_version
from lorafleet.api.routes.evaluation import gate_report
from lorafleet.api.routes.exports import list_exports
from lorafleet.api.routes.files import get_file
from lorafleet.errors import NotFoundError
from lorafleet.evaluation.card import CardFacts, render_card

router = APIRouter(prefix="/v1/adapters", tags=["evaluation"])
MARKDOWN = "text/markdown; charset=utf-8"


@router.get(
    "/{name}/versions/{version}/card",
    response_class=PlainTextResponse,
    responses={200: {"content": {MARKDOWN: {"schema": {"type": "string"}}}}},
)
def get_card(name: str, version: str, tenant: TenantDep, registry: RegistryDep) -> PlainTextResponse:
    """The version's model card as Markdown: base, data lineage (with the training file's scrubbing
    report), training, evaluation and forgetting, fairness, the gate's checks, exports."""
    row = get_version(name, version, tenant, registry)
    facts = CardFacts(
        version=row.model_dump(),
        lineage=row.lineage_evaluation,
        gate=gate_report(name, version, tenant, registry).model_dump(),
        dataset=_dataset(row.training_file, tenant, registry),
        job={"recipe": registry.jobs.get(tenant, row.job_id).recipe} if row.job_id else None,
        exports=[e.model_dump() for e in list_exports(name, version, tenant, registry).data],
    )
    return PlainTextResponse(render_card(facts), media_type=MARKDOWN)


def _dataset(file_id: str | None, tenant: str, registry: RegistryDep) -> dict[str, object] | None:
    """The training file's record, or None when it is unknown or was deleted since."""
    if file_id is None:
        return None
    try:
        return get_file(file_id, tenant, registry).model_dump()
    except NotFoundError:
        return None
