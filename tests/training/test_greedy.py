"""Evaluation's greedy decoder gives `generate`'s tokens, with shared prefixes and rows leaving early."""

from __future__ import annotations

import pytest
import torch

from lorafleet.models import tiny_model
from lorafleet.training.greedy import greedy_decode
from lorafleet.training.metrics import could_be_record

TEXTS = [
    "shared system prompt: hello there friend",
    "shared system prompt: hi",
    "shared system prompt: a much longer prompt than the others here",
    "something else entirely",
]


def reference(model: torch.nn.Module, tokenizer: object, prompt: list[int], max_new_tokens: int) -> list[int]:
    output = model.generate(  # type: ignore[operator]
        torch.tensor([prompt]),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,  # type: ignore[attr-defined]
        eos_token_id=tokenizer.eos_token_id,  # type: ignore[attr-defined]
    )[0, len(prompt) :].tolist()
    eos = tokenizer.eos_token_id  # type: ignore[attr-defined]
    return output[: output.index(eos)] if eos in output else output


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("texts", [TEXTS[:3], TEXTS], ids=["shared-prefix", "no-shared-prefix"])
def test_same_tokens_as_generate_alone(arch: str, texts: list[str]) -> None:
    model, tokenizer = tiny_model(arch, seed=3)
    model.eval()
    prompts = [list(tokenizer(text)["input_ids"]) for text in texts]

    ours = greedy_decode(model, tokenizer, prompts, max_new_tokens=12, batch_size=3)

    assert ours == [reference(model, tokenizer, prompt, 12) for prompt in prompts]


def test_hopeless_rows_leave_early_and_others_are_unchanged() -> None:
    model, tokenizer = tiny_model("llama", seed=3)
    model.eval()
    prompts = [list(tokenizer(text)["input_ids"]) for text in TEXTS[:3]]
    full = greedy_decode(model, tokenizer, prompts, max_new_tokens=10, batch_size=3)
    first = tokenizer.decode(full[0][:1])

    cut = greedy_decode(
        model, tokenizer, prompts, max_new_tokens=10, batch_size=3, hopeless=lambda text: text == first
    )

    assert cut[0] == full[0][:1]
    assert cut[1:] == [f if tokenizer.decode(f[:1]) != first else f[:1] for f in full[1:]]


@pytest.mark.parametrize(
    ("text", "possible"),
    [
        ("", True),
        ("  {", True),
        ('{"a": 1}', True),
        ("`", True),
        ("```js", True),
        ("```json\n{", True),
        ("Here is", False),
        ("JSON:", False),
        ("1", False),
    ],
)
def test_could_be_record(text: str, possible: bool) -> None:
    assert could_be_record(text) is possible
