"""The upload limit, enforced as the body arrives: an oversized upload is refused before it is read.

FastAPI parses a multipart body whole (spooling the file to disk past 1 MB) before a route's code runs,
so a size check in the route comes after the server has taken in every byte. `LimitedBodyRoute` puts
the limit in front of that parsing:

    Content-Length declared over the limit   → 413 at once; not one byte of the body is read
    no Content-Length (a chunked body)        → bytes are counted as they are received; 413 as soon as
                                                they pass the limit, and the rest is never read

The limit is the server's `max_upload_bytes` plus `ENVELOPE_BYTES` for the multipart boundaries, the
part headers and the small form fields, so the route's own check of the file's size (which names the
file) decides everything within that allowance. A 413 closes the connection, so the server does not
drain a body it refused.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.types import Message, Receive

from lorafleet.api.errors import ApiError, UploadTooLargeError

ENVELOPE_BYTES = 16 * 1024  # multipart boundaries, part headers (a 255-character file name), form fields


class LimitedBodyRoute(APIRoute):
    """A route whose request body may not exceed the server's upload limit (see the module docstring)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def limited(request: Request) -> Response:
            upload_limit: int = request.app.state.settings.max_upload_bytes
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > upload_limit + ENVELOPE_BYTES:
                raise too_large(f"the request body ({int(declared):,} bytes) is over", upload_limit)
            body = _CountedBody(request.receive, upload_limit)
            try:
                return await handler(Request(request.scope, body.receive))
            except HTTPException:  # FastAPI answers any error while parsing the body with a 400
                if body.refused is not None:
                    raise body.refused from None
                raise

        return limited


def too_large(what: str, upload_limit: int) -> ApiError:
    """A 413 in OpenAI's error shape that closes the connection (the rest of the body is not read)."""
    error = ApiError.of(UploadTooLargeError(f"{what} the upload limit of {upload_limit:,} bytes"))
    error.headers["Connection"] = "close"
    return error


class _CountedBody:
    """A request's `receive` that counts body bytes; past the limit and its envelope it raises the 413."""

    def __init__(self, receive: Receive, upload_limit: int) -> None:
        self._receive = receive
        self.upload_limit = upload_limit
        self.received = 0
        self.refused: ApiError | None = None

    async def receive(self) -> Message:
        if self.refused is not None:
            raise self.refused
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.upload_limit + ENVELOPE_BYTES:
                self.refused = too_large("the request body is over", self.upload_limit)
                raise self.refused
        return message
