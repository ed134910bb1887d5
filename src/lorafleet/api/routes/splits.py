"""Traffic splits: an adapter's canary (`/v1/adapters/{name}/canary`) and A/B experiments (`/v1/experiments`).

A split applies to the completions whose `model` is exactly its `model` reference (`support`, or
`support:production`; a pinned `support@3` is never split), from the very next request. Users are
assigned by their `user` field (else their API key), sticky: the same user gets the same version, and
raising a canary's percent keeps everyone already in it. Every change is an adapter event
(`GET /v1/adapters/{name}/events`) with the caller as its actor.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import AfterValidator, BaseModel, Field, field_validator

from lorafleet.api.deps import CallerDep, RegistryDep, TenantDep
from lorafleet.api.errors import ApiError, error_responses
from lorafleet.errors import InvalidNameError, NotFoundError
from lorafleet.home import validate_name
from lorafleet.serving.router import Arm, Canary, Experiment, check_percents, parse_reference

router = APIRouter(tags=["routing"])


def _reference(text: str) -> str:
    parse_reference(text)  # InvalidNameError is a ValueError: a 400 naming the field
    return text


Reference = Annotated[str, AfterValidator(_reference)]
ModelQuery = Annotated[
    str | None,
    Query(description="The reference whose canary this is: the adapter's name (default) or `name:alias`."),
]


class CanaryBody(BaseModel):
    target: Reference = Field(
        max_length=160, description="The version the canary's users get: `support@5`, or `support:staging`."
    )
    percent: float = Field(
        ge=0.0, le=100.0, description="Share of the model's users sent to the canary, in percent."
    )
    model: Reference | None = Field(
        None,
        max_length=160,
        description="The reference whose requests are sampled: the adapter's name (default) or `name:alias`.",
    )


class CanaryPublic(BaseModel):
    object: str = "adapter.canary"
    adapter: str
    model: str = Field(description="The reference whose requests are sampled.")
    target: str = Field(description="The version the canary's users get.")
    percent: float

    @classmethod
    def of(cls, name: str, canary: Canary) -> CanaryPublic:
        return cls(adapter=name, model=canary.model, target=canary.target_ref, percent=canary.percent)


class ArmBody(BaseModel):
    target: Reference = Field(max_length=160, description="The version this arm's users get: `support@4`.")
    percent: float = Field(ge=0.0, le=100.0, description="Share of users, in percent.")


class ExperimentBody(BaseModel):
    model: Reference = Field(
        max_length=160, description="The reference split: `support`, `support:production`."
    )
    arms: list[ArmBody] = Field(
        min_length=1, max_length=100, description="The arms; their percents sum to 100."
    )

    @field_validator("arms")
    @classmethod
    def _percents_sum_to_100(cls, arms: list[ArmBody]) -> list[ArmBody]:
        check_percents([arm.percent for arm in arms])
        return arms


class ExperimentPublic(BaseModel):
    object: str = "experiment"
    name: str
    model: str
    arms: list[ArmBody]

    @classmethod
    def of(cls, experiment: Experiment) -> ExperimentPublic:
        arms = [ArmBody(target=arm.target_ref, percent=arm.percent) for arm in experiment.arms]
        return cls(name=experiment.name, model=experiment.model, arms=arms)


class ExperimentList(BaseModel):
    object: str = "list"
    data: list[ExperimentPublic]


# --- canaries ----------------------------------------------------------------------------------------------


@router.get("/v1/adapters/{name}/canary", response_model=CanaryPublic)
def get_canary(name: str, tenant: TenantDep, registry: RegistryDep, model: ModelQuery = None) -> CanaryPublic:
    """The adapter's canary; 404 when it has none."""
    split = _split_model(name, model)
    registry.adapters.get(tenant, name)  # an unknown adapter (another tenant's too) is a 404 naming it
    canary = registry.routing.canary(tenant, split)
    if canary is None:
        raise NotFoundError(
            f"adapter {name!r} has no canary on {split!r}; set one with PUT /v1/adapters/{name}/canary"
        )
    return CanaryPublic.of(name, canary)


@router.put("/v1/adapters/{name}/canary", response_model=CanaryPublic, responses=error_responses(409))
def set_canary(
    name: str, body: CanaryBody, tenant: TenantDep, caller: CallerDep, registry: RegistryDep
) -> CanaryPublic:
    """Send `percent` of the adapter's users (sticky) to `target` from the next request; replaces its canary.

    The target must be one of the tenant's versions (404 otherwise). Audited as a `canary_set` event.
    """
    model = _split_model(name, body.model)
    canary = Canary(model=model, target_ref=body.target, percent=body.percent)  # the body was checked
    return CanaryPublic.of(name, registry.routing.set_canary(tenant, canary, actor=caller.actor))


@router.delete("/v1/adapters/{name}/canary", response_model=CanaryPublic)
def clear_canary(
    name: str, tenant: TenantDep, caller: CallerDep, registry: RegistryDep, model: ModelQuery = None
) -> CanaryPublic:
    """End the adapter's canary: its users route as everyone else from the next request (audited)."""
    split = _split_model(name, model)
    registry.adapters.get(tenant, name)
    return CanaryPublic.of(name, registry.routing.clear_canary(tenant, split, actor=caller.actor))


def _split_model(name: str, model: str | None) -> str:
    """The reference a canary of adapter `name` samples: `model`, which must name that adapter, or `name`."""
    if model is None:
        return name
    try:
        named = parse_reference(model).name
    except InvalidNameError as err:
        raise ApiError(400, str(err), param="model") from err
    if named != name:
        raise ApiError(400, f"model {model!r} is not a reference to adapter {name!r}", param="model")
    return model


# --- experiments -------------------------------------------------------------------------------------------


@router.get("/v1/experiments", response_model=ExperimentList)
def list_experiments(tenant: TenantDep, registry: RegistryDep) -> ExperimentList:
    """The tenant's A/B experiments."""
    return ExperimentList(data=[ExperimentPublic.of(e) for e in registry.routing.experiments(tenant)])


@router.put("/v1/experiments/{experiment}", response_model=ExperimentPublic, responses=error_responses(409))
def set_experiment(
    experiment: str, body: ExperimentBody, tenant: TenantDep, caller: CallerDep, registry: RegistryDep
) -> ExperimentPublic:
    """Split the users of `model` across the arms (sticky per user) from the next request; replaces the
    experiment of that name. 409 when another experiment splits the same model; audited."""
    try:
        validate_name(experiment, what="experiment name")
    except InvalidNameError as err:
        raise ApiError(400, str(err), param="experiment") from err
    arms = [Arm(target_ref=arm.target, percent=arm.percent) for arm in body.arms]
    split = Experiment(name=experiment, model=body.model, arms=arms)  # the body and the name were checked
    return ExperimentPublic.of(registry.routing.set_experiment(tenant, split, actor=caller.actor))


@router.delete("/v1/experiments/{experiment}", response_model=ExperimentPublic)
def clear_experiment(
    experiment: str, tenant: TenantDep, caller: CallerDep, registry: RegistryDep
) -> ExperimentPublic:
    """End an experiment: its model's users route as usual from the next request (audited)."""
    return ExperimentPublic.of(registry.routing.clear_experiment(tenant, experiment, actor=caller.actor))
