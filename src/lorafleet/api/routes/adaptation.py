"""An adapter's adaptation (`/v1/adapters/{name}/…`): the policy on each watched alias, what its monitor
sees now, and the rollouts the controller ran (`rollout.controller`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from lorafleet.api.deps import CallerDep, RegistryDep, TenantDep
from lorafleet.api.errors import error_responses
from lorafleet.api.routes.fine_tuning import check_recipe
from lorafleet.errors import ConfigError
from lorafleet.registry.tables import AdaptationPolicyRow, Rollout
from lorafleet.rollout.policy import AdaptationPolicy

router = APIRouter(prefix="/v1/adapters", tags=["adaptation"])


class PolicyPublic(BaseModel):
    object: str = "adapter.adaptation_policy"
    adapter: str
    alias: str
    policy: dict[str, Any] = Field(description="The policy: triggers, train, gate, canary, validator.")
    actor: str = Field(description="Who set it last.")
    updated_at: int
    status: dict[str, Any] | None = Field(
        None,
        description="What the controller saw last: state (watching, waiting, training, canary), the "
        "monitor's requests, drift p-value and classifier AUC of the last window, windows tested and "
        "drifted, feedback quality, validator pass rate, error rate, latency p50/p95; null before it looked.",
    )
    status_at: int | None = None

    @classmethod
    def of(cls, name: str, row: AdaptationPolicyRow) -> PolicyPublic:
        return cls(
            adapter=name,
            alias=row.alias,
            policy=row.spec,
            actor=row.actor,
            updated_at=int(row.updated_at),
            status=row.status,
            status_at=int(row.status_at) if row.status_at is not None else None,
        )


class PolicyList(BaseModel):
    object: str = "list"
    data: list[PolicyPublic]


class RolloutPublic(BaseModel):
    id: str
    object: str = "adapter.rollout"
    alias: str
    state: str = Field(description="waiting, training, canary (under way); promoted, rolled_back, failed.")
    trigger: dict[str, Any] = Field(description="What fired (drift or quality) and its figures.")
    from_version_id: str
    job_id: str | None
    candidate_version_id: str | None
    canary_started_at: int | None
    outcome: str | None = Field(description="Why it ended.")
    created_at: int
    finished_at: int | None

    @classmethod
    def of(cls, row: Rollout) -> RolloutPublic:
        return cls(
            id=row.id,
            alias=row.alias,
            state=row.state,
            trigger=row.trigger,
            from_version_id=row.from_version_id,
            job_id=row.job_id,
            candidate_version_id=row.candidate_version_id,
            canary_started_at=_seconds(row.canary_started_at),
            outcome=row.outcome,
            created_at=int(row.created_at),
            finished_at=_seconds(row.finished_at),
        )


class RolloutList(BaseModel):
    object: str = "list"
    data: list[RolloutPublic]


@router.put("/{name}/policies/{alias}", response_model=PolicyPublic)
def set_policy(
    name: str,
    alias: str,
    body: dict[str, Any],
    request: Request,
    tenant: TenantDep,
    caller: CallerDep,
    registry: RegistryDep,
) -> PolicyPublic:
    """Set (or replace) the adaptation policy on an alias: when to retrain, on what, the gate, the canary.

    The body is the policy (`alias` may be left out; given, it must be the path's). Its job recipe is
    checked as a fine-tuning job's would be; a bad field is a 400 naming it (`policy.canary.percent`).
    """
    if body.get("alias", alias) != alias:
        raise ConfigError(f"policy.alias: {body['alias']!r} is not the path's alias {alias!r}", field="alias")
    policy = AdaptationPolicy.parse({**body, "alias": alias})
    settings = request.app.state.settings
    skeleton = request.app.state.base_skeleton()
    try:
        check_recipe(policy.train.job_recipe(), settings.base_model, skeleton, with_parent=True)
    except ConfigError as err:  # the jobs API's names, inside the policy
        raise ConfigError(f"policy.train.{err}", field=f"policy.train.{err.field or 'recipe'}") from None
    registry.adaptation.set_policy(tenant, name, policy, actor=caller.actor)
    return PolicyPublic.of(name, registry.adaptation.policy(tenant, name, alias))


@router.get("/{name}/policies", response_model=PolicyList)
def list_policies(name: str, tenant: TenantDep, registry: RegistryDep) -> PolicyList:
    """The adapter's adaptation policies, one per watched alias, with what each monitor sees now."""
    return PolicyList(data=[PolicyPublic.of(name, row) for row in registry.adaptation.policies(tenant, name)])


@router.get("/{name}/policies/{alias}", response_model=PolicyPublic)
def get_policy(name: str, alias: str, tenant: TenantDep, registry: RegistryDep) -> PolicyPublic:
    """The policy on one alias and what its monitor sees now."""
    return PolicyPublic.of(name, registry.adaptation.policy(tenant, name, alias))


@router.delete("/{name}/policies/{alias}", response_model=PolicyPublic, responses=error_responses(409))
def delete_policy(
    name: str, alias: str, tenant: TenantDep, caller: CallerDep, registry: RegistryDep
) -> PolicyPublic:
    """Stop adapting an alias; 409 while one of its rollouts is under way."""
    return PolicyPublic.of(name, registry.adaptation.clear_policy(tenant, name, alias, actor=caller.actor))


@router.get("/{name}/rollouts", response_model=RolloutList)
def list_rollouts(
    name: str,
    tenant: TenantDep,
    registry: RegistryDep,
    limit: int = Query(20, ge=1, le=100, description="Most rollouts listed, newest first."),
) -> RolloutList:
    """The adapter's rollouts, newest first: what triggered each, its job, its canary and how it ended."""
    return RolloutList(
        data=[RolloutPublic.of(r) for r in registry.adaptation.rollouts(tenant, name, limit=limit)]
    )


def _seconds(value: float | None) -> int | None:
    return int(value) if value is not None else None
