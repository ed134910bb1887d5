"""`GET /v1/models`: what `model` may name in completions — the base, and each adapter, version and alias."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel

from lorafleet.api.deps import RegistryDep, TenantDep

router = APIRouter(prefix="/v1/models", tags=["inference"])


class ModelPublic(BaseModel):
    id: str
    object: str = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelPublic]


@router.get("", response_model=ModelList)
def list_models(request: Request, tenant: TenantDep, registry: RegistryDep) -> ModelList:
    """The base model, then each adapter (its production alias, else latest), version and alias."""
    base = request.app.state.settings.base_model
    models = [ModelPublic(id=base, created=int(request.app.state.started_at), owned_by="lorafleet")]
    for adapter in registry.adapters.all(tenant):
        created = int(adapter.created_at)
        names = [adapter.name]
        names += [f"{adapter.name}@{v.number}" for v in registry.adapters.versions(tenant, adapter.name)]
        names += [f"{adapter.name}:{alias}" for alias in registry.adapters.aliases(tenant, adapter.name)]
        models += [ModelPublic(id=name, created=created, owned_by=tenant) for name in names]
    return ModelList(data=models)
