"""Label masking is exact: prompt tokens are -100; assistant turns and their end-of-turn token count."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorafleet.data import IGNORE_INDEX, Example, Message, read_examples, tokenize_example
from lorafleet.data.tokenize import tokenize_examples
from lorafleet.errors import DataError
from lorafleet.models import tiny_tokenizer

CHAT = Example(
    "rows.jsonl:1",
    messages=(
        Message("system", "Be brief."),
        Message("user", "What is 2+2?"),
        Message("assistant", "4"),
        Message("user", "And 3+3?"),
        Message("assistant", "It is 6."),
    ),
)


def labelled_runs(input_ids: list[int], labels: list[int]) -> list[list[int]]:
    """Maximal runs of consecutive labelled positions, as token ids."""
    runs: list[list[int]] = []
    previous = False
    for token, label in zip(input_ids, labels, strict=True):
        labelled = label != IGNORE_INDEX
        if labelled:
            assert label == token  # labels are the ids themselves, not shifted
            if not previous:
                runs.append([])
            runs[-1].append(token)
        previous = labelled
    return runs


def test_chat_labels_exactly_the_assistant_turns() -> None:
    tokenizer = tiny_tokenizer()
    example = tokenize_example(CHAT, tokenizer, max_length=512)
    full = str(tokenizer.apply_chat_template([m.as_dict() for m in CHAT.messages], tokenize=False))
    assert tokenizer.decode(example.input_ids) == full
    runs = labelled_runs(example.input_ids, example.labels)
    assert [tokenizer.decode(run) for run in runs] == ["4<|im_end|>", "It is 6.<|im_end|>"]
    # Every other token is a prompt token: what remains once the answers are cut out is the prompt text.
    prompt = [t for t, label in zip(example.input_ids, example.labels, strict=True) if label == IGNORE_INDEX]
    assert tokenizer.decode(prompt) == full.replace("4<|im_end|>", "").replace("It is 6.<|im_end|>", "")
    assert example.label_tokens == len("4") + 1 + len("It is 6.") + 1
    assert not example.truncated and example.source == "rows.jsonl:1"


@pytest.mark.parametrize("template", [True, False])
def test_a_weight_0_assistant_turn_is_not_trained_on(tmp_path: Path, template: bool) -> None:
    # OpenAI's chat rows: "weight": 0 marks an assistant turn as context, 1 (or none) as one to learn.
    path = tmp_path / "weights.jsonl"
    messages = [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "5", "weight": 0},
        {"role": "user", "content": "Wrong. 3+3?"},
        {"role": "assistant", "content": "6", "weight": 1},
        {"role": "user", "content": "4+4?"},
        {"role": "assistant", "content": "8"},
    ]
    path.write_text(json.dumps({"messages": messages}) + "\n")
    tokenizer = tiny_tokenizer()
    if not template:
        tokenizer.chat_template = None
    example = tokenize_example(read_examples(path).examples[0], tokenizer, max_length=512)
    answers = [tokenizer.decode(run) for run in labelled_runs(example.input_ids, example.labels)]
    end = "<|im_end|>" if template else tokenizer.eos_token
    assert answers == [f"6{end}", f"8{end}"]  # the "5" turn is all -100


def test_prompt_completion_prompt_is_masked() -> None:
    tokenizer = tiny_tokenizer()
    row = Example("r:1", messages=(Message("user", "2+2="), Message("assistant", "4")))
    example = tokenize_example(row, tokenizer, max_length=512)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "2+2="}], tokenize=False, add_generation_prompt=True
    )
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer("4<|im_end|>", add_special_tokens=False)["input_ids"]
    n = len(prompt_ids)
    assert example.input_ids[:n] == prompt_ids
    assert example.labels[:n] == [IGNORE_INDEX] * n
    assert example.labels[n : n + len(answer_ids)] == answer_ids
    assert example.labels[n + len(answer_ids) :] == [IGNORE_INDEX]  # the "\n" after <|im_end|>


def test_train_on_inputs_labels_everything() -> None:
    example = tokenize_example(CHAT, tiny_tokenizer(), max_length=512, train_on_inputs=True)
    assert example.labels == example.input_ids


def test_text_rows_are_labelled_and_end_with_eos() -> None:
    tokenizer = tiny_tokenizer()
    example = tokenize_example(Example("t:1", text="hello"), tokenizer, max_length=512)
    assert example.input_ids == [
        *tokenizer("hello", add_special_tokens=False)["input_ids"],
        tokenizer.eos_token_id,
    ]
    assert example.labels == example.input_ids


def test_without_chat_template_prompt_then_completion_then_eos() -> None:
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = None
    row = Example("r:1", messages=(Message("system", "S"), Message("user", "Q: "), Message("assistant", "A")))
    example = tokenize_example(row, tokenizer, max_length=512)
    assert tokenizer.decode(example.input_ids) == "S\n\nQ: A<|im_end|>"
    assert [tokenizer.decode(run) for run in labelled_runs(example.input_ids, example.labels)] == [
        "A<|im_end|>"
    ]


def test_truncation_keeps_the_first_tokens() -> None:
    tokenizer = tiny_tokenizer()
    long_row = Example("t:1", text="x" * 50)
    example = tokenize_example(long_row, tokenizer, max_length=16)
    assert example.truncated and len(example.input_ids) == len(example.labels) == 16
    assert example.input_ids == tokenize_example(long_row, tokenizer, max_length=512).input_ids[:16]
    # A prompt longer than max_length leaves no labelled token (prepare_data drops such rows).
    row = Example("r:1", messages=(Message("user", "y" * 40), Message("assistant", "ok")))
    assert tokenize_example(row, tokenizer, max_length=16).label_tokens == 0


def test_template_that_is_not_prefix_stable_fails_clearly() -> None:
    tokenizer = tiny_tokenizer()
    # Renders only the last two messages: earlier turns vanish once a later one is added.
    tokenizer.chat_template = (
        "{% for m in messages[-2:] %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(DataError, match=r"rows.jsonl:1: the chat template is not prefix-stable"):
        tokenize_example(CHAT, tokenizer, max_length=512)


def test_template_errors_name_the_row() -> None:
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(DataError, match=r"rows.jsonl:1: the chat template failed on this row: .*alternate"):
        tokenize_example(CHAT, tokenizer, max_length=512)


def test_a_batch_equals_its_rows_one_by_one_and_keeps_a_bad_rows_error_in_place() -> None:
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['content'] == 'BAD' %}{{ raise_exception('no BAD here') }}{% endif %}"
        "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    bad = Example("rows.jsonl:3", messages=(Message("user", "BAD"), Message("assistant", "x")))
    rows = [CHAT, Example("rows.jsonl:2", text="plain text"), bad, Example("rows.jsonl:4", text="")]

    batch = tokenize_examples(rows, tokenizer, max_length=64)

    assert batch[:2] + batch[3:] == [
        tokenize_example(row, tokenizer, max_length=64) for row in rows if row is not bad
    ]
    assert isinstance(batch[2], DataError)
    assert str(batch[2]).startswith("rows.jsonl:3: the chat template failed on this row: no BAD here")
