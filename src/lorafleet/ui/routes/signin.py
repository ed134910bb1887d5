"""Signing in with an API key (a tenant's, or the admin key) and signing out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from lorafleet.api.errors import ApiError
from lorafleet.errors import AuthenticationError
from lorafleet.ui.pages import (
    CheckedFormDep,
    PageAdminDep,
    PageRoute,
    PageSessionDep,
    back_to,
    registry_of,
    render,
    signer_of,
)
from lorafleet.ui.session import ADMIN, SESSION_COOKIE, SESSION_SECONDS, SIGNIN_COOKIE, same_token

router = APIRouter(prefix="/ui", route_class=PageRoute, include_in_schema=False)


def _safe_next(target: str | None) -> str:
    """Where to go after signing in: a dashboard path only (never another site)."""
    if target and target.startswith("/ui/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui/adapters"


def _signin_page(request: Request, *, next_page: str, failure: ApiError | None = None) -> HTMLResponse:
    token, cookie = signer_of(request).new_signin()
    response = render(request, "signin.html", None, failure=failure, csrf_token=token, next_page=next_page)
    response.set_cookie(SIGNIN_COOKIE, cookie, httponly=True, samesite="strict", path="/ui/login")
    return response


@router.get("/login", response_class=HTMLResponse)
def signin_form(request: Request, next: Annotated[str | None, Query(max_length=2000)] = None) -> HTMLResponse:
    return _signin_page(request, next_page=_safe_next(next))


@router.post("/login", response_class=HTMLResponse)
def sign_in(
    request: Request,
    api_key: Annotated[str, Form(max_length=512)] = "",
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    """Check the key; on success a session cookie and a redirect to where the user was going."""
    signer = signer_of(request)
    next_page = _safe_next(next)
    if not same_token(csrf_token, signer.signin_token(request.cookies.get(SIGNIN_COOKIE))):
        failure = ApiError(403, "The form expired or was not ours: sign in again.")
        return _signin_page(request, next_page=next_page, failure=failure)
    secret = api_key.strip()
    if request.app.state.authenticate.is_admin_key(secret):
        _, cookie = signer.new_session(ADMIN, None)
        next_page = next_page if next_page.startswith("/ui/admin") else "/ui/admin"
    else:
        try:
            key, _ = registry_of(request).tenants.key_and_tenant(secret) if secret else (None, None)
        except AuthenticationError as err:
            return _signin_page(request, next_page=next_page, failure=ApiError(401, f"Not signed in: {err}."))
        if key is None:
            return _signin_page(request, next_page=next_page, failure=ApiError(401, "Enter an API key."))
        _, cookie = signer.new_session(key.id, key.tenant_id)
    response = RedirectResponse(next_page, status_code=303)
    _set_session(request, response, cookie)
    response.delete_cookie(SIGNIN_COOKIE, path="/ui/login")
    return response


@router.post("/logout")
def sign_out(_session: PageSessionDep, _form: CheckedFormDep) -> Response:
    response = back_to("/ui/login")
    response.delete_cookie(SESSION_COOKIE, path="/ui")
    return response


@router.post("/admin/act")
def act_for_tenant(request: Request, _admin: PageAdminDep, form: CheckedFormDep) -> Response:
    """The admin looks at one tenant's pages (the API's X-Lorafleet-Tenant), or back at its own."""
    tenant_id = str(form.get("tenant") or "")
    tenant = registry_of(request).tenants.get(tenant_id).id if tenant_id else None
    _, cookie = signer_of(request).new_session(ADMIN, tenant)
    response = back_to("/ui/adapters" if tenant else "/ui/admin")
    _set_session(request, response, cookie)
    return response


def _set_session(request: Request, response: Response, cookie: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/ui",
    )
