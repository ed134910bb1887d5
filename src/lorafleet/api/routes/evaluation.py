"""An adapter's evaluation (`/v1/adapters/{name}/…`): eval suites, the promotion gate's policy, gate reports.

A suite is a file uploaded with purpose `eval` and its metric; every new version of the adapter, and of
adapters trained from it, is scored on it by the worker (scores in the version's `metrics.evaluation`).
The gate policy decides which versions an alias may point at (`POST …/aliases/{alias}` checks it).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from lorafleet.api.deps import RegistryDep, TenantDep
from lorafleet.api.errors import error_responses
from lorafleet.errors import validated
from lorafleet.evaluation.forgetting import SuiteMetric
from lorafleet.evaluation.gate import GatePolicy
from lorafleet.registry.tables import EvalSuite

router = APIRouter(prefix="/v1/adapters", tags=["evaluation"])


class SuiteCreate(BaseModel):
    file: str = Field(description="Id of a file uploaded with purpose 'eval' (held-out rows).")
    metric: SuiteMetric = Field(
        description="json_fields (field accuracy), exact_match, or perplexity (scored as 1/perplexity)."
    )


class SuitePublic(BaseModel):
    id: str
    object: str = "adapter.eval_suite"
    adapter: str
    file: str
    metric: str
    created_at: int

    @classmethod
    def of(cls, name: str, suite: EvalSuite) -> SuitePublic:
        return cls(
            id=suite.id,
            adapter=name,
            file=suite.dataset_id,
            metric=suite.metric,
            created_at=int(suite.created_at),
        )


class SuiteList(BaseModel):
    object: str = "list"
    data: list[SuitePublic]


class SuiteDeleted(BaseModel):
    id: str
    object: str = "adapter.eval_suite"
    deleted: bool = True


class GatePolicyBody(BaseModel):
    """The gate of an adapter; `policy` null removes it (promotions are then not gated)."""

    policy: dict[str, Any] | None = Field(
        description="{min_scores: {suite id or 'own': 0-1}, max_forgetting: 0-1 or {suite id: 0-1}, "
        "max_general_drift: ≥ 0, max_fairness_gap: 0-1}; null: no gate."
    )


class GatePolicyPublic(BaseModel):
    object: str = "adapter.gate_policy"
    adapter: str
    policy: GatePolicy | None


class GateCheck(BaseModel):
    check: str = Field(description="min_score, max_forgetting, max_general_drift or max_fairness_gap.")
    suite: str | None
    value: float | None = Field(
        description="The version's score, forgetting, drift or fairness gap; null if unmeasured."
    )
    limit: float
    passed: bool
    why: str


class GateReport(BaseModel):
    object: str = "adapter.gate_report"
    version: str = Field(description="`adapter@version`.")
    passed: bool
    checks: list[GateCheck]
    backward_transfer: float | None
    general_drift: float | None
    policy: GatePolicy | None


class Interval(BaseModel):
    """A mean and its 95% bootstrap interval."""

    mean: float
    low: float
    high: float


class Comparison(BaseModel):
    gap: Interval = Field(description="Mean per-row difference of the task metric (first − second).")
    similarity: Interval = Field(description="How alike the two answers read, 0-1, names masked.")
    sentiment_gap: Interval | None = Field(None, description="Difference in VADER sentiment (prose answers).")


class GroupPair(Comparison):
    a: str
    b: str
    significant: bool = Field(description="Interval excludes 0 and the gap exceeds every same-group gap.")


class FairnessReport(BaseModel):
    """`lorafleet fairness`'s report (`evaluation.fairness`): per-group scores, gaps, baselines."""

    model_config = ConfigDict(extra="forbid")

    version: int = Field(1, description="Report format.")
    metric: str
    rows: int = Field(ge=1)
    skipped_rows: int = Field(ge=0)
    interval: float = Field(gt=0, lt=1)
    groups: dict[str, Interval] = Field(min_length=2)
    baseline: dict[str, Comparison] = Field(description="Group → its two copies (two people) compared.")
    baseline_gap: float = Field(ge=0, le=1)
    pairs: list[GroupPair] = Field(min_length=1)
    max_gap: float = Field(ge=0, le=1)
    max_significant_gap: float = Field(ge=0, le=1, description="What the gate's max_fairness_gap checks.")
    suite: str | None = Field(None, description="The suite file the rows came from.")
    name_field: str | None = None


@router.put("/{name}/versions/{version}/fairness", response_model=FairnessReport)
def put_fairness(
    name: str, version: str, body: FairnessReport, tenant: TenantDep, registry: RegistryDep
) -> FairnessReport:
    """Store a version's fairness report (as `lorafleet fairness NAME@V` measured it), replacing any earlier
    one; the gate's `max_fairness_gap` reads it."""
    registry.evaluation.record_fairness(tenant, name, version, body.model_dump(exclude_none=True))
    return body


@router.post("/{name}/suites", response_model=SuitePublic, status_code=201)
def add_suite(name: str, body: SuiteCreate, tenant: TenantDep, registry: RegistryDep) -> SuitePublic:
    """Register an eval suite for an adapter (creating the adapter if it has no versions yet)."""
    return SuitePublic.of(
        name, registry.evaluation.add_suite(tenant, name, dataset_id=body.file, metric=body.metric)
    )


@router.get("/{name}/suites", response_model=SuiteList)
def list_suites(name: str, tenant: TenantDep, registry: RegistryDep) -> SuiteList:
    """The eval suites registered for the adapter itself, oldest first."""
    return SuiteList(data=[SuitePublic.of(name, s) for s in registry.evaluation.suites(tenant, name)])


@router.delete("/{name}/suites/{suite_id}", response_model=SuiteDeleted, responses=error_responses(409))
def delete_suite(name: str, suite_id: str, tenant: TenantDep, registry: RegistryDep) -> SuiteDeleted:
    """Unregister an eval suite (its file, and scores already stored, stay); 409 while a gate names it."""
    registry.evaluation.delete_suite(tenant, name, suite_id)
    return SuiteDeleted(id=suite_id)


@router.put("/{name}/gate", response_model=GatePolicyPublic)
def set_gate(name: str, body: GatePolicyBody, tenant: TenantDep, registry: RegistryDep) -> GatePolicyPublic:
    """Set or remove the adapter's promotion gate."""
    policy = _policy(body.policy) if body.policy is not None else None
    return GatePolicyPublic(adapter=name, policy=registry.evaluation.set_policy(tenant, name, policy))


@router.get("/{name}/gate", response_model=GatePolicyPublic)
def get_gate(name: str, tenant: TenantDep, registry: RegistryDep) -> GatePolicyPublic:
    """The adapter's promotion gate (null: promotions are not gated)."""
    return GatePolicyPublic(adapter=name, policy=registry.evaluation.policy(tenant, name))


@router.get("/{name}/versions/{version}/gate", response_model=GateReport)
def gate_report(name: str, version: str, tenant: TenantDep, registry: RegistryDep) -> GateReport:
    """Every check of a version against the adapter's gate: value, limit, pass or fail, and why."""
    return GateReport.model_validate(registry.evaluation.gate_report(tenant, name, version))


def _policy(fields: dict[str, Any]) -> GatePolicy:
    """`fields` as a `GatePolicy`, or a `ConfigError` naming each bad field as `policy.…`."""
    return validated(GatePolicy, "policy", **fields)
