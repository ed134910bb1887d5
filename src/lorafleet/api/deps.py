"""Dependencies shared by the routes: who is calling (`CallerDep`), the registry, the inference service."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

if TYPE_CHECKING:
    from lorafleet.registry import Registry


@dataclass(frozen=True)
class Caller:
    """The authenticated caller: a tenant's API key, or the admin key (tenant_id None)."""

    tenant_id: str | None
    key_id: str | None
    is_admin: bool = False

    @property
    def actor(self) -> str:
        """Who acted, as audit trails record it: `admin`, or `key:<key id>`."""
        return "admin" if self.is_admin else f"key:{self.key_id}"


# Declares the bearer scheme in the OpenAPI document; the authenticator reads the header itself, so a
# missing or malformed one gets our 401 (OpenAI's shape), not FastAPI's 403.
BEARER = HTTPBearer(
    auto_error=False,
    description="A tenant's API key, or the admin key (which names a tenant in X-Lorafleet-Tenant).",
)


def get_caller(
    request: Request, _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]
) -> Caller:
    """The caller named by `Authorization: Bearer <key>`; 401 when the key is missing or unknown.

    The check itself is `app.state.authenticate` (set by `create_app`): tests of one router can swap it.
    """
    authenticate: Any = request.app.state.authenticate
    caller: Caller = authenticate(request)
    return caller


def get_registry(request: Request) -> Registry:
    """The app's registry (`app.state.registry`)."""
    registry: Registry = request.app.state.registry
    return registry


CallerDep = Annotated[Caller, Depends(get_caller)]
RegistryDep = Annotated["Registry", Depends(get_registry)]


def get_tenant(caller: CallerDep) -> str:
    """The tenant a call acts for (a tenant key's own; the admin names one in X-Lorafleet-Tenant)."""
    from lorafleet.api.auth import require_tenant

    return require_tenant(caller)


def get_admin(caller: CallerDep) -> Caller:
    """The caller, if it holds the admin key; 403 otherwise."""
    from lorafleet.api.auth import require_admin

    require_admin(caller)
    return caller


TenantDep = Annotated[str, Depends(get_tenant)]
AdminDep = Annotated[Caller, Depends(get_admin)]
