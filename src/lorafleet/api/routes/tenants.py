"""Admin routes: tenants, their quotas, settings and API keys (the admin key only)."""

from __future__ import annotations

from typing import TypeVar

from fastapi import APIRouter
from pydantic import BaseModel, Field

from lorafleet.api.deps import AdminDep, RegistryDep
from lorafleet.api.errors import error_responses
from lorafleet.registry import Quotas, TenantSettings
from lorafleet.registry.tables import ApiKey, Tenant

router = APIRouter(prefix="/v1/tenants", tags=["tenants"])


class TenantCreate(BaseModel):
    name: str = Field(description="Unique tenant name: letters, digits, '.', '_', '-'.")
    quotas: Quotas = Field(default_factory=Quotas, description="Limits; unset fields are unlimited.")
    settings: TenantSettings = Field(default_factory=TenantSettings, description="What is kept of its data.")


class TenantPublic(BaseModel):
    id: str
    object: str = "tenant"
    name: str
    created_at: int
    quotas: Quotas
    settings: TenantSettings

    @classmethod
    def of(cls, tenant: Tenant) -> TenantPublic:
        return cls(
            id=tenant.id,
            name=tenant.name,
            created_at=int(tenant.created_at),
            quotas=_columns(Quotas, tenant),
            settings=_columns(TenantSettings, tenant),
        )


class TenantList(BaseModel):
    object: str = "list"
    data: list[TenantPublic]


class KeyCreate(BaseModel):
    name: str = Field("default", max_length=64, description="A label to tell keys apart.")


class KeyPublic(BaseModel):
    id: str
    object: str = "api_key"
    tenant_id: str
    name: str
    prefix: str = Field(description="The key's first characters.")
    created_at: int
    revoked_at: int | None
    key: str | None = Field(None, description="The secret: only in the answer that created it.")

    @classmethod
    def of(cls, key: ApiKey, secret: str | None = None) -> KeyPublic:
        revoked = int(key.revoked_at) if key.revoked_at is not None else None
        return cls(
            id=key.id,
            tenant_id=key.tenant_id,
            name=key.name,
            prefix=key.prefix,
            created_at=int(key.created_at),
            revoked_at=revoked,
            key=secret,
        )


class KeyList(BaseModel):
    object: str = "list"
    data: list[KeyPublic]


@router.post("", response_model=TenantPublic, status_code=201, responses=error_responses(409))
def create_tenant(body: TenantCreate, _admin: AdminDep, registry: RegistryDep) -> TenantPublic:
    """Create a tenant with optional quotas and settings."""
    return TenantPublic.of(registry.tenants.create(body.name, quotas=body.quotas, settings=body.settings))


@router.get("", response_model=TenantList)
def list_tenants(_admin: AdminDep, registry: RegistryDep) -> TenantList:
    """Every tenant."""
    return TenantList(data=[TenantPublic.of(tenant) for tenant in registry.tenants.all()])


@router.get("/{tenant}", response_model=TenantPublic)
def get_tenant(tenant: str, _admin: AdminDep, registry: RegistryDep) -> TenantPublic:
    """One tenant, by id or name."""
    return TenantPublic.of(registry.tenants.get(tenant))


@router.patch("/{tenant}", response_model=TenantPublic)
def set_settings(tenant: str, body: TenantSettings, _admin: AdminDep, registry: RegistryDep) -> TenantPublic:
    """Change a tenant's settings (only the fields sent), e.g. `{"log_text": false}`: from then on its
    completions are logged without their prompt and answer text."""
    return TenantPublic.of(registry.tenants.set_settings(tenant, body))


@router.patch("/{tenant}/quotas", response_model=TenantPublic)
def set_quotas(tenant: str, body: Quotas, _admin: AdminDep, registry: RegistryDep) -> TenantPublic:
    """Change a tenant's quotas (only the fields sent; null means unlimited)."""
    return TenantPublic.of(registry.tenants.set_quotas(tenant, body))


@router.post("/{tenant}/keys", response_model=KeyPublic, status_code=201)
def create_key(tenant: str, body: KeyCreate, _admin: AdminDep, registry: RegistryDep) -> KeyPublic:
    """Issue an API key; the secret is in this answer only and is never shown again."""
    key, secret = registry.tenants.create_key(tenant, name=body.name)
    return KeyPublic.of(key, secret)


@router.get("/{tenant}/keys", response_model=KeyList)
def list_keys(tenant: str, _admin: AdminDep, registry: RegistryDep) -> KeyList:
    """A tenant's keys (without secrets)."""
    return KeyList(
        data=[KeyPublic.of(key) for key in registry.tenants.list_keys(registry.tenants.get(tenant).id)]
    )


@router.delete("/{tenant}/keys/{key_id}", response_model=KeyPublic)
def revoke_key(tenant: str, key_id: str, _admin: AdminDep, registry: RegistryDep) -> KeyPublic:
    """Revoke a key: it stops working at once."""
    return KeyPublic.of(registry.tenants.revoke_key(registry.tenants.get(tenant).id, key_id))


_Columns = TypeVar("_Columns", Quotas, TenantSettings)


def _columns(model: type[_Columns], tenant: Tenant) -> _Columns:
    """`model` (quotas or settings) read from the tenant's columns of the same names."""
    return model(**{field: getattr(tenant, field) for field in model.model_fields})
