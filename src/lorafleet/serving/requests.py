"""What goes into the engine and what comes out: `Request`, its `RequestHandle`, and the `Completion`."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Literal
from uuid import uuid4

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lorafleet.serving.generate import SamplingSettings

FinishReason = Literal["stop", "length", "error", "cancelled"]


class Request(BaseModel):
    """One completion to generate: a prompt (or chat messages), the adapter to use, and how to sample."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str | None = Field(
        None, description="The prompt; a user turn when sampling.chat and a template exist."
    )
    messages: list[dict[str, str]] | None = Field(
        None,
        description="Chat messages ({role, content}) rendered with the chat template, instead of prompt.",
    )
    prompt_ids: list[int] | None = Field(
        None, description="Token ids given to the model as they are, instead of prompt or messages."
    )
    adapter: str | None = Field(None, description="Adapter reference (name, path, registry id); None = base.")
    sampling: SamplingSettings = Field(default_factory=SamplingSettings, description="How to pick tokens.")
    tenant: str = Field("default", min_length=1, max_length=128, description="Who asks, for fair queueing.")
    request_id: str = Field(
        default_factory=lambda: uuid4().hex, description="Identifies the request in results."
    )
    stop_when: Callable[[str], bool] | None = Field(
        None,
        exclude=True,
        description="Ends the completion (finish 'stop') as soon as its text so far makes this true: "
        "evaluation stops an answer its metric can no longer accept.",
    )

    @model_validator(mode="after")
    def _one_input(self) -> Request:
        if sum(given is not None for given in (self.prompt, self.messages, self.prompt_ids)) != 1:
            raise ValueError("give exactly one of prompt, messages and prompt_ids")
        return self


class Completion(BaseModel):
    """A finished request: its text and tokens, token counts for metering, why it ended, and timings."""

    request_id: str
    adapter: str | None
    text: str
    token_ids: list[int]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    error: str | None = None
    time_to_first_token: float | None = Field(None, description="Seconds from submit to the first token.")
    time_per_output_token: float | None = Field(None, description="Seconds per token after the first.")


class RequestHandle:
    """A submitted request: iterate it for text pieces as they are generated, or wait for `result()`.

    Iterate from one consumer only; pieces are handed out once.
    """

    def __init__(self, request: Request, prompt_ids: list[int]) -> None:
        self.request = request
        self.prompt_ids = prompt_ids
        self.submitted_at = time.perf_counter()
        self.first_token_at: float | None = None
        self._pieces: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._done = threading.Event()
        self._cancelled = threading.Event()
        self._completion: Completion | None = None

    def __iter__(self) -> Iterator[str]:
        yield from (piece for piece in self.pieces() if piece is not None)

    def pieces(self, *, heartbeat: float | None = None) -> Iterator[str | None]:
        """The text pieces as generated; with `heartbeat`, also None after each `heartbeat` seconds
        without one (so a server can keep an idle stream alive while the request waits in the queue)."""
        while True:
            try:
                piece = self._pieces.get(timeout=heartbeat)
            except queue.Empty:
                yield None
                continue
            if piece is None:
                return
            yield piece

    def result(self, timeout: float | None = None) -> Completion:
        """The completion, waiting up to `timeout` seconds (the engine must be stepping meanwhile)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.request.request_id} did not finish within {timeout} s")
        assert self._completion is not None
        return self._completion

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> None:
        """Stop generating for this request at the next step (its completion says "cancelled")."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def _emit(self, piece: str) -> None:
        self._pieces.put(piece)

    def _finish(self, completion: Completion) -> None:
        self._completion = completion
        self._done.set()
        self._pieces.put(None)
