"""Tenants, quotas and API keys: the secret is shown once and never stored."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from lorafleet.errors import AuthenticationError, ConflictError, InvalidNameError, NotFoundError
from lorafleet.registry import Quotas, Registry
from lorafleet.registry.tables import ApiKey, Base, Tenant


def test_create_then_get_by_id_and_by_name(registry: Registry) -> None:
    created = registry.tenants.create("acme", quotas=Quotas(max_adapters=3))
    by_id, by_name = registry.tenants.get(created.id), registry.tenants.get("acme")
    assert by_id.id == by_name.id == created.id
    assert created.id.startswith("tn-")
    assert (by_name.name, by_name.max_adapters, by_name.max_storage_bytes) == ("acme", 3, None)
    assert [t.name for t in registry.tenants.all()] == ["acme"]


def test_unknown_tenant_is_not_found(registry: Registry) -> None:
    with pytest.raises(NotFoundError, match="nobody"):
        registry.tenants.get("nobody")


def test_duplicate_name_is_a_conflict(registry: Registry) -> None:
    registry.tenants.create("acme")
    with pytest.raises(ConflictError, match="acme"):
        registry.tenants.create("acme")
    assert len(registry.tenants.all()) == 1


def test_bad_names_are_refused(registry: Registry) -> None:
    for name in ["", "../etc", "a/b", "-dash", "x" * 65, "sp ace"]:
        with pytest.raises(InvalidNameError):
            registry.tenants.create(name)
    assert registry.tenants.all() == []


def test_key_secret_is_stored_nowhere(registry: Registry, tenant: Tenant) -> None:
    key, secret = registry.tenants.create_key(tenant.id, name="ci")
    assert secret.startswith("lf-") and len(secret) > 40
    assert secret.startswith(key.prefix) and len(key.prefix) < len(secret) // 2
    with registry.db.session() as session:
        row = session.get_one(ApiKey, key.id)
        assert row.key_hash != secret and len(row.key_hash) == 64
        every_value = [  # every column of every row of every table, as text
            str(value)
            for table in Base.metadata.sorted_tables
            for record in session.execute(select(table)).all()
            for value in record
        ]
    assert every_value
    assert not [value for value in every_value if secret in value or secret[10:] in value]


def test_authenticate_returns_the_live_key(registry: Registry, tenant: Tenant) -> None:
    key, secret = registry.tenants.create_key(tenant.id)
    found = registry.tenants.authenticate(secret)
    assert (found.id, found.tenant_id) == (key.id, tenant.id)
    with pytest.raises(AuthenticationError, match="unknown"):
        registry.tenants.authenticate(secret + "x")


def test_revoked_key_no_longer_authenticates(registry: Registry, tenant: Tenant) -> None:
    key, secret = registry.tenants.create_key(tenant.id)
    other, other_secret = registry.tenants.create_key(tenant.id, name="second")
    revoked = registry.tenants.revoke_key(tenant.id, key.id)
    assert revoked.revoked_at is not None
    with pytest.raises(AuthenticationError, match="revoked"):
        registry.tenants.authenticate(secret)
    assert registry.tenants.authenticate(other_secret).id == other.id
    assert registry.tenants.revoke_key(tenant.id, key.id).revoked_at == revoked.revoked_at  # twice is fine
    assert [k.id for k in registry.tenants.list_keys(tenant.id)] == [key.id, other.id]


def test_another_tenants_key_cannot_be_revoked(
    registry: Registry, tenant: Tenant, other_tenant: Tenant
) -> None:
    key, secret = registry.tenants.create_key(tenant.id)
    with pytest.raises(NotFoundError):
        registry.tenants.revoke_key(other_tenant.id, key.id)
    with pytest.raises(NotFoundError):
        registry.tenants.revoke_key(tenant.id, "key-missing")
    assert registry.tenants.authenticate(secret).id == key.id
    assert registry.tenants.list_keys(other_tenant.id) == []


def test_set_quotas_changes_only_the_fields_given(registry: Registry) -> None:
    tenant = registry.tenants.create("acme", quotas=Quotas(max_adapters=3, max_concurrent_jobs=2))
    registry.tenants.set_quotas("acme", Quotas(max_storage_bytes=1000))
    updated = registry.tenants.get(tenant.id)
    assert (updated.max_adapters, updated.max_concurrent_jobs, updated.max_storage_bytes) == (3, 2, 1000)
    registry.tenants.set_quotas(tenant.id, Quotas(max_adapters=None))  # explicitly unlimited
    updated = registry.tenants.get(tenant.id)
    assert (updated.max_adapters, updated.max_concurrent_jobs, updated.max_storage_bytes) == (None, 2, 1000)
