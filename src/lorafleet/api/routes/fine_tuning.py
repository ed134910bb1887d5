"""Fine-tuning jobs (`/v1/fine_tuning/jobs`), shaped like OpenAI's where the two overlap.

Beyond OpenAI's fields a job takes `adapter` (the adapter name its version is registered under), `parent`
(a version to continue from: `tickets@2`, `tickets:production` or `tickets`, resolved for the caller's
tenant when the job is created and stored as its `parent_version_id`) and
`recipe` (any fields of a lorafleet recipe — lora, training, quantization, eval — validated when the
job is created, target modules against the base model's own, so a bad key is a 400 naming it, not a
failed job later). OpenAI's `hyperparameters` set recipe fields (n_epochs → training.epochs, batch_size
→ training.batch_size, learning_rate_multiplier → training.learning_rate) and are checked under their
own names: a bad one is `hyperparameters.n_epochs`, not the recipe field it sets.
"""

from __future__ import annotations

import copy
from typing import Any, Literal
from uuid import uuid4

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lorafleet.api.deps import RegistryDep, TenantDep
from lorafleet.api.errors import ApiError, error_responses
from lorafleet.errors import ConfigError, NotFoundError, UnknownAdapterError
from lorafleet.home import validate_name
from lorafleet.registry import Registry
from lorafleet.registry.tables import Job, JobEvent
from lorafleet.registry.tenants import MAX_BIGINT
from lorafleet.training.config import TrainingConfig

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])
RESERVED = ("model", "output")  # recipe sections the job itself sets
PARENT_ROWS_STRATEGIES = ("replay", "ewc")  # read the parent version's training rows
DEFAULT_LR: float = TrainingConfig.model_fields["learning_rate"].default  # what the multiplier scales


class Hyperparameters(BaseModel):
    """OpenAI's hyperparameters; "auto" keeps the recipe's value."""

    model_config = ConfigDict(extra="forbid")

    n_epochs: int | Literal["auto"] = Field("auto", description="Passes over the training file (1-1000).")
    batch_size: int | Literal["auto"] = Field("auto", description="Examples per micro-batch (1-4096).")
    learning_rate_multiplier: float | Literal["auto"] = Field(
        "auto", description="Multiplies the recipe's learning rate (default 2e-4)."
    )


class JobCreate(BaseModel):
    """A fine-tuning job to queue."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(description="The base model; must be the one this server serves.")
    training_file: str = Field(description="Id of an uploaded file.")
    validation_file: str | None = Field(None, description="Id of an uploaded file of held-out rows.")
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    suffix: str | None = Field(None, max_length=64, description="Adapter name, when `adapter` is not given.")
    adapter: str | None = Field(None, description="Register the result as a version of this adapter.")
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="Seed of the run.")
    recipe: dict[str, Any] = Field(default_factory=dict, description="lorafleet recipe fields to set.")
    parent: str | None = Field(
        None,
        max_length=200,
        description="Continue from this version: `name@version`, `name:alias` or `name` (production, else "
        "latest); it must be of the same base model. Its lineage's eval suites score the new version.",
    )


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class JobPublic(BaseModel):
    """OpenAI's fine_tuning.job, plus the adapter, progress and metrics."""

    id: str
    object: str = "fine_tuning.job"
    created_at: int
    finished_at: int | None
    model: str
    fine_tuned_model: str | None = Field(description="`adapter@version` once the job succeeded.")
    organization_id: str
    status: str
    hyperparameters: Hyperparameters
    training_file: str
    validation_file: str | None
    result_files: list[str] = Field(default_factory=list)
    trained_tokens: int | None
    seed: int
    error: JobError | None
    adapter: str
    step: int
    total_steps: int | None
    attempts: int
    metrics: dict[str, Any]
    estimated_finish: int | None = None
    parent: str | None = Field(None, description="`adapter@version` the job continues from.")
    parent_version_id: str | None = None


class JobList(BaseModel):
    object: str = "list"
    data: list[JobPublic]
    has_more: bool


class EventPublic(BaseModel):
    id: str
    object: str = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    type: str
    data: dict[str, Any] | None = None


class EventList(BaseModel):
    object: str = "list"
    data: list[EventPublic]
    has_more: bool


def job_public(job: Job, registry: Registry) -> JobPublic:
    training = job.recipe.get("training", {})
    version = registry.adapters.by_id(job.tenant_id, job.version_id) if job.version_id else None
    return JobPublic(
        id=job.id,
        created_at=int(job.created_at),
        finished_at=int(job.finished_at) if job.finished_at is not None else None,
        model=job.base_model,
        fine_tuned_model=f"{job.adapter_name}@{version.number}" if version is not None else None,
        organization_id=job.tenant_id,
        status=job.status,
        hyperparameters=Hyperparameters(
            n_epochs=training.get("epochs", "auto"),
            batch_size=training.get("batch_size", "auto"),
            learning_rate_multiplier=training["learning_rate"] / DEFAULT_LR
            if "learning_rate" in training
            else "auto",
        ),
        training_file=job.dataset_id,
        validation_file=job.validation_dataset_id,
        trained_tokens=job.trained_tokens if job.status == "succeeded" else None,
        seed=int(training.get("seed", 0)),
        error=JobError(code="job_failed", message=job.error)
        if job.status == "failed" and job.error
        else None,
        adapter=job.adapter_name,
        step=job.step,
        total_steps=job.total_steps,
        attempts=job.attempts,
        metrics=job.metrics,
        parent=_parent_reference(registry, job),
        parent_version_id=job.parent_version_id,
    )


def _parent_reference(registry: Registry, job: Job) -> str | None:
    """`name@version` of the job's parent (its id if that version was deleted since)."""
    if job.parent_version_id is None:
        return None
    try:
        return registry.adapters.reference(job.tenant_id, job.parent_version_id)
    except NotFoundError:
        return job.parent_version_id


def resolve_parent(registry: Registry, tenant: str, parent: str, base_model: str) -> str:
    """The id of the version `parent` names for the tenant: a 404 naming `parent` if there is none, a 400
    if it is malformed or of another base model."""
    from lorafleet.serving.router import parse_reference

    try:
        ref = parse_reference(parent)
    except ConfigError as err:
        raise ConfigError(f"parent: {err}", field="parent") from None
    try:
        version = registry.adapters.resolve(tenant, ref.name, version=ref.version, alias=ref.alias)
    except UnknownAdapterError as err:
        raise ApiError(404, f"parent {parent!r}: {err}", param="parent", code="model_not_found") from None
    if version.base_model != base_model:
        raise ConfigError(
            f"parent {parent!r} was trained on {version.base_model!r}; this server fine-tunes {base_model!r}",
            field="parent",
        )
    return version.id


def hyperparameter_fields(hyper: Hyperparameters, training: dict[str, Any]) -> dict[str, Any]:
    """The training fields OpenAI's `hyperparameters` set over the recipe's `training`, each checked against
    the field it sets; `ConfigError` names the hyperparameter (`hyperparameters.n_epochs`)."""
    fields: dict[str, Any] = {}
    if hyper.n_epochs != "auto":
        fields["epochs"] = hyper.n_epochs
    if hyper.batch_size != "auto":
        fields["batch_size"] = hyper.batch_size
    if hyper.learning_rate_multiplier != "auto":
        fields["learning_rate"] = training.get("learning_rate", DEFAULT_LR) * hyper.learning_rate_multiplier
    names = {"epochs": "n_epochs", "batch_size": "batch_size", "learning_rate": "learning_rate_multiplier"}
    for field, value in fields.items():
        try:
            TrainingConfig.model_validate({field: value})
        except ValidationError as err:
            name = f"hyperparameters.{names[field]}"
            sets = f"sets training.{field} to {value!r}: " if field != "batch_size" else ""
            message = f"{name}: {sets}{err.errors()[0]['msg']} (got {getattr(hyper, names[field])!r})"
            raise ConfigError(message, field=name) from None
    return fields


def job_recipe(body: JobCreate, base_model: str, base_skeleton: Any) -> dict[str, Any]:
    """The recipe fields the job sets: `body.recipe` with its hyperparameters and seed, checked by
    `check_recipe`; `ConfigError` names a bad key as `recipe.…` or `hyperparameters.…`."""
    recipe = copy.deepcopy(body.recipe)
    training = recipe.setdefault("training", {})
    if not isinstance(training, dict):
        raise ConfigError("recipe.training: must be a mapping of training fields")
    training.update(hyperparameter_fields(body.hyperparameters, training))
    if body.seed is not None:
        training["seed"] = body.seed
    check_recipe(recipe, base_model, base_skeleton, with_parent=body.parent is not None)
    return recipe


def check_recipe(recipe: dict[str, Any], base_model: str, base_skeleton: Any, *, with_parent: bool) -> None:
    """Check a job's recipe fields by building the whole recipe and matching its target modules against
    `base_skeleton` (the base model's module tree); `ConfigError` names a bad key as `recipe.…`.

    With a parent, the worker names the parent's adapter and its training rows (`model.parent`,
    `continual.replay_paths`); they stand in as placeholders here, so the rest is checked as it will run.
    """
    from lorafleet.adapters.attach import check_targets
    from lorafleet.training import parse_config

    for section in RESERVED:
        if section in recipe:
            raise ConfigError(f"recipe.{section}: set by the job itself; leave it out")
    data = recipe.get("data", {})
    if not isinstance(data, dict) or {"path", "validation_path"} & set(data):
        raise ConfigError("recipe.data: the training and validation files are training_file/validation_file")
    continual = recipe.get("continual", {})
    if not isinstance(continual, dict) or "replay_paths" in continual:
        raise ConfigError(
            "recipe.continual.replay_paths: the parent version's own training rows are used; leave it out",
            field="recipe.continual.replay_paths",
        )
    model: dict[str, Any] = {"name": base_model}
    if with_parent:
        model["parent"] = "parent"
        if continual.get("strategy") in PARENT_ROWS_STRATEGIES:
            continual = {**continual, "replay_paths": ["parent.jsonl"]}
    whole = {**recipe, "model": model, "data": {**data, "path": "train.jsonl"}, "continual": continual}
    try:
        config = parse_config(whole, source="recipe")
        check_targets(base_skeleton, config.lora)
    except ConfigError as err:
        field = f"recipe.{err.field}" if err.field else "recipe"
        message = str(err) if str(err).startswith("recipe") else f"{field}: {err}"
        raise ConfigError(message, field=field) from None


@router.post("", response_model=JobPublic, status_code=200)
def create_job(body: JobCreate, request: Request, tenant: TenantDep, registry: RegistryDep) -> JobPublic:
    """Queue a fine-tuning job on an uploaded file; a worker trains it and registers a new adapter version."""
    settings = request.app.state.settings
    if body.model != settings.base_model:
        raise ConfigError(f"model {body.model!r}: this server fine-tunes {settings.base_model!r}")
    adapter = body.adapter or body.suffix or f"ft-{uuid4().hex[:8]}"
    validate_name(adapter, what="adapter")
    parent = resolve_parent(registry, tenant, body.parent, settings.base_model) if body.parent else None
    job = registry.jobs.create(
        tenant,
        adapter_name=adapter,
        dataset_id=body.training_file,
        validation_dataset_id=body.validation_file,
        base_model=settings.base_model,
        recipe=job_recipe(body, settings.base_model, request.app.state.base_skeleton()),
        max_retries=settings.max_job_retries,
        parent_version_id=parent,
    )
    return job_public(job, registry)


@router.get("", response_model=JobList)
def list_jobs(
    tenant: TenantDep,
    registry: RegistryDep,
    after: str | None = Query(None, description="Id of the last job of the previous page."),
    limit: int = Query(20, ge=1, le=100),
) -> JobList:
    """The tenant's jobs, newest first."""
    jobs = registry.jobs.all(tenant, limit=limit + 1, after=after)
    return JobList(data=[job_public(j, registry) for j in jobs[:limit]], has_more=len(jobs) > limit)


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: str, tenant: TenantDep, registry: RegistryDep) -> JobPublic:
    """One job: status, progress, metrics and, once it succeeded, the adapter version it made."""
    return job_public(registry.jobs.get(tenant, job_id), registry)


@router.get("/{job_id}/events", response_model=EventList)
def list_events(
    job_id: str,
    tenant: TenantDep,
    registry: RegistryDep,
    after: str | None = Query(None, description="Id of the last event of the previous page."),
    limit: int = Query(20, ge=1, le=1000),
) -> EventList:
    """The job's events, newest first (status changes, logs, step metrics)."""
    cursor = _event_number(after) if after is not None else None
    events = registry.jobs.events(tenant, job_id, after=cursor, limit=limit + 1, newest_first=True)
    return EventList(data=[_event(e) for e in events[:limit]], has_more=len(events) > limit)


@router.post("/{job_id}/cancel", response_model=JobPublic, responses=error_responses(409))
def cancel_job(job_id: str, tenant: TenantDep, registry: RegistryDep) -> JobPublic:
    """Cancel a queued or running job at once; a running one's worker stops its run, registering nothing."""
    return job_public(registry.jobs.cancel(tenant, job_id), registry)


def _event_number(event_id: str) -> int:
    """The number of event id `ftevent-N` (a `ConfigError` naming `after` for anything else)."""
    number = event_id.removeprefix("ftevent-")
    if not (number.isascii() and number.isdigit()) or int(number) > MAX_BIGINT:
        raise ConfigError(f"after: {event_id!r} is not an event id (ftevent-N)", field="after")
    return int(number)


def _event(event: JobEvent) -> EventPublic:
    return EventPublic(
        id=f"ftevent-{event.id}",
        created_at=int(event.created_at),
        level=event.level,
        message=event.message,
        type=event.type,
        data=event.data,
    )
