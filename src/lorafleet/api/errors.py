"""lorafleet errors as HTTP answers in OpenAI's error shape: `{"error": {message, type, param, code}}`.

400  a field out of range, bad data (naming file:line), a bad name     invalid_request_error
401  a missing, unknown or revoked API key                              authentication_error
403  a tenant key on an admin route, the admin key on inference         permission_error
404  another tenant's resource or none at all; an unknown model         invalid_request_error
409  a clash with the current state (a name in use, a finished job)     invalid_request_error
413  an upload over the size limit                                      invalid_request_error
422  an adapter that is known but cannot be served                      invalid_request_error
429  a quota, a key's rate limit, or the engine's queue; Retry-After    rate_limit_error
503  the engine failed the request or is shutting down                  server_error
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from lorafleet.errors import (
    AdapterError,
    AlreadyExistsError,
    AuthenticationError,
    ConfigError,
    ConflictError,
    LorafleetError,
    NotFoundError,
    QueueFullError,
    QuotaExceededError,
    UnknownAdapterError,
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
    (ConflictError, 409, "invalid_request_error", "conflict"),
    (AlreadyExistsError, 409, "invalid_request_error", "conflict"),
    (UploadTooLargeError, 413, "invalid_request_error", "file_too_large"),
    (ConfigError, 400, "invalid_request_error", None),
    (AdapterError, 422, "invalid_request_error", "adapter_unavailable"),
    (ServiceUnavailableError, 503, "server_error", None),
)


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
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = ErrorBody(error=ErrorDetail(message=message, type=type, param=param, code=code))
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
        return cls(status, str(err), type=kind, param=param, code=code, headers=headers)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body.model_dump(), status_code=self.status, headers=self.headers)


def validation_error(errors: list[Any]) -> ApiError:
    """A 400 naming every bad field of a request (FastAPI's `RequestValidationError.errors()`)."""
    lines, params = [], []
    for item in errors:
        loc = [str(part) for part in item.get("loc", ()) if part not in ("body", "query", "path")]
        field = ".".join(loc) or "body"
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

    app.add_exception_handler(LorafleetError, lorafleet_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_error)
