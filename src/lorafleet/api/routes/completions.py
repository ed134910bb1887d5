"""OpenAI-compatible inference routes: POST /v1/completions and POST /v1/chat/completions.

The handlers are thin: `InferenceService` (app.state.inference) does the work on its own threads; the
app's handlers (`api.errors`) answer its errors in OpenAI's shape. If the client goes away, its engine
request is cancelled, streamed or not, so no batch row keeps generating for nobody.

Every answer carries `X-Lorafleet-Version`, the version that serves it (as `system_fingerprint` names
it); a stream's too, since the request is routed before it is queued.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel
from starlette.types import Receive, Scope, Send

from lorafleet.api.deps import CallerDep
from lorafleet.api.errors import ServiceUnavailableError, error_responses
from lorafleet.api.inference import Generation, InferenceService
from lorafleet.api.openai_shapes import (
    ChatCompletion,
    ChatCompletionRequest,
    CompletionRequest,
    TextCompletion,
)
from lorafleet.errors import LorafleetError

VERSION_HEADER = "X-Lorafleet-Version"


class EventStream(StreamingResponse):
    """Server-sent events of one generation; its engine request is cancelled if the client goes away."""

    def __init__(self, generation: Generation, service: InferenceService) -> None:
        self.generation = generation
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", VERSION_HEADER: generation.version}
        super().__init__(self._lines(service), media_type="text/event-stream", headers=headers)

    async def _lines(self, service: InferenceService) -> AsyncIterator[str]:
        lines = iter(self.generation)
        while (line := await service.in_thread(partial(next, lines, None))) is not None:
            yield line

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.generation.cancel()  # nothing to do once it has finished


def get_inference(request: Request) -> InferenceService:
    """The app's inference service (`app.state.inference`)."""
    service: InferenceService | None = request.app.state.inference
    if service is None:
        raise ServiceUnavailableError("this server does not serve models (it runs with serve_models off)")
    return service


InferenceDep = Annotated[InferenceService, Depends(get_inference)]
ERRORS = error_responses(422, 429, 503)  # beyond those of every route (api.openapi)
STREAMED: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"text/event-stream": {}},
        "description": "The response, or with stream: SSE chunks",
        "headers": {
            VERSION_HEADER: {
                "description": "The adapter version that serves the request (`support@3`), or the base "
                "model's name; the same as the body's `system_fingerprint`",
                "schema": {"type": "string"},
                "required": True,
            }
        },
    }
}

router = APIRouter(tags=["inference"])


@router.post("/v1/completions", response_model=TextCompletion, responses={**STREAMED, **ERRORS})
async def create_completion(
    body: CompletionRequest, caller: CallerDep, service: InferenceDep, request: Request, response: Response
) -> BaseModel | Response:
    """Continue a prompt with the base model or one of the tenant's adapters (OpenAI's completions API)."""
    generation = await service.in_thread(partial(service.submit, caller, body))
    return await _answer(service, generation, request, response)


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses={**STREAMED, **ERRORS})
async def create_chat_completion(
    body: ChatCompletionRequest,
    caller: CallerDep,
    service: InferenceDep,
    request: Request,
    response: Response,
) -> BaseModel | Response:
    """Answer a chat with the base model or one of the tenant's adapters (OpenAI's chat completions API)."""
    generation = await service.in_thread(partial(service.submit, caller, body))
    return await _answer(service, generation, request, response)


async def _answer(
    service: InferenceService, generation: Generation, request: Request, response: Response
) -> TextCompletion | ChatCompletion | Response:
    """The event stream, or the whole response once done (cancelling it if the client goes away first)."""
    if generation.body.stream:
        return EventStream(generation, service)
    response.headers[VERSION_HEADER] = generation.version
    failure: LorafleetError | None = None
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_cancel_on_disconnect, request, generation)
        try:
            answer = await service.in_thread(generation.response)
        except LorafleetError as err:  # raised below, outside the group, so it is not wrapped in a group
            failure = err
        finally:
            tasks.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return answer


async def _cancel_on_disconnect(request: Request, generation: Generation) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
    generation.cancel()
