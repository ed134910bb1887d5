"""Tenants, their quotas, settings and API keys (stored as SHA-256; the key itself is shown once)."""

from __future__ import annotations

import hashlib
import secrets

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import ColumnElement, select
from sqlalchemy.exc import IntegrityError

from lorafleet.errors import AuthenticationError, ConflictError, NotFoundError
from lorafleet.home import validate_name
from lorafleet.registry.database import Database
from lorafleet.registry.tables import ApiKey, Tenant, now, owned

KEY_PREFIX = "lf-"


MAX_BIGINT = 2**63 - 1  # the largest value of a BIGINT column (SQLite's INTEGER, PostgreSQL's BIGINT)


class Quotas(BaseModel):
    """A tenant's limits; None means unlimited."""

    model_config = ConfigDict(extra="forbid")

    max_concurrent_jobs: int | None = Field(None, ge=0, le=10_000, description="Jobs queued or running.")
    max_adapters: int | None = Field(None, ge=0, le=10**6, description="Adapter names stored.")
    max_storage_bytes: int | None = Field(
        None, ge=0, le=MAX_BIGINT, description="Bytes of datasets and adapter versions."
    )
    max_monthly_tokens: int | None = Field(
        None, ge=0, le=MAX_BIGINT, description="Prompt + generated + trained tokens per calendar month (UTC)."
    )
    requests_per_minute: int | None = Field(
        None, ge=1, le=10**6, description="Requests per minute per API key (every route)."
    )


class TenantSettings(BaseModel):
    """What a tenant chooses about its data, beside its quotas."""

    model_config = ConfigDict(extra="forbid")

    log_text: bool = Field(
        True,
        description="Keep the prompt and answer text of the tenant's completions in the request log "
        "(off: only ids, model, version, token counts and latency; no corrections can be exported).",
    )


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Tenants:
    """Create, read and limit tenants; issue, list, revoke and check their API keys."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self, name: str, *, quotas: Quotas | None = None, settings: TenantSettings | None = None
    ) -> Tenant:
        """A new tenant; `ConflictError` if the name is taken."""
        validate_name(name, what="tenant name")
        tenant = Tenant(
            name=name, **(quotas or Quotas()).model_dump(), **(settings or TenantSettings()).model_dump()
        )
        try:
            with self.db.session() as session:
                session.add(tenant)
        except IntegrityError:
            raise ConflictError(f"a tenant named {name!r} already exists") from None
        return tenant

    def get(self, tenant_id: str) -> Tenant:
        """The tenant with that id or name; `NotFoundError` if none."""
        with self.db.session() as session:
            tenant = session.get(Tenant, tenant_id) or session.scalar(
                select(Tenant).where(Tenant.name == tenant_id)
            )
        if tenant is None:
            raise NotFoundError(f"no tenant {tenant_id!r}")
        return tenant

    def all(self) -> list[Tenant]:
        with self.db.session() as session:
            return list(session.scalars(select(Tenant).order_by(Tenant.created_at)))

    def set_quotas(self, tenant_id: str, quotas: Quotas) -> Tenant:
        """Replace the fields of `quotas` that were set explicitly."""
        return self._update(tenant_id, quotas)

    def set_settings(self, tenant_id: str, settings: TenantSettings) -> Tenant:
        """Replace the fields of `settings` that were set explicitly."""
        return self._update(tenant_id, settings)

    def _update(self, tenant_id: str, changes: Quotas | TenantSettings) -> Tenant:
        """Set the tenant's columns named by the fields of `changes` that were set explicitly."""
        with self.db.session() as session:
            tenant = session.get(Tenant, self.get(tenant_id).id)
            assert tenant is not None
            for field, value in changes.model_dump(exclude_unset=True).items():
                setattr(tenant, field, value)
        return tenant

    def create_key(self, tenant_id: str, *, name: str = "default") -> tuple[ApiKey, str]:
        """A new API key: its row and the secret, which is not stored and cannot be shown again."""
        tenant = self.get(tenant_id)
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(tenant_id=tenant.id, name=name[:64], prefix=secret[:10], key_hash=hash_key(secret))
        with self.db.session() as session:
            session.add(key)
        return key, secret

    def list_keys(self, tenant_id: str) -> list[ApiKey]:
        with self.db.session() as session:
            return list(
                session.scalars(
                    select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.created_at)
                )
            )

    def revoke_key(self, tenant_id: str, key_id: str) -> ApiKey:
        """Revoke a key of this tenant (a key of another tenant is "not found")."""
        with self.db.session() as session:
            key = owned(session, ApiKey, key_id, tenant_id, what="API key")
            if key.revoked_at is None:
                key.revoked_at = now()
        return key

    def authenticate(self, secret: str) -> ApiKey:
        """The live key whose secret this is; `AuthenticationError` for unknown or revoked keys."""
        return self.key_and_tenant(secret)[0]

    def key_and_tenant(self, secret: str) -> tuple[ApiKey, Tenant]:
        """`authenticate`, with the key's tenant read in the same query (one per API request)."""
        return self._live(ApiKey.key_hash == hash_key(secret))

    def live_key(self, key_id: str) -> tuple[ApiKey, Tenant]:
        """The key `key_id` and its tenant while the key is not revoked (a dashboard session's check)."""
        return self._live(ApiKey.id == key_id)

    def _live(self, which: ColumnElement[bool]) -> tuple[ApiKey, Tenant]:
        with self.db.session() as session:
            found = session.execute(
                select(ApiKey, Tenant).join(Tenant, ApiKey.tenant_id == Tenant.id).where(which)
            ).first()
        if found is None:
            raise AuthenticationError("unknown API key")
        key, tenant = found
        if key.revoked_at is not None:
            raise AuthenticationError(f"API key {key.prefix}… was revoked")
        return key, tenant
