"""The general probe on the tiny llama: the base's answers are its greedy answers and are cached once per
base, a zero adapter does not drift (base perplexity = its perplexity), a random one does."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from lorafleet.adapters import LoraSettings, attach, base_identity, load_adapter
from lorafleet.evaluation import probe
from lorafleet.evaluation.probe import (
    base_answers,
    general_drift,
    general_prompts,
    probe_cache_file,
    probe_perplexity,
)

Tiny = tuple[nn.Module, Any]
PROMPTS = ("What is 2 + 2?", "Name a colour.", "Write a haiku about rain.")
FAST = {"max_new_tokens": 16, "batch_size": 8}


def zero_adapter(model: nn.Module) -> nn.Module:
    """The default LoRA init: B = 0, so the adapted model computes exactly what the base does."""
    return attach(copy.deepcopy(model), LoraSettings(r=4, target_modules=["q_proj", "v_proj"]))


def test_the_shipped_prompts_are_a_few_dozen_distinct_short_ones() -> None:
    prompts = general_prompts()

    assert 24 <= len(prompts) <= 32
    assert len(set(prompts)) == len(prompts)
    assert all(isinstance(p, str) and 0 < len(p) < 200 for p in prompts)


def test_base_answers_are_the_base_models_greedy_answers(tiny: Tiny) -> None:
    model, tokenizer = tiny

    answers = base_answers(model, tokenizer, PROMPTS, **FAST)

    assert all(answers)
    for prompt, answer in zip(PROMPTS, answers, strict=True):  # reference: HF generate, one prompt at a time
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        out = model.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert answer == tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def test_base_answers_are_cached_once_per_base(tiny: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer = tiny
    calls: list[int] = []
    generate = probe.generate_answers

    def counting(*args: Any, **kwargs: Any) -> list[str]:
        calls.append(1)
        return generate(*args, **kwargs)

    monkeypatch.setattr(probe, "generate_answers", counting)
    path = probe_cache_file(base_identity(model).fingerprint)

    first = base_answers(model, tokenizer, PROMPTS, **FAST)
    written = path.stat().st_mtime_ns
    with (adapted := zero_adapter(model)).disable_adapter():  # the same base, under an adapter
        again = base_answers(adapted, tokenizer, PROMPTS, **FAST)

    assert calls == [1] and again == first
    assert path.stat().st_mtime_ns == written
    record = json.loads(path.read_text())
    assert record["answers"] == first and record["prompts"] == list(PROMPTS)
    assert path.stem == f"{record['fingerprint']}-general"

    base_answers(model, tokenizer, PROMPTS[:2], **FAST)  # other prompts: generated again, cache replaced
    assert calls == [1, 1] and json.loads(path.read_text())["prompts"] == list(PROMPTS[:2])


def test_base_answers_refuse_a_model_whose_adapter_is_on(tiny: Tiny) -> None:
    model, tokenizer = tiny
    adapted = zero_adapter(model)

    with pytest.raises(ValueError, match="disable_adapter"):
        base_answers(adapted, tokenizer, PROMPTS, **FAST)
    with adapted.disable_adapter():
        assert base_answers(adapted, tokenizer, PROMPTS, **FAST) == base_answers(
            model, tokenizer, PROMPTS, **FAST
        )


def test_a_zero_adapter_does_not_drift(tiny: Tiny) -> None:
    model, tokenizer = tiny

    drift = general_drift(zero_adapter(model), tokenizer, prompts=PROMPTS, **FAST)

    answers = base_answers(model, tokenizer, PROMPTS, **FAST)
    torch.testing.assert_close(drift["base_perplexity"], probe_perplexity(model, tokenizer, PROMPTS, answers))
    torch.testing.assert_close(drift["perplexity"], drift["base_perplexity"])
    assert abs(drift["drift"]) < 1e-6


def test_a_random_adapter_drifts(tiny: Tiny, random_adapter: Path) -> None:
    model, tokenizer = tiny
    adapted = load_adapter(model, random_adapter)

    drift = general_drift(adapted, tokenizer, **FAST)  # the shipped prompts

    assert set(drift) == {"perplexity", "base_perplexity", "drift"}
    assert abs(drift["drift"]) > 1e-3
    torch.testing.assert_close(drift["drift"], drift["perplexity"] / drift["base_perplexity"] - 1)
    with adapted.disable_adapter():  # the base's perplexity is measured with the adapter off
        answers = base_answers(adapted, tokenizer, general_prompts(), **FAST)
        base = probe_perplexity(adapted, tokenizer, general_prompts(), answers)
    torch.testing.assert_close(drift["base_perplexity"], base, rtol=1e-5, atol=0)
