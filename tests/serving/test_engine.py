"""The engine: greedy tokens equal alone, in a mixed batch, merged, and through PEFT's `generate`; continuous
batching, sampling settings, stop strings, failures that stay with their request, and the slot tier."""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerFast
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from lorafleet.adapters.quantize import quantize_nf4
from lorafleet.errors import ConfigError
from lorafleet.serving import packed
from lorafleet.serving.engine import Engine
from lorafleet.serving.generate import SamplingSettings, encode_prompt, stream_generate
from lorafleet.serving.requests import Completion, Request
from lorafleet.serving.sampling import apply_repetition_penalty, filter_top_k, filter_top_p
from tests.serving.conftest import make_cache, save_random_adapter

Tiny = tuple[PreTrainedModel, PreTrainedTokenizerFast]
PROMPTS = ["hello", "good morning, how are you today?", "x", "the quick brown fox", "tell me a story"]
GREEDY = SamplingSettings(max_tokens=10)


def engine_for(tiny: Tiny, adapters: dict[str, Path], **options: object) -> Engine:
    base, tokenizer = tiny
    cache = make_cache(base, adapters)
    return Engine(copy.deepcopy(base), tokenizer, cache=cache, **options)  # type: ignore[arg-type]


def requests(adapters: list[str | None], sampling: SamplingSettings = GREEDY) -> list[Request]:
    return [
        Request(prompt=PROMPTS[i % len(PROMPTS)], adapter=name, sampling=sampling)
        for i, name in enumerate(adapters)
    ]


MIXED = ["r4", None, "r64", "r8", "r16", "r4", None]


@pytest.fixture
def alone(base_and_tokenizer: Tiny, adapter_dirs: dict[str, Path]) -> list[Completion]:
    """Each request of MIXED generated on its own."""
    engine = engine_for(base_and_tokenizer, adapter_dirs)
    return [engine.generate([request])[0] for request in requests(MIXED)]


def test_greedy_tokens_are_the_same_alone_and_in_a_mixed_batch(
    base_and_tokenizer: Tiny, adapter_dirs: dict[str, Path], alone: list[Completion]
) -> None:
    engine = engine_for(base_and_tokenizer, adapter_dirs)

    together = engine.generate(requests(MIXED))

    assert [c.token_ids for c in together] == [c.token_ids for c in alone]
    assert len({tuple(c.token_ids) for c in together}) > 3, "adapters should change what is generated"


def test_packed_weights_give_the_same_greedy_tokens(
    base_and_tokenizer: Tiny,
    adapter_dirs: dict[str, Path],
    alone: list[Completion],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(packed, "MIN_WEIGHTS", 0)  # the tiny model's linears are all below the threshold
    engine = engine_for(base_and_tokenizer, adapter_dirs)
    kinds = {type(m).__name__ for m in engine.model.modules()}
    assert "PackedLinear" in kinds and "Linear" not in kinds, (
        "every linear, head and wrapped bases, is packed"
    )

    together = engine.generate(requests(MIXED))

    assert [c.token_ids for c in together] == [c.token_ids for c in alone]


def test_greedy_tokens_equal_peft_generate(
    base_and_tokenizer: Tiny, adapter_dirs: dict[str, Path], alone: list[Completion]
) -> None:
    base, tokenizer = base_and_tokenizer
    for request, completion in zip(requests(MIXED), alone, strict=True):
        model = copy.deepcopy(base)
        if request.adapter is not None:
            model = PeftModel.from_pretrained(model, str(adapter_dirs[request.adapter]))
        inputs = encode_prompt(tokenizer, request.prompt or "")
        with torch.no_grad():
            output = model.generate(
                **inputs,
                max_new_tokens=GREEDY.max_tokens,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        expected = output[0, inputs["input_ids"].shape[1] :].tolist()
        assert completion.token_ids == expected, request.adapter


def test_requests_joining_mid_decode_match_alone(
    base_and_tokenizer: Tiny, adapter_dirs: dict[str, Path], alone: list[Completion]
) -> None:
    engine = engine_for(base_and_tokenizer, adapter_dirs, max_batch=3)
    batch = requests(MIXED)
    handles = [engine.submit(request) for request in batch[:2]]
    for _ in range(4):  # the first two are mid-decode when the others arrive
        engine.step()
    assert engine.stats()["running"] == 2
    handles += [engine.submit(request) for request in batch[2:]]
    engine.step()
    assert engine.stats()["running"] == 3  # max_batch: the rest wait in the queue

    engine.run_until_idle()

    assert [h.result().token_ids for h in handles] == [c.token_ids for c in alone]


def test_background_thread_streams_pieces(base_and_tokenizer: Tiny, adapter_dirs: dict[str, Path]) -> None:
    engine = engine_for(base_and_tokenizer, adapter_dirs)
    engine.start()
    try:
        handles = [engine.submit(request) for request in requests(["r8", "r16", None])]
        pieces: dict[int, list[str]] = {}

        def read(i: int) -> None:
            pieces[i] = list(handles[i])

        readers = [threading.Thread(target=read, args=(i,)) for i in range(len(handles))]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(timeout=60)
        results = [handle.result(timeout=60) for handle in handles]
    finally:
        engine.stop()
    assert ["".join(pieces[i]) for i in range(len(handles))] == [r.text for r in results]


def test_a_bad_adapter_fails_only_its_request(
    base_and_tokenizer: Tiny, adapter_dirs: dict[str, Path], alone: list[Completion], tmp_path: Path
) -> None:
    corrupt = save_random_adapter(base_and_tokenizer[0], tmp_path / "corrupt", r=4, seed=9)
    weights = corrupt / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    engine = engine_for(base_and_tokenizer, {**adapter_dirs, "corrupt": corrupt, "gone": tmp_path / "gone"})
    batch = requests(MIXED)
    batch.insert(1, Request(prompt="hi", adapter="corrupt", sampling=GREEDY))
    batch.insert(4, Request(prompt="hi", adapter="gone", sampling=GREEDY))

    results = engine.generate(batch)

    failed = [results.pop(4), results.pop(1)]
    assert [c.finish_reason for c in failed] == ["error", "error"]
    assert "gone" in (failed[0].error or "") and "corrupt" in (failed[1].error or "")
    assert "truncated" in (failed[1].error or "") and failed[1].completion_tokens == 0
    assert [c.token_ids for c in results] == [c.token_ids for c in alone]


def test_a_failed_forward_fails_the_running_requests_and_the_engine_goes_on(
    base_and_tokenizer: Tiny, adapter_dirs: dict[str, Path], alone: list[Completion]
) -> None:
    engine = engine_for(base_and_tokenizer, adapter_dirs)
    running = [engine.submit(request) for request in requests(MIXED[:2])]
    engine.step()

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("out of memory")

    engine.model.forward = broken  # type: ignore[method-assign]
    engine.step()
    del engine.model.forward

    for handle in running:
        assert handle.result().error == "generation failed: RuntimeError: out of memory"
        assert handle.result().completion_tokens == 2  # the tokens made before the failure are kept
    assert engine.generate(requests(MIXED[:1]))[0].token_ids == alone[0].token_ids


def test_max_tokens_and_token_counts(base_and_tokenizer: Tiny, adapter_dirs: dict[str, Path]) -> None:
    _, tokenizer = base_and_tokenizer
    engine = engine_for(base_and_tokenizer, adapter_dirs)
    settings = SamplingSettings(max_tokens=7, ignore_eos=True)

    result = engine.generate([Request(prompt="hello there", adapter="r8", sampling=settings)])[0]

    expected_prompt = encode_prompt(tokenizer, "hello there")["input_ids"].shape[1]
    assert (result.prompt_tokens, result.completion_tokens) == (expected_prompt, 7)
    assert result.finish_reason == "length" and len(result.token_ids) == 7
    assert result.time_to_first_token is not None and result.time_per_output_token is not None


def test_eos_ends_a_request_unless_ignored(
    base_and_tokenizer: Tiny, adapter_dirs: dict[str, Path], alone: list[Completion]
) -> None:
    base, tokenizer = base_and_tokenizer
    # a request whose tokens include one that did not come before: make that token an end of sequence
    index, at = next(
        (i, j) for i, c in enumerate(alone) for j in range(1, 10) if c.token_ids[j] not in c.token_ids[:j]
    )
    first = alone[index].token_ids
    model = copy.deepcopy(base)
    model.generation_config.eos_token_id = first[at]
    engine = Engine(model, tokenizer, cache=make_cache(base, adapter_dirs))
    request = requests(MIXED)[index]

    stopped, ignored = engine.generate(
        [request, request.model_copy(update={"sampling": GREEDY.model_copy(update={"ignore_eos": True})})]
    )

    assert stopped.finish_reason == "stop" and stopped.token_ids == first[: at + 1]
    assert ignored.finish_reason == "length" and ignored.token_ids == first


def test_stop_strings_end_the_text_before_them(
    base_and_tokenizer: Tiny, adapter_dirs: dict[str, Path]
) -> None:
    engine = engine_for(base_and_tokenizer, adapter_dirs)
    settings = SamplingSettings(max_tokens=16, chat=False)
    # random tiny models write random bytes: find a completion with a printable pair first seen past its start
    for adapter in (None, "r16", "r4"):
        for prompt in PROMPTS:
            full = engine.generate([Request(prompt=prompt, adapter=adapter, sampling=settings)])[0]
            text = full.text
            starts = [
                i
                for i in range(3, len(text) - 1)
                if "\ufffd" not in text[i : i + 2] and text.find(text[i : i + 2]) == i
            ]
            if starts:
                break
        if starts:
            break
    stop = text[starts[0] : starts[0] + 2]
    stopped_settings = settings.model_copy(update={"stop": ["never appears", stop]})

    engine.start()
    try:
        handle = engine.submit(Request(prompt=prompt, adapter=adapter, sampling=stopped_settings))
        pieces = list(handle)
        result = handle.result(timeout=60)
    finally:
        engine.stop()

    assert result.finish_reason == "stop"
    assert result.text == text[: starts[0]]
    assert "".join(pieces) == result.text  # a stop string is never streamed, not even its first character
    assert result.token_ids == full.token_ids[: len(result.token_ids)]
    base, tokenizer = base_and_tokenizer
    runnable = PeftModel.from_pretrained(copy.deepcopy(base), str(adapter_dirs[adapter])) if adapter else base
    assert "".join(stream_generate(runnable, tokenizer, prompt, stopped_settings)) == result.text


def test_repetition_penalty_matches_transformers(
    base_and_tokenizer: Tiny, adapter_dirs: dict[str, Path]
) -> None:
    logits = torch.randn(1, 300, generator=torch.Generator().manual_seed(0))
    seen = torch.tensor([[3, 7, 7, 250, 12]])
    expected = RepetitionPenaltyLogitsProcessor(1.7)(seen, logits.clone())
    torch.testing.assert_close(apply_repetition_penalty(logits[0], seen[0], 1.7), expected[0])

    base, tokenizer = base_and_tokenizer
    settings = SamplingSettings(max_tokens=12, repetition_penalty=1.5)
    ours = engine_for(base_and_tokenizer, adapter_dirs).generate(requests([None], settings))[0]
    inputs = encode_prompt(tokenizer, PROMPTS[0])
    with torch.no_grad():
        output = base.generate(
            **inputs, max_new_tokens=12, do_sample=False, repetition_penalty=1.5,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
    assert ours.token_ids == output[0, inputs["input_ids"].shape[1] :].tolist()


@pytest.mark.parametrize(("k", "p"), [(5, 1.0), (0, 0.8), (20, 0.5)])
def test_top_k_and_top_p_match_transformers(k: int, p: float) -> None:
    logits = torch.randn(1, 100, generator=torch.Generator().manual_seed(1))
    expected = logits
    if k:
        expected = TopKLogitsWarper(k)(None, expected)
    if p < 1:
        expected = TopPLogitsWarper(p)(None, expected)
    torch.testing.assert_close(filter_top_p(filter_top_k(logits[0], k), p), expected[0])


def test_seeded_sampling_is_reproducible_in_any_batch(
    base_and_tokenizer: Tiny, adapter_dirs: dict[str, Path]
) -> None:
    engine = engine_for(base_and_tokenizer, adapter_dirs)
    seeded = SamplingSettings(max_tokens=12, temperature=0.9, top_p=0.95, top_k=50, seed=7)
    request = Request(prompt="once upon a time", adapter="r8", sampling=seeded)

    first = engine.generate([request])[0].token_ids
    in_batch = engine.generate([*requests(["r4", None]), request, *requests(["r64"])])[2].token_ids
    reseeded = request.model_copy(update={"sampling": seeded.model_copy(update={"seed": 8})})
    other_seed = engine.generate([reseeded])[0].token_ids

    assert in_batch == first
    assert other_seed != first


def test_merged_mode_gives_the_unmerged_greedy_tokens(
    base_and_tokenizer: Tiny, adapter_dirs: dict[str, Path], alone: list[Completion]
) -> None:
    engine = engine_for(base_and_tokenizer, adapter_dirs, merged="r16")

    batch, index = requests(MIXED), MIXED.index("r16")
    merged = engine.generate([batch[index], batch[0]])  # r16, then r4

    assert merged[0].token_ids == alone[index].token_ids
    assert merged[1].finish_reason == "error" and "only 'r16'" in (merged[1].error or "")


def test_slot_tier_evicts_and_reloads_from_the_cache(
    base_and_tokenizer: Tiny, adapter_dirs: dict[str, Path], alone: list[Completion]
) -> None:
    engine = engine_for(base_and_tokenizer, adapter_dirs, max_slots=2)

    results = engine.generate(requests(MIXED))  # four adapters through two slots: some wait their turn

    assert [c.token_ids for c in results] == [c.token_ids for c in alone]
    assert engine.slots is not None
    assert engine.slots.evictions >= 2 and len(engine.slots.resident()) == 2
    assert engine.cache.stats().loads == 4  # evicted adapters came back from the CPU tier, not from disk


def test_chat_messages_render_with_the_template(
    base_and_tokenizer: Tiny, adapter_dirs: dict[str, Path]
) -> None:
    engine = engine_for(base_and_tokenizer, adapter_dirs)
    messages = [{"role": "user", "content": PROMPTS[0]}]

    by_messages, by_prompt = engine.generate(
        [Request(messages=messages, adapter="r4", sampling=GREEDY), *requests(["r4"])]
    )

    assert by_messages.token_ids == by_prompt.token_ids
    assert by_messages.prompt_tokens == by_prompt.prompt_tokens


def test_nf4_base_serves_mixed_batches(base_and_tokenizer: Tiny, adapter_dirs: dict[str, Path]) -> None:
    base, tokenizer = base_and_tokenizer
    quantized = copy.deepcopy(base)
    quantize_nf4(quantized, compute_dtype=torch.float32)
    engine = Engine(copy.deepcopy(quantized), tokenizer, cache=make_cache(base, adapter_dirs))
    batch = requests(MIXED)

    together = engine.generate(batch)

    assert [c.token_ids for c in together] == [engine.generate([r])[0].token_ids for r in batch]
    reference = PeftModel.from_pretrained(quantized, str(adapter_dirs["r64"]))
    inputs = encode_prompt(tokenizer, batch[2].prompt or "")
    with torch.no_grad():
        output = reference.generate(**inputs, max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert together[2].token_ids == output[0, inputs["input_ids"].shape[1] :].tolist()


def test_a_cancelled_request_stops(base_and_tokenizer: Tiny, adapter_dirs: dict[str, Path]) -> None:
    engine = engine_for(base_and_tokenizer, adapter_dirs)
    waiting, running = (engine.submit(r) for r in requests(["r4", "r8"], SamplingSettings(max_tokens=50)))
    waiting.cancel()
    engine.step()
    running.cancel()
    engine.run_until_idle()

    assert waiting.result().finish_reason == "cancelled" and waiting.result().completion_tokens == 0
    assert running.result().finish_reason == "cancelled" and running.result().completion_tokens == 2


def test_a_request_needs_exactly_one_of_prompt_and_messages() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Request(prompt="a", messages=[{"role": "user", "content": "b"}])


def test_a_prompt_longer_than_the_model_takes_is_refused_at_submit(
    base_and_tokenizer: Tiny, adapter_dirs: dict[str, Path]
) -> None:
    engine = engine_for(base_and_tokenizer, adapter_dirs)
    with pytest.raises(ConfigError, match="at most 511"):
        engine.submit(Request(prompt="x" * 600, sampling=SamplingSettings(chat=False)))
