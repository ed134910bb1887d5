"""`InferenceService`: OpenAI-shaped requests (`openai_shapes`) as engine requests for the caller's adapter.

A completion's prompt is sent as is; chat messages go through the tokenizer's chat template. The model
name and the user (OpenAI's `user` field, else the API key) go through the router once (`route`, which
also checks the tenant's quota): its `Route` carries the version to serve as an `AdapterHandle`, whose
version id is the engine's adapter key. Every response (and stream chunk) names that version in
`system_fingerprint` (`support@3`; the base model's name for the base), and so does its usage event.
Errors are `LorafleetError`s answered by `api.errors`: 400 for a bad field or prompt, 403 for the admin
key (inference is queued and metered per tenant), 404 for a model the tenant does not have, 422 for an
adapter that cannot be served, 429 when the engine's queue is full, 503 when the engine fails or stops.

An adapter is read here, in the request's thread, before the request is queued, so a broken one is a
422 at once (not a failed completion) and the engine's loop never waits on a disk read.
Blocking work (tokenizing, reading adapters, waiting for tokens) runs on the service's own thread pool,
sized to the requests the engine can hold, so waiting streams never starve the app's default pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from lorafleet.api.deps import Caller
from lorafleet.api.errors import ApiError, PermissionDeniedError, ServiceUnavailableError
from lorafleet.api.openai_shapes import (
    MAX_TOKENS,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatMessageOut,
    CompletionChoice,
    CompletionRequest,
    FinishReason,
    TextCompletion,
    Usage,
)
from lorafleet.errors import AdapterError, ConfigError, LorafleetError, QueueFullError, validated

if TYPE_CHECKING:  # torch comes with these; they are imported where used, so importing the API stays light
    from lorafleet.serving.cache import AdapterSource
    from lorafleet.serving.engine import Engine
    from lorafleet.serving.requests import Completion, RequestHandle
    from lorafleet.serving.router import Route

logger = logging.getLogger(__name__)
KEEP_ALIVE_SECONDS = 15.0  # an idle stream gets an SSE comment this often (proxies close idle ones at 60 s)
T = TypeVar("T")

# --- the service ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageEvent:
    """One finished request, for metering and the request log: who asked, for which model, what was asked
    and answered, and how many tokens it took."""

    tenant_id: str
    key_id: str | None
    model: str  # the model string the client sent
    adapter: str | None  # the version id that served it (the engine's adapter key); None for the base model
    prompt_tokens: int
    completion_tokens: int
    seconds: float  # from queueing to the last token
    finish_reason: str  # stop, length, error or cancelled (the client went away)
    request_id: str
    response_id: str = ""  # the response's `id` as the client saw it (`chatcmpl-…`, `cmpl-…`)
    prompt: str | None = None  # a completion's prompt, as sent
    messages: list[dict[str, str]] | None = None  # a chat's messages, as the chat template took them
    text: str = ""  # the generated text (what was generated before an error or cancellation)
    version: str = ""  # the served version as `name@number` (the base model's name for the base)
    route: str = ""  # why the router chose it: alias, explicit, canary, ab:<experiment> or base


class Generation:
    """One request in the engine: wait for its `response()`, or iterate it for SSE lines; `cancel()` it."""

    def __init__(
        self,
        service: InferenceService,
        caller: Caller,
        body: CompletionRequest | ChatCompletionRequest,
        route: Route,
        handle: RequestHandle,
    ) -> None:
        self.service = service
        self.caller = caller
        self.body = body
        self.route = route
        # the served version as responses name it (system_fingerprint, X-Lorafleet-Version)
        self.version = route.handle.reference if route.handle is not None else service.base_name
        self.handle = handle
        self.chat = isinstance(body, ChatCompletionRequest)
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + handle.request.request_id
        self.created = int(time.time())
        self._reported = False
        self._lock = threading.Lock()

    def wait(self, timeout: float | None = None) -> Completion:
        """The engine's completion (reported to `on_usage`, once)."""
        completion = self.handle.result(timeout)
        with self._lock:
            first, self._reported = not self._reported, True
        if first:
            self.service._finished(self, completion)
        return completion

    def response(self) -> TextCompletion | ChatCompletion:
        """The whole response; `ServiceUnavailableError` when the engine failed or cancelled the request."""
        completion = self.wait()
        reason = self._finish_reason(completion)
        usage = _usage(completion)
        if self.chat:
            message = ChatMessageOut(content=completion.text)
            choice = ChatChoice(message=message, finish_reason=reason)
            return ChatCompletion(choices=[choice], usage=usage, **self._header())
        choices = [CompletionChoice(text=completion.text, finish_reason=reason)]
        return TextCompletion(choices=choices, usage=usage, **self._header())

    def __iter__(self) -> Iterator[str]:
        """Server-sent events (`data: {json}\\n\\n`) of the text as generated, then `data: [DONE]`."""
        if self.chat:
            yield self._chunk(ChatDelta(role="assistant", content=""))
        for piece in self.handle.pieces(heartbeat=KEEP_ALIVE_SECONDS):
            if piece is None:  # still queued or slow: an SSE comment keeps proxies from closing the stream
                yield ": keep-alive\n\n"
                continue
            yield self._chunk(ChatDelta(content=piece) if self.chat else piece)
        completion = self.wait()
        try:
            reason = self._finish_reason(completion)
        except ServiceUnavailableError as err:  # the status is sent already: the error goes in the stream
            yield _event(ApiError.of(err).body.model_dump_json())
        else:
            yield self._chunk(ChatDelta() if self.chat else "", finish_reason=reason)
            if self.body.include_usage:
                yield self._chunk(None, usage=_usage(completion))
        yield _event("[DONE]")

    def cancel(self) -> None:
        """Stop generating (the client went away); the usage is still reported when the engine lets go."""
        with self._lock:
            if self._reported:
                return
        self.handle.cancel()
        self.service._in_background(self._report_when_done)

    def _report_when_done(self) -> None:
        try:
            self.wait(timeout=60.0)
        except TimeoutError:
            logger.warning("request %s did not finish within 60 s of its cancellation", self.id)

    def _finish_reason(self, completion: Completion) -> FinishReason:
        reason = completion.finish_reason
        if reason == "stop" or reason == "length":  # narrowed for every mypy (`in` is not, before 2.0)
            return reason
        why = completion.error or "the request was cancelled (the server is shutting down)"
        raise ServiceUnavailableError(f"the engine could not complete the request: {why}")

    def _chunk(
        self,
        delta: ChatDelta | str | None,
        *,
        finish_reason: FinishReason | None = None,
        usage: Usage | None = None,
    ) -> str:
        """One chunk event: a delta (chat) or text piece (completions); None for the usage-only chunk."""
        base = {**self._header(), "usage": usage}
        chunk: BaseModel
        if self.chat:
            choices = [] if delta is None else [ChatChunkChoice(delta=delta, finish_reason=finish_reason)]
            chunk = ChatCompletionChunk(choices=choices, **base)
        else:
            text = [] if delta is None else [CompletionChoice(text=delta, finish_reason=finish_reason)]
            chunk = TextCompletion(choices=text, **base)
        return _event(chunk.model_dump_json())

    def _header(self) -> dict[str, Any]:
        """The fields every response and chunk starts with."""
        return {
            "id": self.id,
            "created": self.created,
            "model": self.body.model,
            "system_fingerprint": self.version,
        }


class InferenceService:
    """The OpenAI-compatible front of one started `Engine`: routes each request to a version of the
    caller's tenant, queues it fairly by tenant, and reports each finished request's usage.

    `route(tenant_id, model, user)` gives the request's `Route` (its handle None for the base model) or
    raises `UnknownAdapterError`; it sees every request, the base model's too, so it may check the
    tenant's quota. `base_name` is the base model's name, which responses give as the version that served
    a base route. `on_usage` gets a `UsageEvent` once per finished request, in a worker thread (an
    exception there is logged, not raised).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        base_name: str,
        route: Callable[[str, str, str | None], Route],
        on_usage: Callable[[UsageEvent], None] | None = None,
    ) -> None:
        self.engine = engine
        self.base_name = base_name
        self.route = route
        self.on_usage = on_usage
        # every request the engine holds may have one thread waiting on it, and a few more arrive
        workers = engine.max_batch + engine.queue.max_size + 8
        self._threads = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lorafleet-inference")
        self._pending: set[Generation] = set()
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def build(
        cls,
        model_spec: str,
        source: AdapterSource,
        *,
        base_name: str,
        route: Callable[[str, str, str | None], Route],
        on_usage: Callable[[UsageEvent], None] | None = None,
        max_batch: int = 32,
        max_slots: int = 64,
        queue_size: int = 256,
        device: str | None = None,
    ) -> InferenceService:
        """Load base model `model_spec` (as `load_base`), serve adapters from `source`, start the engine."""
        from lorafleet.models import load_base
        from lorafleet.serving.engine import Engine

        model, tokenizer = load_base(model_spec, device=device)
        engine = Engine.for_model(
            model, tokenizer, source=source, max_batch=max_batch, max_slots=max_slots, queue_size=queue_size
        )
        engine.start()
        return cls(engine, base_name=base_name, route=route, on_usage=on_usage)

    def route_for(self, caller: Caller, body: CompletionRequest | ChatCompletionRequest) -> Route:
        """Where the caller's request goes: its `model` for its `user`, or for its API key without one."""
        assert caller.tenant_id is not None
        user = body.user or (f"key:{caller.key_id}" if caller.key_id is not None else None)
        return self.route(caller.tenant_id, body.model, user)  # the base too: it checks the quota

    def submit(self, caller: Caller, body: CompletionRequest | ChatCompletionRequest) -> Generation:
        """Queue `body` for the caller's tenant; a `LorafleetError` saying why when it cannot be."""
        from lorafleet.serving.requests import Request

        if caller.tenant_id is None:
            raise PermissionDeniedError(
                "inference is metered per tenant; call it with a tenant's API key, not the admin key"
            )
        chat = isinstance(body, ChatCompletionRequest)
        if isinstance(body, ChatCompletionRequest):
            limit = body.max_completion_tokens or body.max_tokens or MAX_TOKENS
            sampling = body.sampling(max_tokens=limit, chat=True)
            inputs: dict[str, Any] = {"messages": [m.as_template_message() for m in body.messages]}
        else:
            sampling = body.sampling(max_tokens=body.max_tokens or 16, chat=False)
            inputs = {"prompt": body.text}
        try:
            route = self.route_for(caller, body)
            if route.target is not None:  # read it now: a broken adapter fails here, with its reason
                self.engine.read_adapter(route.target)
        except (ConfigError, AdapterError) as err:  # not a model name, an unknown or a broken adapter
            raise ApiError.of(err, param="model") from err
        request = validated(
            Request, "request", adapter=route.target, sampling=sampling, tenant=caller.tenant_id, **inputs
        )
        try:
            handle = self.engine.submit(request)
        except ConfigError as err:  # the prompt cannot be served: empty, or longer than the context
            raise ApiError.of(err, param="messages" if chat else "prompt") from err
        except QueueFullError:
            raise
        except LorafleetError as err:  # the queue is closed: the server is shutting down
            raise ServiceUnavailableError(str(err)) from err
        generation = Generation(self, caller, body, route, handle)
        with self._lock:
            self._pending.add(generation)
        return generation

    def complete(
        self, caller: Caller, body: CompletionRequest | ChatCompletionRequest
    ) -> TextCompletion | ChatCompletion:
        """The whole response to `body` (blocks until the engine finishes it)."""
        return self.submit(caller, body).response()

    def stream(self, caller: Caller, body: CompletionRequest | ChatCompletionRequest) -> Generation:
        """`body` queued; iterate the result for its SSE lines, `cancel()` it if the client goes away."""
        return self.submit(caller, body)

    async def in_thread(self, work: Callable[[], T]) -> T:
        """`work()` on the service's threads, awaited without blocking the event loop."""
        if self._closed:
            raise ServiceUnavailableError("the inference service is shut down")
        return await asyncio.get_running_loop().run_in_executor(self._threads, work)

    def close(self) -> None:
        """Cancel every request in flight, stop the engine, and release the threads waiting on it."""
        self._closed = True
        self.engine.stop()
        self.engine.queue.close()  # later submits fail (503)
        with self._lock:
            pending = list(self._pending)
        for generation in pending:
            generation.handle.cancel()
        self.engine.run_until_idle()  # completes them, cancelled, so their waiting threads return
        self._threads.shutdown(wait=False, cancel_futures=True)

    def _in_background(self, work: Callable[[], None]) -> None:
        with contextlib.suppress(RuntimeError):  # shut down: close() completed every request already
            self._threads.submit(work)

    def _finished(self, generation: Generation, completion: Completion) -> None:
        """Forget `generation` and report its usage."""
        with self._lock:
            self._pending.discard(generation)
        if self.on_usage is None:
            return
        event = UsageEvent(
            tenant_id=generation.caller.tenant_id or "",
            key_id=generation.caller.key_id,
            model=generation.body.model,
            adapter=generation.route.target,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            seconds=time.perf_counter() - generation.handle.submitted_at,
            finish_reason=completion.finish_reason,
            request_id=completion.request_id,
            response_id=generation.id,
            prompt=generation.handle.request.prompt,
            messages=generation.handle.request.messages,
            text=completion.text,
            version=generation.version,
            route=generation.route.reason,
        )
        try:
            self.on_usage(event)
        except Exception:
            logger.exception("on_usage failed for request %s", completion.request_id)


def _usage(completion: Completion) -> Usage:
    prompt, generated = completion.prompt_tokens, completion.completion_tokens
    return Usage(prompt_tokens=prompt, completion_tokens=generated, total_tokens=prompt + generated)


def _event(data: str) -> str:
    """One server-sent event carrying `data`."""
    return f"data: {data}\n\n"


__all__ = ["Generation", "InferenceService", "UsageEvent"]
