"""One poisoned request in a mixed batch: a tiny temperature or a vanishing repetition penalty complete (the
sampling math stays finite); nan or inf settings made past validation, an adapter of nan factors, nan
logits mid-decode and a chooser that raises fail that request alone. Every other request, greedy or
seeded, with or without an adapter, gets exactly the tokens it gets alone, and the engine serves on."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from lorafleet.serving.engine import Engine
from lorafleet.serving.generate import SamplingSettings
from lorafleet.serving.requests import Completion, Request
from lorafleet.serving.sampling import TokenChooser
from tests.serving.conftest import make_cache, save_random_adapter

Tiny = tuple[PreTrainedModel, PreTrainedTokenizerFast]
GREEDY = SamplingSettings(max_tokens=8)
SAMPLED = GREEDY.model_copy(update={"temperature": 0.9, "seed": 7})
NUCLEUS = GREEDY.model_copy(update={"temperature": 1.3, "top_p": 0.9, "seed": 3})
PENALISED = GREEDY.model_copy(update={"repetition_penalty": 1.3})  # greedy, off the batched argmax path
NORMAL = [
    Request(prompt="hello", adapter="r4", sampling=GREEDY),
    Request(prompt="good morning, how are you today?", sampling=GREEDY),
    Request(prompt="the quick brown fox", adapter="r8", sampling=SAMPLED),
    Request(prompt="tell me a story", sampling=NUCLEUS),
    Request(prompt="x", adapter="r64", sampling=PENALISED),
]
POISON_PROMPT = "once upon a time"


def unchecked(**fields: Any) -> SamplingSettings:
    """Settings the validators would refuse, as code could still make them (`model_construct`)."""
    return SamplingSettings.model_construct(**{**GREEDY.model_dump(), **fields})


@pytest.fixture(scope="module")
def adapters(
    adapter_dirs: dict[str, Path], base_and_tokenizer: Tiny, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """The mixed-rank adapters and "nan": a rank-4 adapter whose B factors are all nan."""
    folder = save_random_adapter(base_and_tokenizer[0], tmp_path_factory.mktemp("nan") / "nan", r=4, seed=5)
    weights = folder / "adapter_model.safetensors"
    state = load_file(weights)
    save_file(
        {k: torch.full_like(v, float("nan")) if ".lora_B." in k else v for k, v in state.items()}, weights
    )
    return {**adapter_dirs, "nan": folder}


def engine_for(tiny: Tiny, adapters: dict[str, Path]) -> Engine:
    base, tokenizer = tiny
    return Engine(copy.deepcopy(base), tokenizer, cache=make_cache(base, adapters))


@pytest.fixture(scope="module")
def alone(base_and_tokenizer: Tiny, adapters: dict[str, Path]) -> list[Completion]:
    """Each normal request generated on its own."""
    engine = engine_for(base_and_tokenizer, adapters)
    return [engine.generate([request])[0] for request in NORMAL]


# --- the poisons: each makes its request (and sets up the engine) --------------------------------------


def nan_logits_mid_decode(engine: Engine, _: pytest.MonkeyPatch) -> Request:
    """A greedy request whose logits turn nan after its third token (the output head poisons its row)."""
    request = Request(prompt=POISON_PROMPT, adapter="r16", sampling=GREEDY)

    def poison(_module: torch.nn.Module, _args: object, logits: torch.Tensor) -> torch.Tensor:
        ids = [row.handle.request.request_id for row in engine._rows]
        if logits.shape[0] == len(ids) and request.request_id in ids:  # a decode step of the running batch
            index = ids.index(request.request_id)
            if len(engine._rows[index].tokens) >= 3:
                logits[index] = float("nan")  # (T, V) of that row
        return logits

    engine.model.lm_head.register_forward_hook(poison)  # type: ignore[union-attr]
    return request


def raising_chooser(_: Engine, monkeypatch: pytest.MonkeyPatch) -> Request:
    """A sampled request whose chooser raises at its third token."""
    calls: dict[int, int] = {}
    choose = TokenChooser.choose

    def flaky(self: TokenChooser, logits: torch.Tensor) -> int:
        if self.settings.seed == 666:
            calls[id(self)] = calls.get(id(self), 0) + 1
            if calls[id(self)] == 3:
                raise RuntimeError("boom")
        return choose(self, logits)

    monkeypatch.setattr(TokenChooser, "choose", flaky)
    return Request(prompt=POISON_PROMPT, sampling=GREEDY.model_copy(update={"temperature": 0.7, "seed": 666}))


def settings_poison(sampling: SamplingSettings, adapter: str | None = None) -> Callable[..., Request]:
    return lambda *_: Request(prompt=POISON_PROMPT, adapter=adapter, sampling=sampling)


NAN, INF = float("nan"), float("inf")
Poison = Callable[[Engine, pytest.MonkeyPatch], Request]
# name → (make the poisoned request, None if it completes or (error substring, tokens it keeps))
POISONS: dict[str, tuple[Poison, tuple[str, int] | None]] = {
    "temperature 1e-45": (settings_poison(GREEDY.model_copy(update={"temperature": 1e-45}), "r16"), None),
    "temperature 1e-300 (0 in float32)": (
        settings_poison(GREEDY.model_copy(update={"temperature": 1e-300})),
        None,
    ),
    "repetition_penalty 1e-300": (settings_poison(unchecked(repetition_penalty=1e-300), "r16"), None),
    "sampled, repetition_penalty 1e-300": (
        settings_poison(unchecked(repetition_penalty=1e-300, temperature=1.0, seed=5)),
        None,
    ),
    "temperature nan": (settings_poison(unchecked(temperature=NAN)), ("temperature must be a finite", 0)),
    "temperature inf": (settings_poison(unchecked(temperature=INF)), ("temperature must be a finite", 0)),
    "top_p nan": (settings_poison(unchecked(temperature=1.0, top_p=NAN)), ("top_p must be a finite", 0)),
    "top_p inf": (settings_poison(unchecked(temperature=1.0, top_p=INF)), ("top_p must be a finite", 0)),
    "repetition_penalty nan": (
        settings_poison(unchecked(repetition_penalty=NAN)),
        ("repetition_penalty must be a finite", 0),
    ),
    "adapter of nan factors": (settings_poison(GREEDY, "nan"), ("non-finite logits", 0)),
    "nan logits mid-decode": (nan_logits_mid_decode, ("non-finite logits", 3)),
    "chooser raises": (raising_chooser, ("RuntimeError: boom", 2)),
}


@pytest.mark.parametrize("poison", list(POISONS))
def test_one_poisoned_request_leaves_the_rest_of_its_batch_as_alone(
    poison: str,
    base_and_tokenizer: Tiny,
    adapters: dict[str, Path],
    alone: list[Completion],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = engine_for(base_and_tokenizer, adapters)
    make, failure = POISONS[poison]
    poisoned = make(engine, monkeypatch)
    batch = [*NORMAL[:2], poisoned, *NORMAL[2:]]

    results = engine.generate(batch)

    bad = results.pop(2)
    assert [c.token_ids for c in results] == [c.token_ids for c in alone]
    assert all(c.finish_reason in ("stop", "length") for c in results)
    if failure is None:  # the sampling math stays finite: a completion like any other
        assert bad.finish_reason in ("stop", "length") and bad.error is None, bad.error
        by_itself = poisoned.model_copy(update={"request_id": "again"})
        if 0 < poisoned.sampling.temperature < 1e-40:  # a tiny temperature is greedy
            by_itself = by_itself.model_copy(update={"sampling": GREEDY})
        assert bad.token_ids == engine.generate([by_itself])[0].token_ids
    else:
        needle, kept = failure
        assert bad.finish_reason == "error" and needle in (bad.error or ""), bad.error
        assert bad.completion_tokens == kept
    assert engine.stats()["running"] == 0 and engine.slots is not None
    assert engine.slots.stats()["pinned"] == 0  # the failed row let go of its adapter
    assert [c.token_ids for c in engine.generate(NORMAL)] == [c.token_ids for c in alone]  # serving on
