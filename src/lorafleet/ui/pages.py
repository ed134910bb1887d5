"""How a dashboard page is answered: who is signed in, the CSRF check of a form, the template, the errors.

Every page route uses `PageRoute`, so whatever a page raises becomes an HTML answer: a `LorafleetError`
(or a form Starlette could not parse) the error page with the API's status for it (another tenant's
adapter is the same 404 the API gives), a missing or ended session a redirect to the sign-in page.
Bodies are limited like the API's uploads.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException

from lorafleet.api.deps import Caller
from lorafleet.api.errors import ApiError, PermissionDeniedError, validation_error
from lorafleet.api.uploads import LimitedBodyRoute
from lorafleet.errors import AuthenticationError, LorafleetError
from lorafleet.registry import Quotas, Registry
from lorafleet.registry.tables import Tenant
from lorafleet.ui.session import SESSION_COOKIE, Signer, UiSession, same_token

PAGE_SIZE = 50
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "—"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _size(count: int | None) -> str:
    """Bytes in decimal units: `9.6 kB`."""
    if count is None:
        return "—"
    power = min(len(str(max(count, 1))) - 1, 12) // 3  # 0: B, 1: kB, … 4: TB
    return f"{count} B" if power == 0 else f"{count / 1000**power:,.1f} {'kMGT'[power - 1]}B"


def _number(value: object) -> str:
    """A figure as people read it: 3 significant digits for floats, "—" for none."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
templates.env.filters["when"] = _when
templates.env.filters["size"] = _size
templates.env.filters["num"] = _number
templates.env.globals["quota_help"] = {name: field.description for name, field in Quotas.model_fields.items()}


class SignInRequired(LorafleetError):
    """No live session: the page answers with a redirect to the sign-in page."""


class PageRoute(LimitedBodyRoute):
    """A dashboard route: errors become HTML pages, a missing session a redirect to sign in."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page(request: Request) -> Response:
            try:
                response = await handler(request)
            except SignInRequired:
                target = quote(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
                response = RedirectResponse(f"/ui/login?next={target}", status_code=303)
            except RequestValidationError as err:
                response = error_page(request, validation_error(list(err.errors())))
            except StarletteHTTPException as err:  # a form Starlette could not parse (a field over 1 MB)
                response = error_page(request, ApiError(err.status_code, str(err.detail)))
            except LorafleetError as err:
                response = error_page(request, ApiError.of(err))
            response.headers.update(SECURITY_HEADERS)
            return response

        return page


def render(
    request: Request,
    template: str,
    session: UiSession | None,
    *,
    failure: ApiError | None = None,
    **context: Any,
) -> HTMLResponse:
    """The page `template` with the signed-in `session` (its tenant, its CSRF token for forms); with a
    `failure` (a form that was refused), its message on the page and its status as the answer's."""
    if failure is not None:
        context["error"] = failure.body.error.message
    return templates.TemplateResponse(
        request,
        template,
        {"session": session, "tenant": session_tenant(request), "page_size": PAGE_SIZE, **context},
        status_code=failure.status if failure is not None else 200,
    )


def error_page(request: Request, error: ApiError) -> HTMLResponse:
    detail = error.body.error
    return templates.TemplateResponse(
        request,
        "error.html",
        {
            "session": getattr(request.state, "ui_session", None),
            "message": detail.message,
            "param": detail.param,
            "code": error.status,
        },
        status_code=error.status,
    )


def registry_of(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


def signer_of(request: Request) -> Signer:
    signer: Signer = request.app.state.ui_signer
    return signer


def get_page_session(request: Request) -> UiSession:
    """The signed-in browser, checked on every page: a genuine, fresh cookie of a key not revoked since.
    The session and its tenant's row are kept on the request for the page (`session_tenant`)."""
    session = signer_of(request).read_session(request.cookies.get(SESSION_COOKIE))
    if session is None:
        raise SignInRequired("sign in first")
    tenant: Tenant | None = None
    if session.is_admin:
        if not request.app.state.settings.admin_key:
            raise SignInRequired("the server has no admin key any more")
        if session.tenant_id is not None:
            tenant = registry_of(request).tenants.get(session.tenant_id)
    else:
        try:
            key, tenant = registry_of(request).tenants.live_key(session.key_id)
        except AuthenticationError:
            raise SignInRequired("the key of this session was revoked") from None
        if key.tenant_id != session.tenant_id:
            raise SignInRequired("the session does not match its key")
    request.state.ui_session, request.state.ui_tenant = session, tenant
    return session


def session_tenant(request: Request) -> Tenant | None:
    """The row of the tenant the signed-in pages show, read once by `get_page_session` (None: signed
    out, or the admin's own pages)."""
    tenant: Tenant | None = getattr(request.state, "ui_tenant", None)
    return tenant


PageSessionDep = Annotated[UiSession, Depends(get_page_session)]


def get_page_tenant(session: PageSessionDep) -> str:
    """The tenant the pages show (the admin picks one on the tenants page)."""
    if session.tenant_id is None:
        raise PermissionDeniedError("choose a tenant to look at on the Tenants page first")
    return session.tenant_id


PageTenantDep = Annotated[str, Depends(get_page_tenant)]


def get_page_admin(session: PageSessionDep) -> Caller:
    """The admin, as the API's admin routes take it; 403 for a tenant's session."""
    if not session.is_admin:
        raise PermissionDeniedError("this page needs the admin key")
    return page_caller(session)


PageAdminDep = Annotated[Caller, Depends(get_page_admin)]


def page_caller(session: UiSession) -> Caller:
    """The session as the API's routes take their caller (audit trails name the same actor)."""
    if session.is_admin:
        return Caller(tenant_id=session.tenant_id, key_id=None, is_admin=True)
    return Caller(tenant_id=session.tenant_id, key_id=session.key_id)


class CsrfRefusedError(PermissionDeniedError):
    """A form posted without the session's CSRF token."""


async def get_checked_form(request: Request, session: PageSessionDep) -> FormData:
    """The posted form, once its `csrf_token` matches the session's; 403 otherwise, and nothing changes."""
    form = await request.form()
    if not same_token(form.get("csrf_token"), session.csrf):
        raise CsrfRefusedError("the form's CSRF token is missing or wrong: reload the page and send it again")
    return form


CheckedFormDep = Annotated[FormData, Depends(get_checked_form)]


def back_to(path: str) -> RedirectResponse:
    """After a form: 303 to the page that shows its result (a reload does not post it again)."""
    return RedirectResponse(path, status_code=303)
