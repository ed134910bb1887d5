"""lorafleet errors as HTTP answers in OpenAI's error shape: `{"error": {message, type, param, code}}`.

400  a field out of range, bad data (naming file:line), a bad name     invalid_request_error
401  a missing, unknown or revoked API key                              authentication_error
403  a tenant key on an admin route, the admin key on inference         permission_error
404  another tenant's resource or none at all; an unknown model         invalid_request_error
409  a clash with the current state (a name in use, a finished job)     invalid_request_error
     a version refused by its promotion gate (`error.report`)           (code gate_refused)
413  an upload over the size limit                                      invalid_request_error
422  an adapter that is known but cannot be served                      invalid_request_error
429  a quota, a key's rate limit, or the engine's queue; Retry-After    rate_limit_error
500  a fault of the server itself (logged with its traceback)           server_error
503  the engine failed the request or is shutting down                  server_error

Every answer the server sends for an error has this shape, whatever raised it: an exception that
reaches the app wrapped in an exception group (as anyio's task groups wrap them) is answered by its
one lorafleet error, and anything else is a 500 whose details stay in the server log.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from lorafleet.errors import (
    AdapterError,
    AlreadyExistsError,
    AuthenticationError,
    ConfigError,
    ConflictError,
    GateRefusedError,
    LorafleetError,
    NotFoundError,
    QueueFullError,
    QuotaExceededError,
    UnknownAdapterError,
    field_path,
)


class PermissionDeniedError(LorafleetError):
    """The key may not call this route (a tenant key on an admin route)."""


class UploadTooLargeError(LorafleetError):
    """An upload over the server's size limit."""


class ServiceUnavailableError(LorafleetError):
    """The engine failed a request or is shutting down."""


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None
    report: dict[str, Any] | None = Field(
        None, description="A refused promotion's gate report: every check, its value, limit and why."
    )


class ErrorBody(BaseModel):
    """OpenAI's error body."""

    error: ErrorDetail


# (class, status, type, code); the first matching class wins, so subclasses come before their parents.
STATUS: tuple[tuple[type[LorafleetError], int, str, str | None], ...] = (
    (UnknownAdapterError, 404, "invalid_request_error", "model_not_found"),
    (NotFoundError, 404, "invalid_request_error", "not_found"),
    (AuthenticationError, 401, "authentication_error", "invalid_api_key"),
    (PermissionDeniedError, 403, "permission_error", None),
    (QuotaExceededError, 429, "rate_limit_error", "quota_exceeded"),
    (QueueFullError, 429, "rate_limit_error", "queue_full"),
    (GateRefusedError, 409, "invalid_request_error", "gate_refused"),
    (ConflictError, 409, "invalid_request_error", "conflict"),
    (AlreadyExistsError, 409, "invalid_request_error", "conflict"),
    (UploadTooLargeError, 413, "invalid_request_error", "file_too_large"),
    (ConfigError, 400, "invalid_request_error", None),
    (AdapterError, 422, "invalid_request_error", "adapter_unavailable"),
    (ServiceUnavailableError, 503, "server_error", None),
)


ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "A field is invalid or not supported (`param` names it), or the body is not JSON",
    401: "No API key, or an unknown or revoked one",
    403: "This key may not call the route",
    404: "No such resource for the caller's tenant",
    409: "The request clashes with the current state (a name in use, a finished job, a file in use, "
    "a version its promotion gate refuses: `error.report`)",
    413: "The upload is over the server's size limit",
    422: "The adapter is known but cannot be served",
    429: "A quota, the key's rate limit or the engine's queue is full; retry after Retry-After seconds",
    500: "A fault of the server; its details are in the server log",
    503: "The engine failed the request or is shutting down",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """A route's OpenAPI `responses` for these error statuses, each with OpenAI's error body."""
    return {status: {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[status]} for status in statuses}


class ApiError(LorafleetError):
    """An error answered with `status` and OpenAI's error body (and `headers`, e.g. Retry-After)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        report: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        detail = ErrorDetail(message=message, type=type, param=param, code=code, report=report)
        self.body = ErrorBody(error=detail)
        self.headers = headers or {}

    @classmethod
    def of(cls, err: LorafleetError, *, param: str | None = None) -> ApiError:
        """The answer to `err` by the table above (400 for kinds it does not name)."""
        if isinstance(err, ApiError):
            return err
        status, kind, code = 400, "invalid_request_error", None
        for cls_, status_, kind_, code_ in STATUS:
            if isinstance(err, cls_):
                status, kind, code = status_, kind_, code_
                break
        headers = {}
        retry_after = getattr(err, "retry_after", None)
        if status == 429 and retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(retry_after)))  # whole seconds, never "0"
        if status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        param = param or getattr(err, "field", None)  # a ConfigError names the field at fault
        report = getattr(err, "report", None)  # a refused promotion's gate report
        return cls(status, str(err), type=kind, param=param, code=code, headers=headers, report=report)

    def response(self) -> JSONResponse:
        body = self.body.model_dump()
        if body["error"]["report"] is None:  # only refused promotions carry one
            del body["error"]["report"]
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def validation_error(errors: list[Any]) -> ApiError:
    """A 400 naming every bad field of a request (FastAPI's `RequestValidationError.errors()`)."""
    lines, params = [], []
    for item in errors:
        if item.get("type") == "json_invalid":  # its loc is a character offset, not a field
            where = item.get("loc", ("body", 0))[-1]
            reason = item.get("ctx", {}).get("error", "not JSON")
            return ApiError(400, f"invalid JSON body: {reason} (at character {where})")
        loc = [part for part in item.get("loc", ()) if part not in ("body", "query", "path", "header")]
        field = field_path(loc) or "body"  # the field as the client sent it
        got = item.get("input")
        shown = "" if isinstance(got, dict | list) or "input" not in item else f" (got {got!r})"
        lines.append(f"{field}: {item.get('msg', 'invalid')}{shown}")
        params.append(field)
    return ApiError(400, "; ".join(lines) or "invalid request", param=params[0] if params else None)


def install_error_handlers(app: FastAPI) -> None:
    """Answer `LorafleetError`s by the table above and invalid requests with a 400 naming the field."""

    async def lorafleet_error(_request: Request, err: Exception) -> JSONResponse:
        assert isinstance(err, LorafleetError)
        return ApiError.of(err).response()

    async def invalid_request(_request: Request, err: Exception) -> JSONResponse:
        assert isinstance(err, RequestValidationError)
        return validation_error(list(err.errors())).response()

    async def http_error(request: Request, err: Exception) -> JSONResponse:  # an unknown route or method
        assert isinstance(err, StarletteHTTPException)
        kind = "server_error" if err.status_code >= 500 else "invalid_request_error"
        message = f"{request.method} {request.url.path}: {err.detail}"
        return ApiError(err.status_code, message, type=kind, headers=dict(err.headers or {})).response()

    async def unexpected_error(request: Request, err: Exception) -> JSONResponse:
        known = _only_lorafleet_error(err)
        if known is not None:  # a lorafleet error that left a task group wrapped in an exception group
            return ApiError.of(known).response()
        # Starlette re-raises `err` after this answer is sent, so the server log gets its traceback
        message = f"{request.method} {request.url.path}: the server failed to answer; the fault is logged"
        return ApiError(500, message, type="server_error").response()

    app.add_exception_handler(LorafleetError, lorafleet_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)


def _only_lorafleet_error(err: BaseException) -> LorafleetError | None:
    """The one `LorafleetError` inside (nested) exception groups holding nothing else, or None."""
    while isinstance(err, BaseExceptionGroup) and len(err.exceptions) == 1:
        err = err.exceptions[0]
    return err if isinstance(err, LorafleetError) else None
