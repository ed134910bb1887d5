"""OpenAI's request and response shapes for /v1/completions and /v1/chat/completions.

Fields map one to one onto `SamplingSettings` (max_tokens, temperature, top_p, stop, seed); `top_k`,
`repetition_penalty` and `ignore_eos` are accepted as extensions under vLLM's names. Defaults are
OpenAI's: temperature 1, top_p 1, max_tokens 16 for completions and up to the model's context for chat.
Unknown OpenAI fields are ignored; known ones we cannot honour (n > 1, several prompts, logprobs, echo,
presence/frequency penalties, tools, JSON response formats) are refused naming the field.

Every sampling field is checked here, in OpenAI's documented ranges, so a bad value is a 400 naming it
(never a failed batch): temperature 0..2, top_p (0, 1], presence/frequency penalty −2..2 (only 0 is
served), max_tokens ≥ 1, n = 1, a 64-bit seed, at most 16 stop strings; the extensions top_k ≥ 0 and
repetition_penalty 0.01..10. Numbers must be finite: the JSON parser takes NaN and Infinity, these
fields do not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer

from lorafleet.errors import validated

if TYPE_CHECKING:  # torch comes with it; imported where used, so importing the API stays light
    from lorafleet.serving.generate import SamplingSettings

MAX_TOKENS = 32768  # SamplingSettings.max_tokens's upper bound: "up to the model's context"
MAX_STOP = 16  # SamplingSettings.stop's bound
MIN_REPETITION_PENALTY = 0.01  # SamplingSettings.repetition_penalty's bounds (lower, logits can overflow)
MAX_REPETITION_PENALTY = 10.0
MAX_TOP_K = 2**31 - 1  # SamplingSettings.top_k's bound


# --- requests ------------------------------------------------------------------------------------------


class StreamOptions(BaseModel):
    """Options of a streamed response."""

    model_config = ConfigDict(extra="ignore")

    include_usage: bool = Field(False, description="Send a last chunk with the token usage (no choices).")


class _SamplingFields(BaseModel):
    """The fields both endpoints share: which model, how to sample, whether to stream."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: str = Field(
        min_length=1,
        max_length=256,
        description="The base model's name, or an adapter (name, version or alias) of the caller's tenant.",
    )
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS, description="Most tokens to generate.")
    temperature: float | None = Field(
        None, ge=0.0, le=2.0, description="0 = greedy; higher = more random (default 1)."
    )
    top_p: float | None = Field(
        None, gt=0.0, le=1.0, description="Sample from the smallest set of tokens of this mass (default 1)."
    )
    stop: str | list[str] | None = Field(
        None, description=f"Up to {MAX_STOP} strings that end the completion (not included in the text)."
    )
    seed: int | None = Field(None, ge=-(2**63), lt=2**64, description="Seed for reproducible sampling.")
    n: int | None = Field(None, description="Choices to generate; only 1 is supported.")
    stream: bool | None = Field(False, description="Send the text as server-sent events as it is generated.")
    stream_options: StreamOptions | None = Field(None, description="Options of a streamed response.")
    user: str | None = Field(
        None,
        description="The end user's id: canaries and A/B experiments assign each user to one version, "
        "sticky (without it, the API key is the user).",
    )
    presence_penalty: float | None = Field(
        None, ge=-2.0, le=2.0, description="Not supported unless 0; see repetition_penalty."
    )
    frequency_penalty: float | None = Field(
        None, ge=-2.0, le=2.0, description="Not supported unless 0; see repetition_penalty."
    )
    top_k: int | None = Field(
        None, ge=0, le=MAX_TOP_K, description="Extension: sample from the k likeliest tokens (0 = all)."
    )
    repetition_penalty: float | None = Field(
        None,
        ge=MIN_REPETITION_PENALTY,
        le=MAX_REPETITION_PENALTY,
        description="Extension: > 1 makes tokens seen before less likely, < 1 more (1 = off).",
    )
    ignore_eos: bool | None = Field(None, description="Extension: always generate max_tokens (benchmarks).")

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, stop: str | list[str] | None) -> str | list[str] | None:
        strings = [stop] if isinstance(stop, str) else stop or []
        if len(strings) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings (got {len(strings)})")
        if any(not 1 <= len(s) <= 256 for s in strings):
            raise ValueError("each stop string must have 1 to 256 characters")
        return stop

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int | None) -> int | None:
        if n not in (None, 1):
            raise ValueError(f"only n=1 is supported (got {n}); send n requests instead")
        return n

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_openai_penalties(cls, penalty: float | None) -> float | None:
        if penalty:
            raise ValueError("is not supported; use repetition_penalty (> 1 discourages repeats)")
        return penalty

    def sampling(self, *, max_tokens: int, chat: bool) -> SamplingSettings:
        """These fields as the engine's `SamplingSettings`, generating at most `max_tokens`."""
        from lorafleet.serving.generate import SamplingSettings

        values: dict[str, Any] = {
            "max_tokens": max_tokens,
            "temperature": 1.0 if self.temperature is None else self.temperature,
            "top_p": 1.0 if self.top_p is None else self.top_p,
            "top_k": self.top_k or 0,
            "seed": self.seed,
            "chat": chat,
            "stop": [self.stop] if isinstance(self.stop, str) else list(self.stop or []),
            "repetition_penalty": self.repetition_penalty or 1.0,
            "ignore_eos": bool(self.ignore_eos),
        }
        return validated(SamplingSettings, "", **values)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(_SamplingFields):
    """POST /v1/completions: continue a prompt (sent as is, no chat template)."""

    prompt: str | list[str] = Field(description="The prompt: a string, or a list holding one string.")
    max_tokens: int | None = Field(16, ge=1, le=MAX_TOKENS, description="Most tokens to generate.")
    echo: bool | None = Field(None, description="Not supported.")
    logprobs: int | None = Field(None, description="Not supported.")
    best_of: int | None = Field(None, description="Only 1 is supported.")
    suffix: str | None = Field(None, description="Not supported.")

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: str | list[str]) -> str | list[str]:
        if isinstance(prompt, list) and len(prompt) != 1:
            raise ValueError(f"give one prompt per request (got a list of {len(prompt)})")
        return prompt

    @field_validator("echo", "logprobs", "suffix")
    @classmethod
    def _unsupported(cls, value: object) -> object:
        if value:
            raise ValueError("is not supported by this server")
        return value

    @field_validator("best_of")
    @classmethod
    def _best_of_one(cls, best_of: int | None) -> int | None:
        if best_of not in (None, 1):
            raise ValueError(f"only best_of=1 is supported (got {best_of})")
        return best_of

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class TextPart(BaseModel):
    """One part of a message's content; only text parts are served."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["text"] = Field(description="Only text content is supported.")
    text: str = Field(description="The text.")


class ChatMessageIn(BaseModel):
    """One message of a chat: who says it and what."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"] = Field(
        description="Who speaks; developer is sent as system."
    )
    content: str | list[TextPart] = Field(description="The text, or a list of text parts.")
    name: str | None = Field(None, description="The speaker's name (accepted, not used).")

    def as_template_message(self) -> dict[str, str]:
        """The message as the chat template takes it: {role, content} strings."""
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatCompletionRequest(_SamplingFields):
    """POST /v1/chat/completions: the assistant's next message, rendered by the model's chat template."""

    messages: list[ChatMessageIn] = Field(min_length=1, description="The conversation so far.")
    max_completion_tokens: int | None = Field(
        None, ge=1, le=MAX_TOKENS, description="Most tokens to generate (wins over max_tokens)."
    )
    logprobs: bool | None = Field(None, description="Not supported.")
    tools: list[Any] | None = Field(None, description="Not supported.")
    response_format: dict[str, Any] | None = Field(None, description="Only {'type': 'text'} is supported.")

    @field_validator("logprobs", "tools")
    @classmethod
    def _unsupported(cls, value: object) -> object:
        if value:
            raise ValueError("is not supported by this server")
        return value

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, fmt: dict[str, Any] | None) -> dict[str, Any] | None:
        if fmt is not None and fmt.get("type", "text") != "text":
            raise ValueError(f"only type 'text' is supported (got {fmt.get('type')!r})")
        return fmt


# --- responses -----------------------------------------------------------------------------------------

FinishReason = Literal["stop", "length"]


class Usage(BaseModel):
    """Tokens read and written for one request."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(BaseModel):
    text: str
    index: int = 0
    logprobs: None = None
    finish_reason: FinishReason | None = None


class TextCompletion(BaseModel):
    """A completion, or (streamed, without usage) one chunk of it."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str = Field(
        description="The adapter version that served the request (`support@3`), or the base model's name."
    )
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    logprobs: None = None
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    """The assistant's message."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str = Field(
        description="The adapter version that served the request (`support@3`), or the base model's name."
    )
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    """What a chunk adds to the message; fields not sent are left out."""

    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer
    def _set_fields_only(self) -> dict[str, str]:
        return {
            key: value for key, value in (("role", self.role), ("content", self.content)) if value is not None
        }


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    logprobs: None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed chat completion."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str = Field(
        description="The adapter version that served the request (`support@3`), or the base model's name."
    )
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
