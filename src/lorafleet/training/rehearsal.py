"""General rehearsal: the base model's own answers to everyday prompts, mixed into training.

An adapter trained on one task drifts from its base on everything else (the general probe,
`evaluation.probe`, measures how far). Rehearsal replays the base's behaviour itself: a
`continual.rehearsal_share` of every step's rows are the base's greedy answers to the prompts shipped in
`evaluation/rehearsal_prompts.json`, a list kept apart from the probe's prompts, so the probe still
measures drift on prompts the adapter never trained on. The prompts carry no system message (as the probe's
do not), so the rows keep the chat template's default one rather than the recipe's `data.system_prompt`.

The prompts are read and their answers generated and cached (once per base) by the probe's own functions
(`evaluation.probe`, prompt set `rehearsal`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lorafleet.data import DataConfig, TokenizedExample
from lorafleet.data.tokenize import tokenize_example

PROMPT_SET = "rehearsal"  # evaluation/rehearsal_prompts.json
MAX_NEW_TOKENS = 96  # longer than the probe's answers: they are trained on, so they should mostly end


def rehearsal_prompts() -> tuple[str, ...]:
    """The rehearsal prompts as shipped with the package."""
    from lorafleet.evaluation.probe import shipped_prompts

    return shipped_prompts(PROMPT_SET)


def rehearsal_rows(model: nn.Module, tokenizer: Any, data: DataConfig) -> list[TokenizedExample]:
    """The base's answers to the rehearsal prompts as training rows, tokenized with the recipe's `data:`
    settings. `model` is the bare base (no adapter attached yet)."""
    from lorafleet.evaluation.probe import base_answers, prompt_example

    prompts = rehearsal_prompts()
    answers = base_answers(model, tokenizer, prompts, max_new_tokens=MAX_NEW_TOKENS, prompt_set=PROMPT_SET)
    examples = [
        prompt_example(i, prompt, answer, prompt_set=PROMPT_SET)
        for i, (prompt, answer) in enumerate(zip(prompts, answers, strict=True))
    ]
    rows = [
        tokenize_example(e, tokenizer, max_length=data.max_length, train_on_inputs=data.train_on_inputs)
        for e in examples
    ]
    return [row for row in rows if row.label_tokens > 0]
