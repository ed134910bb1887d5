"""Held-out suites: score one adapter version on the suites its ancestors registered.

A suite is a file of held-out rows (any format `read_examples` reads) and the metric it is scored by:

    json_fields   answers generated greedily, compared field by field with the reference JSON records;
                  score = per-field accuracy
    exact_match   answers generated greedily, compared whole with the reference answers;
                  score = the share of rows answered exactly
    perplexity    no generation: the mean cross-entropy L of the reference answers given their prompts
                  (loss on answer tokens only, chat-templated as in training); score = 1 / exp(L)

Every score is in [0, 1] and higher is better, so a forgetting matrix can be read one way for all
metrics. Generation and loss go through `training.evaluate`, the same code that scores a run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from lorafleet.data import Example, read_examples, tokenize_example, with_system_prompt
from lorafleet.errors import ConfigError, DataError, LorafleetError
from lorafleet.evaluation.forgetting import SUITE_METRICS
from lorafleet.training.evaluate import evaluate_task, validation_loss
from lorafleet.training.metrics import parse_record

_SCORE_OF = {"json_fields": "field_accuracy", "exact_match": "exact_match"}  # the detail that is the score


class SuiteScoringError(LorafleetError):
    """A suite could not be scored for another reason than its data (the model failed); names the suite."""


@dataclass(frozen=True)
class Suite:
    """One held-out suite to score: its id, the adapter that registered it, its metric and its rows."""

    id: str
    adapter: str
    metric: str
    path: Path


def check_metric(metric: str, *, where: str = "metric") -> str:
    """`metric` if it is a suite metric, else `ConfigError` naming it and the ones there are."""
    if metric not in SUITE_METRICS:
        choices = ", ".join(SUITE_METRICS)
        raise ConfigError(f"{where}: unknown suite metric {metric!r}; choose one of {choices}")
    return metric


def read_suite(path: str | Path, metric: str, *, system_prompt: str | None, max_rows: int) -> list[Example]:
    """The suite's rows that can be scored by `metric` (those with a reference answer), checked.

    A bad row raises `DataError` naming `file:line`; so does a json_fields reference that is not a JSON
    object, and a file without a single row to score.
    """
    check_metric(metric)
    read = read_examples(path, max_rows=max_rows)
    examples = [with_system_prompt(example, system_prompt) for example in read.examples]
    scored = [example for example in examples if example.reference is not None]
    if not scored:
        raise DataError(f"{path}: no row ends with an answer to score (text rows cannot be scored)")
    if metric == "json_fields":
        for example in scored:
            if parse_record(example.reference or "") is None:
                raise DataError(f"{example.source}: the reference answer is not a JSON object (json_fields)")
    return scored


def score_suite(
    model: nn.Module,
    tokenizer: Any,
    path: str | Path,
    metric: str,
    *,
    system_prompt: str | None = None,
    max_new_tokens: int = 128,
    batch_size: int = 32,
    max_rows: int = 200,
    max_length: int = 1024,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """`{"score": float, "details": {...}}` of `model` on the suite at `path` (see the module docstring).

    `details` is the metric's full record: rows, valid_json, field_accuracy, exact_match, per_field for
    json_fields; rows, exact_match for exact_match; rows, loss, perplexity for perplexity. `on_batch` is
    called with the number of rows after each generated batch (a progress bar, a cancel check).
    """
    examples = read_suite(path, metric, system_prompt=system_prompt, max_rows=max_rows)
    if metric == "perplexity":
        loss, perplexity = answer_loss(
            model, tokenizer, examples, batch_size=batch_size, max_length=max_length
        )
        details = {"rows": len(examples), "loss": loss, "perplexity": perplexity}
        return {"score": 1.0 / perplexity, "details": details}
    result = evaluate_task(
        model,
        tokenizer,
        examples,
        metric=metric,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        on_batch=on_batch,
    )
    return {"score": float(result.task[_SCORE_OF[metric]]), "details": result.task}


def score_suites(
    model: nn.Module,
    tokenizer: Any,
    suites: Sequence[Suite],
    *,
    system_prompt: str | None = None,
    max_new_tokens: int = 128,
    batch_size: int = 32,
    max_rows: int = 200,
    max_length: int = 1024,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Each suite's `{"adapter", "metric", "score", "details"}`, keyed by suite id (the versions' contract).

    A suite whose file, rows or metric is bad raises the same `ConfigError` type, its message prefixed
    with the suite's id and adapter; any other failure becomes a `SuiteScoringError` naming them too.
    """
    scores: dict[str, dict[str, Any]] = {}
    for suite in suites:
        try:
            scored = score_suite(
                model,
                tokenizer,
                suite.path,
                suite.metric,
                system_prompt=system_prompt,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                max_rows=max_rows,
                max_length=max_length,
                on_batch=on_batch,
            )
        except ConfigError as err:
            raise type(err)(f"suite {suite.id} (adapter {suite.adapter}): {err}", field=err.field) from err
        except Exception as err:
            raise SuiteScoringError(
                f"suite {suite.id} (adapter {suite.adapter}): scoring failed: {type(err).__name__}: {err}"
            ) from err
        scores[suite.id] = {"adapter": suite.adapter, "metric": suite.metric, **scored}
    return scores


def answer_loss(
    model: nn.Module, tokenizer: Any, examples: Sequence[Example], *, batch_size: int, max_length: int
) -> tuple[float, float]:
    """Mean cross-entropy of the answers given their prompts (tokenized as in training), and perplexity."""
    tokenized = [tokenize_example(example, tokenizer, max_length=max_length) for example in examples]
    return validation_loss(
        model, tokenized, batch_size=batch_size, pad_token_id=tokenizer.pad_token_id, max_length=max_length
    )
