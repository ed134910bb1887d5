"""The multi-LoRA layer: a mixed batch equals PEFT row by row, on both paths, over fp32 and NF4 bases."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from peft import PeftModel
from transformers import PreTrainedModel

from lorafleet.adapters.quantize import quantize_nf4
from lorafleet.errors import AdapterError, BaseModelMismatchError
from lorafleet.serving.cache import load_lora
from lorafleet.serving.multilora import AdapterSlots, LoraBatch, MultiLoraLinear, wrap_linears
from tests.serving.conftest import TARGETS, peft_logits, peft_with_all, save_random_adapter

# rows of the mixed batch: every rank, and base rows among them
ROWS = ["r4", None, "r64", "r8", "r16", None, "r64"]


def served(
    base: PreTrainedModel, adapters: dict[str, Path], **slot_options: int
) -> tuple[torch.nn.Module, dict[str, MultiLoraLinear], AdapterSlots]:
    """A copy of `base` with wrapped linears and every adapter of `adapters` in a slot."""
    model = copy.deepcopy(base)
    layers = wrap_linears(model, TARGETS)
    slots = AdapterSlots(layers, **slot_options)
    for name, path in adapters.items():
        slots.acquire(name, load_lora(path, ref=name))
    return model, layers, slots


def mixed_logits(
    model: torch.nn.Module,
    layers: dict[str, MultiLoraLinear],
    slots: AdapterSlots,
    rows: list[str | None],
    input_ids: torch.Tensor,
    path: str,
) -> torch.Tensor:
    batch = next(iter(layers.values())).batch
    batch.path = path  # type: ignore[assignment]
    batch.route([0 if name is None else slots.slot_of(name) for name in rows])  # type: ignore[misc]
    with torch.no_grad():
        return model(input_ids=input_ids).logits  # (B, T, V)


@pytest.fixture(scope="module", params=[False, True], ids=["fp32", "nf4"])
def bases(
    request: pytest.FixtureRequest,
    base_and_tokenizer: tuple[PreTrainedModel, object],
    adapter_dirs: dict[str, Path],
) -> tuple[PreTrainedModel, PeftModel]:
    """The base (fp32, or NF4) and the PEFT reference over the same base holding every adapter."""
    base, _ = base_and_tokenizer
    if request.param:  # both sides get the same NF4 weights: quantizing is deterministic
        base = copy.deepcopy(base)
        quantize_nf4(base, compute_dtype=torch.float32)
    return base, peft_with_all(base, adapter_dirs)


@pytest.mark.parametrize("tokens", [7, 1], ids=["prefill", "decode"])
@pytest.mark.parametrize("path", ["segments", "gather", "bags"])
def test_mixed_batch_equals_peft_row_by_row(
    bases: tuple[PreTrainedModel, PeftModel], adapter_dirs: dict[str, Path], path: str, tokens: int
) -> None:
    base, reference = bases
    model, layers, slots = served(base, adapter_dirs)
    input_ids = torch.randint(0, 256, (len(ROWS), tokens), generator=torch.Generator().manual_seed(3))

    ours = mixed_logits(model, layers, slots, ROWS, input_ids, path)

    for i, name in enumerate(ROWS):
        expected = peft_logits(reference, name, input_ids[i : i + 1])[0]
        # over NF4 both sides de-quantize to the same fp32 weights, so fp32 rounding is all that differs
        torch.testing.assert_close(ours[i], expected, atol=1e-5, rtol=0, msg=f"row {i} ({name})")
    with torch.no_grad(), reference.disable_adapter():
        plain = reference(input_ids=input_ids[2:3]).logits[0]
    assert (ours[2] - plain).abs().max() > 1e-3, "the adapters should change the logits"


@pytest.mark.parametrize("path", ["segments", "gather", "bags"])
def test_adapters_of_different_modules_share_a_batch(
    base_and_tokenizer: tuple[PreTrainedModel, object],
    adapter_dirs: dict[str, Path],
    tmp_path: Path,
    path: str,
) -> None:
    """The adapter in the highest slot adapts q_proj alone: k, v and o must still route its rows."""
    base, _ = base_and_tokenizer
    adapters = {"r4": adapter_dirs["r4"]}
    adapters["q_only"] = save_random_adapter(
        base, tmp_path / "q_only", r=8, seed=9, target_modules=["q_proj"]
    )
    model, layers, slots = served(base, adapters)
    reference = peft_with_all(base, adapters)
    rows = ["q_only", "r4", None]
    input_ids = torch.randint(0, 256, (len(rows), 1 if path == "bags" else 5))

    ours = mixed_logits(model, layers, slots, rows, input_ids, path)

    for i, name in enumerate(rows):
        expected = peft_logits(reference, name, input_ids[i : i + 1])[0]
        torch.testing.assert_close(ours[i], expected, atol=1e-5, rtol=0, msg=f"row {i} ({name})")


def test_auto_path() -> None:
    batch, x = LoraBatch(), torch.zeros(1, 8)
    batch.route([1, 2, 0])
    assert batch.choose(3, 1, x) == "bags"  # decode, several adapters, a CPU in fp32
    assert batch.choose(3, 1, x.bfloat16()) == "gather"
    assert batch.choose(3, 7, x) == "gather"  # prefill: segments of 7 tokens are short
    assert batch.choose(3, 70, x) == "segments"
    batch.route([1, 1, 0])  # one adapter (and the base): its segment is every token it routes
    assert batch.choose(3, 1, x) == "segments"
    batch.route(torch.tensor([[1, 2], [2, 0]]))  # routed per token: segments, whatever their length
    assert batch.choose(2, 2, x) == "segments"
    batch.path = "gather"
    assert batch.choose(2, 2, x) == "gather"


@pytest.mark.parametrize("path", ["segments", "gather", "bags"])
def test_padding_tokens_get_the_base_alone(
    base_and_tokenizer: tuple[PreTrainedModel, object], adapter_dirs: dict[str, Path], path: str
) -> None:
    base, _ = base_and_tokenizer
    _, layers, _ = served(base, {"r16": adapter_dirs["r16"]})
    q_proj = layers["model.layers.0.self_attn.q_proj"]
    x = torch.randn(2, 4, 64)  # (B, T, in)
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    q_proj.batch.route([1, 1], token_mask=mask)
    q_proj.batch.path = path  # type: ignore[assignment]
    with torch.no_grad():
        y = q_proj(x)
        torch.testing.assert_close(y[0, :2], q_proj.base_layer(x[0, :2]))
        assert not torch.allclose(y[0, 2:], q_proj.base_layer(x[0, 2:]))


def test_a_token_routed_nowhere_costs_nothing(base_and_tokenizer: tuple[PreTrainedModel, object]) -> None:
    base, _ = base_and_tokenizer
    model = copy.deepcopy(base)
    layers = wrap_linears(model)
    input_ids = torch.randint(0, 256, (2, 5))
    next(iter(layers.values())).batch.route(None)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=input_ids).logits, base(input_ids=input_ids).logits)
    assert "lm_head" not in layers and len(layers) == 2 * 7  # q k v o gate up down per layer


def test_slot_lru_evicts_the_least_recent_unpinned_and_reloads(
    base_and_tokenizer: tuple[PreTrainedModel, object], adapter_dirs: dict[str, Path]
) -> None:
    base, _ = base_and_tokenizer
    model = copy.deepcopy(base)
    layers = wrap_linears(model, TARGETS)
    slots = AdapterSlots(layers, max_slots=2)
    loaded = {name: load_lora(path, ref=name) for name, path in adapter_dirs.items()}
    input_ids = torch.randint(0, 256, (1, 6))
    reference = peft_with_all(base, {"r8": adapter_dirs["r8"]})

    assert slots.acquire("r4", loaded["r4"]) == 1
    assert slots.acquire("r8", loaded["r8"]) == 2
    assert slots.acquire("r16", loaded["r16"]) is None  # both pinned: nothing may go
    slots.release("r4")
    slots.release("r8")
    assert slots.acquire("r8") == 2  # a hit makes r8 the most recently used
    slots.release("r8")
    assert slots.acquire("r16", loaded["r16"]) == 1  # r4, least recently used, gave its slot
    assert slots.resident() == ["r8", "r16"] and slots.evictions == 1
    assert slots.acquire("r4") is None  # a miss without the adapter: the caller loads it
    slots.release("r16")
    assert slots.acquire("r8") == 2  # pinned again
    assert slots.acquire("r64", loaded["r64"]) == 1  # r8 is pinned: r16 goes
    slots.release("r64")
    slots.release("r8")
    assert slots.evict("r64")

    assert slots.acquire("r8") == 2
    torch.testing.assert_close(
        mixed_logits(model, layers, slots, ["r8"], input_ids, "auto")[0],
        peft_logits(reference, "r8", input_ids)[0],
        atol=1e-5,
        rtol=0,
    )
    assert all(layer.rank == 8 for layer in layers.values())  # rank 64 gone: stacks shrank


def test_slots_bounded_by_bytes(
    base_and_tokenizer: tuple[PreTrainedModel, object], adapter_dirs: dict[str, Path]
) -> None:
    base, _ = base_and_tokenizer
    loaded = {name: load_lora(path, ref=name) for name, path in adapter_dirs.items()}
    budget = loaded["r4"].nbytes + loaded["r16"].nbytes
    slots = AdapterSlots(wrap_linears(copy.deepcopy(base), TARGETS), max_slots=8, max_bytes=budget)
    for name in ("r4", "r8", "r16"):
        slots.acquire(name, loaded[name])
        slots.release(name)
    assert slots.resident() == ["r16"]  # r4 + r8 + r16 is over budget, and so is r8 + r16
    with pytest.raises(AdapterError, match="exceeds"):
        slots.acquire("r64", loaded["r64"])


def test_an_adapter_for_unserved_layers_is_refused(
    base_and_tokenizer: tuple[PreTrainedModel, object], adapter_dirs: dict[str, Path]
) -> None:
    base, _ = base_and_tokenizer
    slots = AdapterSlots(wrap_linears(copy.deepcopy(base), ["q_proj"]))
    with pytest.raises(AdapterError, match="k_proj, which this engine does not serve"):
        slots.acquire("r4", load_lora(adapter_dirs["r4"], ref="r4"))
    assert slots.resident() == []


def test_factors_of_the_wrong_shape_are_refused(base_and_tokenizer: tuple[PreTrainedModel, object]) -> None:
    base, _ = base_and_tokenizer
    layers = wrap_linears(copy.deepcopy(base), ["q_proj"])
    name = "model.layers.0.self_attn.q_proj"
    bad = SimpleNamespace(
        ref="bad", scale=1.0, nbytes=1, factors={name: (torch.ones(4, 32), torch.ones(64, 4))}
    )
    with pytest.raises(BaseModelMismatchError, match="bad"):
        AdapterSlots(layers).acquire("bad", bad)
    assert not any(any(layer.ranks[1:]) for layer in layers.values())


def test_shared_batch_sorts_tokens_into_segments() -> None:
    batch = LoraBatch()
    batch.route([2, 0, 1, 2])
    segments = batch.segments(4, 2, torch.device("cpu"))
    assert [(slot, index.tolist()) for slot, index in segments] == [(1, [4, 5]), (2, [0, 1, 6, 7])]
