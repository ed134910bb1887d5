"""General rehearsal: the base model's own answers to everyday prompts, mixed into training.

An adapter trained on one task drifts from its base on everything else (the general probe,
`evaluation.probe`, measures how far). Rehearsal replays the base's behaviour itself: a
`continual.rehearsal_share` of every step's rows are the base's greedy answers to the prompts shipped in
`evaluation/rehearsal_prompts.json`, a list kept apart from the probe's prompts, so the probe still
measures drift on prompts the adapter never trained on. The prompts carry no system message (as the probe's
do not), so the rows keep the chat template's default one rather than the recipe's `data.system_prompt`.

The answers are generated once per base and cached beside the probe's (`probe_cache_file(..., "rehearsal")`).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from torch import nn

from lorafleet.data import DataConfig, Example, Message, TokenizedExample
from lorafleet.data.tokenize import tokenize_example

PROMPTS_FILE = Path(__file__).parents[1] / "evaluation" / "rehearsal_prompts.json"
MAX_NEW_TOKENS = 96  # longer than the probe's answers: they are trained on, so they should mostly end


@cache
def rehearsal_prompts() -> tuple[str, ...]:
    """The rehearsal prompts as shipped with the package."""
    return tuple(json.loads(PROMPTS_FILE.read_text())["prompts"])


def rehearsal_rows(model: nn.Module, tokenizer: Any, data: DataConfig) -> list[TokenizedExample]:
    """The base's answers to the rehearsal prompts as training rows, tokenized with the recipe's `data:`
    settings. `model` is the bare base (no adapter attached yet)."""
    from lorafleet.evaluation.probe import base_answers

    prompts = rehearsal_prompts()
    answers = base_answers(model, tokenizer, prompts, max_new_tokens=MAX_NEW_TOKENS, prompt_set="rehearsal")
    rows = []
    for index, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        example = Example(
            source=f"{PROMPTS_FILE.name}:prompt {index + 1}",
            messages=(Message("user", prompt), Message("assistant", answer)),
        )
        rows.append(
            tokenize_example(
                example, tokenizer, max_length=data.max_length, train_on_inputs=data.train_on_inputs
            )
        )
    return [row for row in rows if row.label_tokens > 0]
