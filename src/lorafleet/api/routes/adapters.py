"""Adapters and their versions (`/v1/adapters`): list, get, download, promote an alias (gated), roll back,
delete, and the adapter's audited events. Suites and the gate's policy: `routes/evaluation.py`; canaries:
`routes/splits.py`."""

from __future__ import annotations

import io
import tarfile
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from lorafleet.api.deps import CallerDep, RegistryDep, TenantDep
from lorafleet.api.errors import error_responses
from lorafleet.registry import Registry
from lorafleet.registry.tables import Adapter, AdapterEvent, AdapterVersion, AliasMove

router = APIRouter(prefix="/v1/adapters", tags=["adapters"])


class VersionPublic(BaseModel):
    id: str
    object: str = "adapter.version"
    adapter: str
    version: int
    model: str = Field(description="`adapter@version`, usable as `model` in completions.")
    created_at: int
    sha256: str
    bytes: int
    base_model: str
    training_file: str | None
    job_id: str | None
    parent_version_id: str | None
    metrics: dict[str, Any] = Field(description="Training metrics; `evaluation` holds the worker's scores.")
    aliases: list[str]
    lineage_evaluation: dict[str, Any] | None = Field(
        None,
        description="In single-version answers: the forgetting matrix along the version's lineage, its "
        "forgetting per ancestor suite, backward transfer and general drift.",
    )

    @classmethod
    def of(cls, name: str, version: AdapterVersion, aliases: dict[str, int]) -> VersionPublic:
        return cls(
            id=version.id,
            adapter=name,
            version=version.number,
            model=f"{name}@{version.number}",
            created_at=int(version.created_at),
            sha256=version.sha256,
            bytes=version.bytes,
            base_model=version.base_model,
            training_file=version.dataset_id,
            job_id=version.job_id,
            parent_version_id=version.parent_version_id,
            metrics=version.metrics,
            aliases=sorted(alias for alias, number in aliases.items() if number == version.number),
        )


class AdapterPublic(BaseModel):
    id: str
    object: str = "adapter"
    name: str
    created_at: int
    latest_version: int
    aliases: dict[str, int] = Field(description="Alias → version number.")
    versions: list[VersionPublic] | None = Field(
        None, description="Every version (in single-adapter answers)."
    )


class AdapterList(BaseModel):
    object: str = "list"
    data: list[AdapterPublic]
    has_more: bool = Field(False, description="More adapters follow: ask again with `after` = the last name.")


class VersionList(BaseModel):
    object: str = "list"
    data: list[VersionPublic]
    has_more: bool = Field(
        False, description="More versions follow: ask again with `after` = the last version number."
    )


class Promotion(BaseModel):
    version: int = Field(ge=1, description="The version number the alias should point at.")
    force: bool = Field(
        False, description="Promote even if the adapter's gate refuses the version (audited as forced)."
    )


class AliasMovePublic(BaseModel):
    alias: str
    action: str
    from_version: int | None
    to_version: int | None
    actor: str
    created_at: int
    forced: bool = Field(description="Promoted although the gate refused the version.")
    report: dict[str, Any] | None = Field(description="The gate report of a gated promotion.")


class AliasHistory(BaseModel):
    object: str = "list"
    data: list[AliasMovePublic]


class AdapterEventPublic(BaseModel):
    id: int = Field(description="The event's place in the adapter's history (pass it as `since_id`).")
    object: str = "adapter.event"
    kind: str = Field(description="canary_set, canary_cleared, experiment_set, experiment_cleared, …")
    actor: str
    job_id: str | None
    detail: dict[str, Any] = Field(description="What the event carries (a canary's or experiment's split).")
    created_at: int

    @classmethod
    def of(cls, event: AdapterEvent) -> AdapterEventPublic:
        return cls(
            id=event.id,
            kind=event.kind,
            actor=event.actor,
            job_id=event.job_id,
            detail=event.detail,
            created_at=int(event.created_at),
        )


class AdapterEventList(BaseModel):
    object: str = "list"
    data: list[AdapterEventPublic]


def _adapter(registry: Registry, tenant: str, adapter: Adapter, *, with_versions: bool) -> AdapterPublic:
    aliases = registry.adapters.aliases(tenant, adapter.name)
    versions = (
        [VersionPublic.of(adapter.name, v, aliases) for v in registry.adapters.versions(tenant, adapter.name)]
        if with_versions
        else None
    )
    return _adapter_public(adapter, aliases, versions)


def _adapter_public(
    adapter: Adapter, aliases: dict[str, int], versions: list[VersionPublic] | None = None
) -> AdapterPublic:
    return AdapterPublic(
        id=adapter.id,
        name=adapter.name,
        created_at=int(adapter.created_at),
        latest_version=adapter.latest_version,
        aliases=aliases,
        versions=versions,
    )


def _version(registry: Registry, tenant: str, name: str, version: AdapterVersion) -> VersionPublic:
    return VersionPublic.of(name, version, registry.adapters.aliases(tenant, name))


@router.get("", response_model=AdapterList)
def list_adapters(
    tenant: TenantDep,
    registry: RegistryDep,
    after: str | None = Query(
        None, max_length=64, description="Name of the last adapter of the previous page."
    ),
    limit: int = Query(10_000, ge=1, le=10_000),
) -> AdapterList:
    """The tenant's adapters with their aliases, by name, a page at a time."""
    adapters = registry.adapters.all(tenant, after=after, limit=limit + 1)
    page = adapters[:limit]
    aliases = registry.adapters.aliases_of(tenant, [a.id for a in page])
    return AdapterList(data=[_adapter_public(a, aliases[a.id]) for a in page], has_more=len(adapters) > limit)


@router.get("/{name}", response_model=AdapterPublic)
def get_adapter(name: str, tenant: TenantDep, registry: RegistryDep) -> AdapterPublic:
    """One adapter with its versions and aliases."""
    return _adapter(registry, tenant, registry.adapters.get(tenant, name), with_versions=True)


@router.delete("/{name}", response_model=AdapterPublic)
def delete_adapter(name: str, tenant: TenantDep, caller: CallerDep, registry: RegistryDep) -> AdapterPublic:
    """Delete an adapter, all its versions, aliases and events, and the canaries and experiments naming it."""
    answer = _adapter(registry, tenant, registry.adapters.get(tenant, name), with_versions=True)
    registry.adapters.delete(tenant, name, actor=caller.actor)
    return answer


@router.get("/{name}/versions", response_model=VersionList)
def list_versions(
    name: str,
    tenant: TenantDep,
    registry: RegistryDep,
    after: int | None = Query(
        None, ge=0, le=2**31 - 1, description="Number of the last version of the previous page."
    ),
    limit: int = Query(10_000, ge=1, le=10_000),
) -> VersionList:
    """The adapter's versions, oldest first, a page at a time."""
    aliases = registry.adapters.aliases(tenant, name)
    versions = registry.adapters.versions(tenant, name, after=after, limit=limit + 1)
    return VersionList(
        data=[VersionPublic.of(name, v, aliases) for v in versions[:limit]], has_more=len(versions) > limit
    )


@router.get("/{name}/versions/{version}", response_model=VersionPublic)
def get_version(name: str, version: str, tenant: TenantDep, registry: RegistryDep) -> VersionPublic:
    """One version: digest, size, metrics, lineage (base model, training file, job, parent) and forgetting."""
    row = registry.adapters.version(tenant, name, version)
    answer = _version(registry, tenant, name, row)
    answer.lineage_evaluation = registry.evaluation.lineage_evaluation(tenant, row.id)
    return answer


@router.get(
    "/{name}/versions/{version}/download",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}}}},
)
def download_version(name: str, version: str, tenant: TenantDep, registry: RegistryDep) -> StreamingResponse:
    """The version's PEFT adapter files as a .tar.gz (loads with `PeftModel.from_pretrained`)."""
    row = registry.adapters.version(tenant, name, version)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(registry.adapters.local_path(row), arcname=f"{name}-v{row.number}")
    buffer.seek(0)
    filename = f"{name}-v{row.number}.tar.gz"
    headers = {"Content-Disposition": f'attachment; filename="{filename}"', "X-Content-SHA256": row.sha256}
    return StreamingResponse(buffer, media_type="application/gzip", headers=headers)


@router.delete("/{name}/versions/{version}", response_model=VersionPublic, responses=error_responses(409))
def delete_version(name: str, version: str, tenant: TenantDep, registry: RegistryDep) -> VersionPublic:
    """Delete a version no alias points at and no canary or experiment targets."""
    answer = _version(registry, tenant, name, registry.adapters.version(tenant, name, version))
    registry.adapters.delete_version(tenant, name, version)
    return answer


@router.post("/{name}/aliases/{alias}", response_model=VersionPublic, responses=error_responses(409))
def promote(
    name: str, alias: str, body: Promotion, tenant: TenantDep, caller: CallerDep, registry: RegistryDep
) -> VersionPublic:
    """Point an alias (`production`, `staging`, any name) at a version; the move is audited.

    Under the adapter's gate a failing version is a 409 with the report in `error.report`, unless `force`.
    """
    version = registry.adapters.promote(
        tenant, name, alias, body.version, actor=caller.actor, force=body.force
    )
    return _version(registry, tenant, name, version)


@router.post("/{name}/aliases/{alias}/rollback", response_model=VersionPublic, responses=error_responses(409))
def rollback(
    name: str, alias: str, tenant: TenantDep, caller: CallerDep, registry: RegistryDep
) -> VersionPublic:
    """Move an alias back to the version it pointed at before its last promotion (not gated)."""
    version = registry.adapters.rollback(tenant, name, alias, actor=caller.actor)
    return _version(registry, tenant, name, version)


@router.get("/{name}/history", response_model=AliasHistory)
def alias_history(name: str, tenant: TenantDep, registry: RegistryDep) -> AliasHistory:
    """Every alias move of the adapter, oldest first: who moved which alias from which version to which."""
    numbers = {v.id: v.number for v in registry.adapters.versions(tenant, name)}
    moves: list[AliasMove] = registry.adapters.history(tenant, name)
    return AliasHistory(
        data=[
            AliasMovePublic(
                alias=m.alias,
                action=m.action,
                from_version=numbers.get(m.from_version_id or ""),
                to_version=numbers.get(m.to_version_id or ""),
                actor=m.actor,
                created_at=int(m.created_at),
                forced=m.forced,
                report=m.report,
            )
            for m in moves
        ]
    )


@router.get("/{name}/events", response_model=AdapterEventList)
def adapter_events(
    name: str,
    tenant: TenantDep,
    registry: RegistryDep,
    since_id: int | None = Query(None, ge=0, le=2**63 - 1, description="Only the events after this one."),
) -> AdapterEventList:
    """The adapter's audited events beyond alias moves, oldest first: canaries and experiments set and
    cleared, by whom, with what split."""
    events = registry.adapters.events(tenant, name, since_id=since_id)
    return AdapterEventList(data=[AdapterEventPublic.of(event) for event in events])
