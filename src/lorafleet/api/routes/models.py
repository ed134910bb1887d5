"""`GET /v1/models` and `GET /v1/models/{model}`: what `model` may name in completions — the base, and each
adapter, version and alias of the caller's tenant."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel

from lorafleet.api.deps import RegistryDep, TenantDep
from lorafleet.errors import InvalidNameError, UnknownAdapterError
from lorafleet.serving.router import parse_reference

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


@router.get("/{model:path}", response_model=ModelPublic)
def get_model(model: str, request: Request, tenant: TenantDep, registry: RegistryDep) -> ModelPublic:
    """One model by the name completions take: the base, an adapter, `adapter@version` or `adapter:alias`."""
    base = request.app.state.settings.base_model
    if model == base:
        return ModelPublic(id=base, created=int(request.app.state.started_at), owned_by="lorafleet")
    try:
        ref = parse_reference(model)
    except InvalidNameError as err:
        raise UnknownAdapterError(f"no model {model!r}: {err}") from None
    registry.adapters.resolve(tenant, ref.name, version=ref.version, alias=ref.alias)  # 404 if unknown
    adapter = registry.adapters.get(tenant, ref.name)
    return ModelPublic(id=model, created=int(adapter.created_at), owned_by=tenant)
