"""Evaluation: validation loss and perplexity, and task metrics scored on generated answers.

Generation is greedy, through the serving engine (`Engine.borrowing`: packed linears, continuous
batching, a shared system prompt prefilled once): prompts are rendered with the chat template (as in
training), and each answer stops at EOS, at `max_new_tokens`, or as soon as the metric could no longer
accept it. The same function scores a base model and the same base with an adapter, so a
before/after comparison uses one code path, and it is the path that serves.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from lorafleet.data import Example, TokenizedExample, batches, render_chat
from lorafleet.errors import LorafleetError
from lorafleet.training.loss import causal_lm_loss
from lorafleet.training.metrics import could_be_record, exact_match_scores, json_field_scores


@dataclass(frozen=True)
class EvalResult:
    """What one model scored: validation loss and perplexity, and the task metric when asked."""

    loss: float | None = None
    perplexity: float | None = None
    task: dict[str, Any] = field(default_factory=dict)
    samples: list[dict[str, str]] = field(default_factory=list)  # a few prompts, answers and references

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def validation_loss(
    model: nn.Module,
    examples: Sequence[TokenizedExample],
    *,
    batch_size: int,
    pad_token_id: int,
    max_length: int,
) -> tuple[float, float]:
    """Mean token cross-entropy over `examples` and its perplexity."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in batches(
        examples,
        batch_size=batch_size,
        pad_token_id=pad_token_id,
        max_length=max_length,
        packing=False,
        shuffle=False,
        seed=0,
        epoch=0,
    ):
        loss, tokens = causal_lm_loss(model, {key: value.to(device) for key, value in batch.items()})
        total, count = total + float(loss), count + tokens
    model.train(was_training)
    mean = total / max(count, 1)
    return mean, math.exp(min(mean, 50.0))


def generate_answers(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[Example],
    *,
    max_new_tokens: int,
    batch_size: int,
    metric: str = "none",
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Greedy answers to each example's prompt turns (in order), without special tokens.

    With a task metric, an answer stops as soon as the metric could no longer accept it (for
    `json_fields`: once it starts with anything but a JSON object), which scores the same. `batch_size`
    answers are generated at once; `on_batch` is called with how many finished after each decoding step.
    """
    from lorafleet.serving.engine import Engine
    from lorafleet.serving.generate import SamplingSettings
    from lorafleet.serving.requests import Request

    hopeless = (lambda text: not could_be_record(text)) if metric == "json_fields" else None
    greedy = SamplingSettings(max_tokens=max_new_tokens)
    prompts = [_prompt_ids(example, tokenizer) for example in examples]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths prefill together
    requests = [Request(prompt_ids=prompts[i], sampling=greedy, stop_when=hopeless) for i in order]
    with Engine.borrowing(model, tokenizer, max_batch=batch_size, queue_size=max(len(requests), 1)) as engine:
        handles = [engine.submit(request) for request in requests]
        _step_until_done(engine, handles, on_batch)
    answers = [""] * len(prompts)
    for row, handle in zip(order, handles, strict=True):
        completion = handle.result()
        if completion.finish_reason == "error":
            raise LorafleetError(f"generating the answer to row {row + 1} failed: {completion.error}")
        answers[row] = completion.text.strip()
    return answers


def _step_until_done(engine: Any, handles: Sequence[Any], on_batch: Callable[[int], None] | None) -> None:
    """Step `engine` until it is idle, telling `on_batch` how many answers finished at each step."""
    reported, busy = 0, True
    while busy:
        busy = engine.step()
        done = sum(handle.done for handle in handles)
        if on_batch is not None and done > reported:
            on_batch(done - reported)
        reported = done


def score_task(metric: str, answers: Sequence[str], examples: Sequence[Example]) -> dict[str, Any]:
    """The task metric of `answers` against the examples' reference answers."""
    references = [example.reference or "" for example in examples]
    if metric == "json_fields":
        return json_field_scores(answers, references).as_dict()
    if metric == "exact_match":
        return exact_match_scores(answers, references).as_dict()
    raise ValueError(f"unknown task metric {metric!r}")


def evaluate_task(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[Example],
    *,
    metric: str,
    max_new_tokens: int,
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> EvalResult:
    """Generate answers for `examples` and score them with `metric`."""
    answers = generate_answers(
        model,
        tokenizer,
        examples,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        metric=metric,
        on_batch=on_batch,
    )
    samples = [
        {
            "prompt": example.prompt_messages[-1].content,
            "answer": answer,
            "reference": example.reference or "",
        }
        for example, answer in list(zip(examples, answers, strict=True))[:3]
    ]
    return EvalResult(task=score_task(metric, answers, examples), samples=samples)


def evaluate_model(
    model: nn.Module,
    tokenizer: Any,
    *,
    validation: Sequence[TokenizedExample],
    examples: Sequence[Example],
    metric: str,
    max_length: int,
    max_new_tokens: int,
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> EvalResult:
    """Validation loss and perplexity over `validation` (if any) and `metric` over `examples` (if any)."""
    loss = perplexity = None
    if validation:
        loss, perplexity = validation_loss(
            model,
            validation,
            batch_size=batch_size,
            pad_token_id=tokenizer.pad_token_id,
            max_length=max_length,
        )
    if metric == "none" or not examples:
        return EvalResult(loss=loss, perplexity=perplexity)
    scored = evaluate_task(
        model,
        tokenizer,
        examples,
        metric=metric,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        on_batch=on_batch,
    )
    return EvalResult(loss=loss, perplexity=perplexity, task=scored.task, samples=scored.samples)


def headline(result: EvalResult) -> dict[str, float]:
    """The scalar results worth printing: loss, perplexity and the task metric's rates."""
    values = {"validation loss": result.loss, "perplexity": result.perplexity}
    values |= {k: v for k, v in result.task.items() if isinstance(v, float)}
    return {k: v for k, v in values.items() if v is not None}


def _prompt_ids(example: Example, tokenizer: Any) -> list[int]:
    """Token ids of what the model is given: the prompt turns as in training, with the answer header."""
    if example.text is not None:
        return list(tokenizer(example.text)["input_ids"])
    if getattr(tokenizer, "chat_template", None):
        text = render_chat(example.prompt_messages, tokenizer, generation=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer("\n\n".join(m.content for m in example.prompt_messages))["input_ids"])
