"""`tokenize_example`: one `Example` → token ids and labels, with the loss on assistant turns only.

Chat, prompt/completion and alpaca rows are rendered with the tokenizer's chat template. The template
text is cut into spans (prompt, assistant turn, prompt, ...) found by rendering prefixes of the
conversation: turn i (an assistant turn) spans

    [len(render(messages[:i], add_generation_prompt=True)),  len(render(messages[:i+1])))

with the trailing whitespace after the end-of-turn token left out (ChatML: `answer<|im_end|>` is
labelled, the `\\n` after it is not). Both renderings must be prefixes of the full rendering, or the
template is not prefix-stable and we fail instead of guessing. Each span is tokenized on its own and
the ids concatenated, so label boundaries are exact and the prompt is tokenized as it will be when
generating (the prompt alone, then the model's tokens).

Labels are -100 (no loss) on prompt tokens unless `train_on_inputs`; an assistant turn with OpenAI's
`"weight": 0` counts as prompt. Without a chat template, turns are concatenated (prompt messages joined
by a blank line, then the answer and EOS). Plain text rows are labelled everywhere and end with EOS.
Rows longer than `max_length` keep their first `max_length` tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorafleet.data.formats import Example, Message, read_examples
from lorafleet.errors import DataError

IGNORE_INDEX = -100  # label value that PyTorch's cross-entropy (and so HF's loss) skips


@dataclass(frozen=True)
class TokenizedExample:
    """Token ids of one row and its labels (-100 where no loss is taken)."""

    input_ids: list[int]
    labels: list[int]
    source: str
    truncated: bool  # the row was longer than max_length and lost its tail

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def label_tokens(self) -> int:
        """Tokens that carry loss (HF shifts labels by one, so the first token never does)."""
        return sum(1 for label in self.labels[1:] if label != IGNORE_INDEX)


def inspect_rows(path: Path, tokenizer: Any) -> tuple[str, int, int]:
    """(format, rows, tokens) of a training file; `DataError` naming `file:line` of the first bad row."""
    read = read_examples(path)
    tokens = sum(len(tokenize_example(e, tokenizer, max_length=1 << 30)) for e in read.examples)
    return read.format, len(read.examples), tokens


def tokenize_example(
    example: Example, tokenizer: Any, *, max_length: int, train_on_inputs: bool = False
) -> TokenizedExample:
    """Token ids and labels of `example`, cut to `max_length`; raise `DataError` naming the row's source."""
    (result,) = tokenize_examples(
        [example], tokenizer, max_length=max_length, train_on_inputs=train_on_inputs
    )
    if isinstance(result, DataError):
        raise result
    return result


def tokenize_examples(
    examples: Sequence[Example], tokenizer: Any, *, max_length: int, train_on_inputs: bool = False
) -> list[TokenizedExample | DataError]:
    """`tokenize_example` of every row, in order, with the row's `DataError` in place of a row that fails.

    All the rows' texts are encoded by one batch call of the tokenizer (the fast tokenizer encodes a
    batch on all cores, and per-call overhead was half of tokenizing: 6,000 calls for 2,000 tickets).
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        return [
            DataError(f"{e.source}: the tokenizer has no EOS token, so an answer cannot end")
            for e in examples
        ]
    planned: list[list[tuple[str | list[int], bool]] | DataError] = []
    for example in examples:
        try:
            planned.append(_spans(example, tokenizer, eos))
        except DataError as err:
            planned.append(err)
    texts = [
        part
        for plan in planned
        if not isinstance(plan, DataError)
        for part, _ in plan
        if isinstance(part, str)
    ]
    encoded = iter(_encode_batch(tokenizer, texts))
    results: list[TokenizedExample | DataError] = []
    for example, plan in zip(examples, planned, strict=True):
        if isinstance(plan, DataError):
            results.append(plan)
            continue
        spans = [(next(encoded) if isinstance(part, str) else part, answer) for part, answer in plan]
        results.append(_assemble(example, spans, eos, max_length=max_length, train_on_inputs=train_on_inputs))
    return results


def _spans(example: Example, tokenizer: Any, eos: int) -> list[tuple[str | list[int], bool]]:
    """The row as (text to encode, or ids; is the answer) spans, in order."""
    if example.text is not None:
        return [(_special_prefix(tokenizer), True), (example.text, True)]
    if getattr(tokenizer, "chat_template", None):
        return [(text, answer) for text, answer in _template_spans(example, tokenizer)]
    return [(ids, answer) for ids, answer in _plain_spans(example.messages, tokenizer, eos)]


def _assemble(
    example: Example, spans: list[tuple[list[int], bool]], eos: int, *, max_length: int, train_on_inputs: bool
) -> TokenizedExample:
    """Concatenate the encoded spans into ids and labels (-100 off the answers), cut to `max_length`."""
    input_ids: list[int] = []
    labels: list[int] = []
    for ids, answer in spans:
        input_ids += ids
        labels += ids if answer or train_on_inputs else [IGNORE_INDEX] * len(ids)
    if example.text is not None and input_ids[-1:] != [eos]:  # plain text ends with EOS, labelled
        input_ids, labels = [*input_ids, eos], [*labels, eos]
    truncated = len(input_ids) > max_length
    return TokenizedExample(input_ids[:max_length], labels[:max_length], example.source, truncated)


def render_chat(messages: tuple[Message, ...] | list[Message], tokenizer: Any, *, generation: bool) -> str:
    """`messages` rendered as text by the tokenizer's chat template (with the assistant header if asked)."""
    return str(
        tokenizer.apply_chat_template(
            [m.as_dict() for m in messages], tokenize=False, add_generation_prompt=generation
        )
    )


def _template_spans(example: Example, tokenizer: Any) -> list[tuple[str, bool]]:
    """The rendered conversation cut into (text, is a trained assistant turn) spans, in order."""
    messages = example.messages
    try:
        full = render_chat(messages, tokenizer, generation=False)
        spans: list[tuple[str, bool]] = []
        cursor = 0
        for i, message in enumerate(messages):
            if message.role != "assistant":
                continue
            before = render_chat(messages[:i], tokenizer, generation=True)
            last = i == len(messages) - 1  # then `through` is `full` (most rows: one answer at the end)
            through = full if last else render_chat(messages[: i + 1], tokenizer, generation=False)
            if not (full.startswith(before) and full.startswith(through) and cursor <= len(before)):
                raise DataError(
                    f"{example.source}: the chat template is not prefix-stable (rendering the first {i} "
                    "messages is not a prefix of rendering them all), so assistant turns cannot be located; "
                    "use a template that renders earlier turns the same way, or train_on_inputs"
                )
            start = len(before)
            end = start + len(full[start : len(through)].rstrip())
            spans += [(full[cursor:start], False), (full[start:end], message.trained)]
            cursor = max(end, start)
    except DataError:
        raise
    except Exception as err:  # jinja2 errors, and templates that raise on purpose (roles must alternate)
        reason = " ".join(str(err).split())[:300] or type(err).__name__
        raise DataError(f"{example.source}: the chat template failed on this row: {reason}") from None
    spans.append((full[cursor:], False))
    return [(text, answer) for text, answer in spans if text]


def _plain_spans(messages: tuple[Message, ...], tokenizer: Any, eos: int) -> list[tuple[list[int], bool]]:
    """Without a chat template: prompt turns joined by a blank line, each answer followed by EOS (an
    untrained answer is labelled like the prompt)."""
    spans: list[tuple[list[int], bool]] = [(_special_prefix(tokenizer), False)]
    prompt: list[str] = []
    for message in messages:
        if message.role != "assistant":
            prompt.append(message.content)
            continue
        if prompt:
            spans.append((_encode(tokenizer, "\n\n".join(prompt)), False))
            prompt = []
        spans.append(([*_encode(tokenizer, message.content), eos], message.trained))
    return [(ids, answer) for ids, answer in spans if ids]


def _encode_batch(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """`_encode` of each text, in one call of the tokenizer."""
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _encode(tokenizer: Any, text: str) -> list[int]:
    """Ids of `text` alone: special tokens written in it (`<|im_start|>`) are kept, none are added."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _special_prefix(tokenizer: Any) -> list[int]:
    """The special ids the tokenizer puts before a text by itself (BOS for Llama-style tokenizers)."""
    bare = _encode(tokenizer, "a")
    full = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start]
    return []
