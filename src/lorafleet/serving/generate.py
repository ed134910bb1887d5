"""Streaming text generation for one prompt on one model (base, base + adapter, or merged).

The chat template is applied when the tokenizer has one (instruct models), so a plain question is
answered as the model was trained to answer it. Greedy when temperature is 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from threading import Thread
from typing import Annotated

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TextIteratorStreamer

MIN_REPETITION_PENALTY = 0.01  # lower, and dividing a logit by the penalty can overflow float32
MAX_TOP_K = 2**31 - 1  # any k at least the vocabulary's size keeps every token


class SamplingSettings(BaseModel):
    """How to pick each next token. Every number is finite and bounded (the API's ranges lie within these)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    max_tokens: int = Field(128, ge=1, le=32768, description="Most tokens to generate.")
    temperature: float = Field(0.0, ge=0.0, le=10.0, description="0 = greedy; higher = more random.")
    top_p: float = Field(
        1.0, gt=0.0, le=1.0, description="Sample only from the smallest set of tokens of this mass."
    )
    top_k: int = Field(
        0, ge=0, le=MAX_TOP_K, description="Sample only from the k likeliest tokens (0 = no limit)."
    )
    seed: int | None = Field(
        None, ge=-(2**63), lt=2**64, description="Seed for sampling, for reproducible samples (64 bits)."
    )
    chat: bool = Field(True, description="Apply the tokenizer's chat template when it has one.")
    stop: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=list,
        max_length=16,
        description="Strings that end the completion when generated (not included in the text).",
    )
    repetition_penalty: float = Field(
        1.0,
        ge=MIN_REPETITION_PENALTY,
        le=10.0,
        description="Divide positive logits (multiply negative ones) of tokens seen before by this; 1 = off, "
        f"below 1 favours repeats (down to {MIN_REPETITION_PENALTY}).",
    )
    ignore_eos: bool = Field(
        False, description="Never stop at the end-of-sequence token: always generate max_tokens (benchmarks)."
    )


def stream_generate(
    model: PreTrainedModel | torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    settings: SamplingSettings | None = None,
) -> Iterator[str]:
    """Yield the completion of `prompt` piece by piece as it is generated."""
    settings = settings or SamplingSettings()
    inputs = encode_prompt(tokenizer, prompt, chat=settings.chat)
    device = next(model.parameters()).device
    inputs = {key: value.to(device) for key, value in inputs.items()}
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    sampling = settings.temperature > 0
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    kwargs = dict(
        **inputs,
        max_new_tokens=settings.max_tokens,
        do_sample=sampling,
        streamer=streamer,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if settings.repetition_penalty != 1.0:
        kwargs.update(repetition_penalty=settings.repetition_penalty)
    if settings.stop:
        kwargs.update(stop_strings=list(settings.stop), tokenizer=tokenizer)
    if settings.ignore_eos:
        kwargs.update(min_new_tokens=settings.max_tokens)
    if sampling:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k or None)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with torch.inference_mode():
                model.generate(**kwargs)  # type: ignore[operator]
        except BaseException as err:  # re-raised in the caller's thread below
            errors.append(err)
            streamer.end()

    worker = Thread(target=run, daemon=True)
    worker.start()
    yield from _until_stop(streamer, settings.stop) if settings.stop else streamer
    worker.join()
    if errors:
        raise errors[0]


def _until_stop(pieces: Iterator[str], stop: list[str]) -> Iterator[str]:
    """`pieces` up to (not including) the first stop string; what could still begin one is held back."""
    hold = max(len(s) for s in stop) - 1
    text, sent = "", 0
    for piece in pieces:
        text += piece
        hits = [i for i in (text.find(s, max(0, sent - hold)) for s in stop) if i >= 0]
        end = min(hits) if hits else max(sent, len(text) - hold)
        if end > sent:
            yield text[sent:end]
            sent = end
        if hits:
            for _ in pieces:  # generation stops at the string by itself; let it finish
                pass
            return
    if len(text) > sent:
        yield text[sent:]


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase, prompt: str, *, chat: bool = True
) -> dict[str, torch.Tensor]:
    """Token ids and attention mask for `prompt`, rendered as a user turn when `chat` and a template exist."""
    if chat and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}]
        encoded = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
    else:
        encoded = tokenizer(prompt, return_tensors="pt")
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}  # type: ignore[index,call-overload,dict-item]
