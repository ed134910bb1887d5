"""The OpenAPI document as the server really answers: OpenAI-shaped errors, the bearer scheme, content types.

FastAPI declares a 422 in its own shape on every route with a body or parameters, while this server
answers invalid requests with a 400 in OpenAI's shape (`api.errors`). `describe_errors` drops those
422s and declares, on every operation, the errors any route can send:

    every operation                       500  a fault of the server (answered by the catch-all handler)
    with parameters or a body             400  a field is invalid (or the body is not JSON)
    behind the bearer key                 401  no key, or an unknown or revoked one
                                          403  a key that may not call the route
                                          404  not found for the caller's tenant (also: an admin acting
                                               for an unknown tenant in X-Lorafleet-Tenant)
                                          429  the key's rate limit, with Retry-After

A route declares its own further errors (409, 413, 422, 503) with `error_responses` beside its code.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from lorafleet.api.errors import ERROR_DESCRIPTIONS, ErrorBody

SCHEMAS = "#/components/schemas/"
AUTHENTICATED = (401, 403, 404, 429)
RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before trying again", "schema": {"type": "integer"}}
}


def install_openapi(app: FastAPI) -> None:
    """Serve `describe_errors` of FastAPI's document at /openapi.json (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            describe_errors(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def describe_errors(schema: dict[str, Any]) -> None:
    """Replace FastAPI's 422s by the errors this server sends, each with OpenAI's error body (see above)."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    body = ErrorBody.model_json_schema(ref_template=SCHEMAS + "{model}")
    components.update(body.pop("$defs", {}))
    components["ErrorBody"] = body
    for operations in schema["paths"].values():
        for operation in operations.values():
            responses: dict[str, Any] = operation["responses"]
            if _is_fastapi_validation(responses.get("422")):
                del responses["422"]
            statuses = {500}
            if operation.get("parameters") or operation.get("requestBody"):
                statuses.add(400)
            if operation.get("security"):
                statuses.update(AUTHENTICATED)
            for status in sorted(statuses):
                responses.setdefault(str(status), _error_response(status))
            if "429" in responses:  # a route's own 429 (the engine's queue) carries it too
                responses["429"].setdefault("headers", RETRY_AFTER)
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)


def _error_response(status: int) -> dict[str, Any]:
    content = {"application/json": {"schema": {"$ref": SCHEMAS + "ErrorBody"}}}
    return {"description": ERROR_DESCRIPTIONS[status], "content": content}


def _is_fastapi_validation(response: dict[str, Any] | None) -> bool:
    if response is None:
        return False
    ref = response.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref", "")
    return str(ref).endswith("/HTTPValidationError")
