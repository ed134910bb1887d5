"""Who calls: bearer keys → `Caller`, the admin key, and each key's rate limit (`registry.rate_limits`: a
token bucket per key in the database, shared by every replica of the server)."""

from __future__ import annotations

import hmac

from fastapi import Request

from lorafleet.api.deps import Caller
from lorafleet.api.errors import PermissionDeniedError
from lorafleet.errors import AuthenticationError
from lorafleet.registry import Registry

TENANT_HEADER = "X-Lorafleet-Tenant"


class Authenticator:
    """`app.state.authenticate`: the caller of a request, with its key's rate limit applied."""

    def __init__(self, registry: Registry, *, admin_key: str | None, default_per_minute: int | None) -> None:
        self.registry = registry
        self.admin_key = admin_key
        self.default_per_minute = default_per_minute

    def __call__(self, request: Request) -> Caller:
        header = request.headers.get("authorization", "")
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise AuthenticationError("missing API key: send `Authorization: Bearer <key>`")
        secret = secret.strip()
        if self.is_admin_key(secret):
            acting = request.headers.get(TENANT_HEADER)
            tenant_id = self.registry.tenants.get(acting).id if acting else None
            return Caller(tenant_id=tenant_id, key_id=None, is_admin=True)
        key, tenant = self.registry.tenants.key_and_tenant(secret)
        per_minute = tenant.requests_per_minute or self.default_per_minute
        if per_minute is not None:
            self.registry.rate_limits.take(key.id, per_minute)
        return Caller(tenant_id=key.tenant_id, key_id=key.id)

    def is_admin_key(self, secret: str) -> bool:
        """Whether `secret` is the admin key (compared in constant time; never, when none is set)."""
        return self.admin_key is not None and hmac.compare_digest(secret.encode(), self.admin_key.encode())


def require_admin(caller: Caller) -> None:
    if not caller.is_admin:
        raise PermissionDeniedError("this route needs the admin key")


def require_tenant(caller: Caller) -> str:
    """The tenant a call acts for; admin calls name it in the X-Lorafleet-Tenant header."""
    if caller.tenant_id is None:
        raise PermissionDeniedError(
            f"admin calls to tenant routes name the tenant in the {TENANT_HEADER} header"
        )
    return caller.tenant_id
