"""Evaluation generates through the serving engine (`Engine.borrowing`): the engine's greedy tokens are
`generate(do_sample=False)`'s, for a base and a PEFT adapter (merged or not), with and without a shared
prefix; answers that can no longer score stop early; the borrowed model comes back unchanged."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from lorafleet.adapters import LoraSettings, attach, merge
from lorafleet.data import Example, Message, render_chat
from lorafleet.models import tiny_model
from lorafleet.models.tiny import Arch
from lorafleet.serving import packed
from lorafleet.serving.engine import Engine
from lorafleet.serving.generate import SamplingSettings
from lorafleet.serving.requests import Request
from lorafleet.training.evaluate import generate_answers

SHARED = "shared system prompt: answer every question in one short line please. "
TEXTS = [
    SHARED + "hello there friend",
    SHARED + "hi",
    SHARED + "a much longer prompt than the others",
    "else",
]


def reference(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, prompt: list[int], new: int
) -> list[int]:
    """transformers' greedy tokens after `prompt`, up to and including EOS."""
    with torch.no_grad():
        output = model.generate(  # type: ignore[operator]
            torch.tensor([prompt]),
            attention_mask=torch.ones((1, len(prompt)), dtype=torch.long),
            max_new_tokens=new,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )[0, len(prompt) :].tolist()
    eos = tokenizer.eos_token_id
    return output[: output.index(eos) + 1] if eos in output else output


def with_adapter(arch: Arch, adapter: str) -> tuple[torch.nn.Module, PreTrainedTokenizerFast]:
    """A tiny `arch` model: the base, or with a random LoRA adapter (PEFT), merged or not."""
    model, tokenizer = tiny_model(arch, seed=3)
    if adapter == "none":
        return model, tokenizer
    torch.manual_seed(1)
    settings = LoraSettings(r=8, alpha=16, target_modules=["q_proj", "v_proj", "o_proj"], init="random")
    peft = attach(model, settings)
    if adapter == "merged":
        merge(peft)
    return peft.eval(), tokenizer


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("adapter", ["none", "lora", "merged"])
@pytest.mark.parametrize("texts", [TEXTS[:3], TEXTS], ids=["shared-prefix", "no-shared-prefix"])
@pytest.mark.parametrize("packing", [False, True], ids=["plain", "packed"])
def test_engine_greedy_tokens_equal_generate(
    arch: Arch, adapter: str, texts: list[str], packing: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if packing:  # the tiny model's linears are all below the threshold: pack them all
        monkeypatch.setattr(packed, "MIN_WEIGHTS", 0)
    model, tokenizer = with_adapter(arch, adapter)
    prompts = [list(tokenizer(text)["input_ids"]) for text in texts]
    greedy = SamplingSettings(max_tokens=12)
    expected = [reference(model, tokenizer, prompt, 12) for prompt in prompts]

    with Engine.borrowing(model, tokenizer, max_batch=2) as engine:  # rows join as others leave
        completions = engine.generate([Request(prompt_ids=p, sampling=greedy) for p in prompts])

    assert [c.token_ids for c in completions] == expected
    if adapter != "none":
        base, _ = tiny_model(arch, seed=3)
        assert expected != [reference(base, tokenizer, p, 12) for p in prompts], "the adapter changes tokens"


def test_a_prefix_prefilled_once_starts_later_prompts() -> None:
    model, tokenizer = tiny_model("llama", seed=3)
    prompts = [list(tokenizer(text)["input_ids"]) for text in TEXTS[:3]]
    greedy = SamplingSettings(max_tokens=8)

    with Engine.borrowing(model, tokenizer, max_batch=3) as engine:
        together = engine.generate([Request(prompt_ids=p, sampling=greedy) for p in prompts[:2]])
        kept = engine._prefix
        alone = engine.generate([Request(prompt_ids=prompts[2], sampling=greedy)])

    assert kept is not None and len(kept) >= len(tokenizer(SHARED)["input_ids"]) - 1
    assert engine._prefix is kept, "the third prompt starts from the kept prefix"
    assert [c.token_ids for c in together + alone] == [reference(model, tokenizer, p, 8) for p in prompts]


def test_an_answer_that_cannot_score_stops_and_the_others_are_unchanged() -> None:
    model, tokenizer = tiny_model("llama", seed=3)
    prompts = [list(tokenizer(text)["input_ids"]) for text in TEXTS[:3]]
    full = [reference(model, tokenizer, p, 10) for p in prompts]
    first = tokenizer.decode(full[0][:1], skip_special_tokens=True)
    greedy = SamplingSettings(max_tokens=10)

    with Engine.borrowing(model, tokenizer, max_batch=3) as engine:
        cut = engine.generate(
            [Request(prompt_ids=p, sampling=greedy, stop_when=lambda text: text == first) for p in prompts]
        )

    assert cut[0].token_ids == full[0][:1] and cut[0].finish_reason == "stop"
    for completion, tokens in zip(cut[1:], full[1:], strict=True):
        starts_alike = tokenizer.decode(tokens[:1], skip_special_tokens=True) == first
        assert completion.token_ids == (tokens[:1] if starts_alike else tokens)


def test_the_borrowed_model_comes_back_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packed, "MIN_WEIGHTS", 0)  # the tiny model's linears are all below the threshold
    model, tokenizer = with_adapter("llama", "lora")
    model.train()
    before = {name: type(module) for name, module in model.named_modules()}
    weights = copy.deepcopy(model.state_dict())

    with Engine.borrowing(model, tokenizer, max_batch=2) as engine:
        assert any(isinstance(m, packed.PackedLinear) for m in model.modules())
        engine.generate([Request(prompt_ids=[5, 6, 7], sampling=SamplingSettings(max_tokens=3))])

    assert {name: type(module) for name, module in model.named_modules()} == before
    assert model.training
    torch.testing.assert_close(model.state_dict(), weights, rtol=0, atol=0)


def test_an_adapter_request_to_a_borrowed_engine_fails_alone() -> None:
    model, tokenizer = tiny_model("llama", seed=3)
    with Engine.borrowing(model, tokenizer, max_batch=2) as engine:
        wrong, right = engine.generate(
            [Request(prompt_ids=[5, 6], adapter="other"), Request(prompt_ids=[5, 6])]
        )
    assert wrong.finish_reason == "error" and "runs its model as given" in (wrong.error or "")
    assert right.finish_reason != "error"


def chat_example(question: str) -> Example:
    messages = (Message("system", SHARED), Message("user", question), Message("assistant", '{"a": 1}'))
    return Example(source="test:1", messages=messages)


def test_answers_are_the_generated_text_in_the_examples_order() -> None:
    model, tokenizer = tiny_model("qwen2", seed=3)
    examples = [chat_example(q) for q in ["a much longer question than the rest", "hi", "what now?"]]
    progress: list[int] = []

    answers = generate_answers(
        model, tokenizer, examples, max_new_tokens=6, batch_size=2, on_batch=progress.append
    )

    rendered = [render_chat(e.prompt_messages, tokenizer, generation=True) for e in examples]
    prompts = [list(tokenizer(str(text), add_special_tokens=False)["input_ids"]) for text in rendered]
    tokens = [reference(model, tokenizer, list(p), 6) for p in prompts]
    expected = [str(tokenizer.decode(t, skip_special_tokens=True)).strip() for t in tokens]
    assert answers == expected
    assert sum(progress) == len(examples)


@pytest.mark.parametrize(
    "inputs",
    [
        {},
        {"prompt": "hi", "prompt_ids": [1, 2]},
        {"messages": [{"role": "user", "content": "hi"}], "prompt": "hi"},
    ],
)
def test_a_request_takes_exactly_one_of_prompt_messages_and_prompt_ids(inputs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="exactly one of prompt, messages and prompt_ids"):
        Request(**inputs)
