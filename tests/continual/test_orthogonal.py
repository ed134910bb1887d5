"""O-LoRA: the overlap penalty is zero exactly for orthogonal subspaces and has the right gradient; the
served sum is one plain adapter equal to parent + child applied together, through PEFT and the engine."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from lorafleet.adapters.storage import read_adapter, write_adapter
from lorafleet.continual import lora_a_matrices, lora_parameters, orthogonal_penalty, served_sum
from lorafleet.errors import AdapterError
from lorafleet.models import tiny_model
from lorafleet.serving.cache import load_lora
from lorafleet.serving.engine import Engine
from lorafleet.serving.generate import SamplingSettings
from lorafleet.serving.multilora import AdapterSlots, wrap_linears
from lorafleet.serving.requests import Request
from tests.helpers import save_random_adapter
from tests.serving.conftest import make_cache

MODULES = {"m.q_proj": 16, "m.v_proj": 24}  # module → in features


def split_basis(r_parent: int, r_new: int, seed: int = 0) -> tuple[dict[str, torch.Tensor], ...]:
    """Parent and new A's whose rows are disjoint columns of one orthonormal basis, rows scaled at random."""
    g = torch.Generator().manual_seed(seed)
    parent, new = {}, {}
    for module, features in MODULES.items():
        q, _ = torch.linalg.qr(torch.randn(features, features, generator=g))  # orthonormal columns
        scale = torch.rand(r_parent + r_new, 1, generator=g) + 0.5
        rows = scale * q[:, : r_parent + r_new].T  # (r_parent + r_new, in), mutually orthogonal rows
        parent[module], new[module] = rows[:r_parent], rows[r_parent:]
    return parent, new


def test_penalty_is_zero_for_orthogonal_subspaces() -> None:
    parent, new = split_basis(4, 3)
    torch.testing.assert_close(orthogonal_penalty(new, parent), torch.tensor(0.0), atol=1e-10, rtol=0)


def test_penalty_is_the_squared_overlap_otherwise() -> None:
    parent, new = split_basis(4, 3)
    shared = {m: torch.cat([a, parent[m][:1]]) for m, a in new.items()}  # one parent direction reused

    penalty = orthogonal_penalty(shared, parent)

    expected = sum(float((parent[m][0] @ parent[m][0]) ** 2) for m in MODULES)  # only ⟨a_p0, a_p0⟩ ≠ 0
    torch.testing.assert_close(penalty, torch.tensor(expected), rtol=1e-5, atol=1e-6)
    g = torch.Generator().manual_seed(1)
    random_new = {m: torch.randn(2, f, generator=g) for m, f in MODULES.items()}
    brute = sum(
        float(torch.dot(p, n)) ** 2 for m in MODULES for p in parent[m] for n in random_new[m]
    )  # Σ_jk ⟨a_pj, a_nk⟩²
    assert float(orthogonal_penalty(random_new, parent)) == pytest.approx(brute, rel=1e-5)
    assert brute > 0


def test_gradient_flows_to_the_new_factors_only() -> None:
    g = torch.Generator().manual_seed(2)
    parent = {m: torch.randn(4, f, generator=g).requires_grad_(True) for m, f in MODULES.items()}
    new = {m: torch.randn(3, f, generator=g).requires_grad_(True) for m, f in MODULES.items()}

    orthogonal_penalty(new, parent).backward()

    for m in MODULES:
        expected = 2 * new[m] @ parent[m].T @ parent[m]  # ∂‖A_p A_nᵀ‖²/∂A_n = 2 A_n A_pᵀ A_p
        torch.testing.assert_close(new[m].grad, expected.detach(), rtol=1e-5, atol=1e-5)
        assert parent[m].grad is None


def test_modules_in_common_are_required() -> None:
    with pytest.raises(AdapterError, match="no module in common"):
        orthogonal_penalty({"a": torch.ones(1, 2)}, {"b": torch.ones(1, 2)})


def test_live_parameters_and_saved_factors_key_alike(tmp_path: Path, tiny_base: PreTrainedModel) -> None:
    path = save_random_adapter(tiny_base, tmp_path / "p", seed=1)
    model = PeftModel.from_pretrained(copy.deepcopy(tiny_base), str(path), is_trainable=True)
    _, state, _ = read_adapter(path)

    live = lora_a_matrices(lora_parameters(model))

    assert live.keys() == lora_a_matrices(state).keys()
    assert float(orthogonal_penalty(live, lora_a_matrices(state)).detach()) > 0


Tiny = tuple[PreTrainedModel, PreTrainedTokenizerFast]


@pytest.fixture(scope="module")
def tiny() -> Tiny:
    return tiny_model("llama", seed=0)


@pytest.fixture
def family(tmp_path: Path, tiny: Tiny) -> dict[str, Path]:
    """A parent (r4, α8, q/v), a child (r2, rsLoRA, q/k/v), and their served sum, all saved."""
    base, _ = tiny
    parent = save_random_adapter(base, tmp_path / "parent", seed=1, r=4, alpha=8.0)
    child = save_random_adapter(
        base,
        tmp_path / "child",
        seed=2,
        r=2,
        alpha=3.0,
        use_rslora=True,
        target_modules=["q_proj", "k_proj", "v_proj"],
    )
    config, state, card = served_sum(parent, child)
    return {"parent": parent, "child": child, "sum": write_adapter(tmp_path / "sum", config, state, card)}


def both_active(base: PreTrainedModel, family: dict[str, Path]) -> PeftModel:
    """PEFT with the parent and the child loaded and both applied in one forward pass."""
    model = PeftModel.from_pretrained(copy.deepcopy(base), str(family["parent"]), adapter_name="parent")
    model.load_adapter(str(family["child"]), adapter_name="child")
    model.base_model.set_adapter(["parent", "child"])
    return model.eval()


def input_ids() -> torch.Tensor:
    return torch.randint(3, 250, (3, 11), generator=torch.Generator().manual_seed(5))  # (B, T)


def test_served_sum_is_one_plain_adapter(family: dict[str, Path]) -> None:
    config, state, card = read_adapter(family["sum"])
    assert config.r == 6 and config.lora_alpha == 6 and not config.use_rslora
    assert set(config.target_modules) == {"q_proj", "k_proj", "v_proj"}
    assert card is not None and card.lineage.method == "continual:orthogonal"
    assert card.lineage.parents == [str(family["parent"]), str(family["child"])]
    assert all(key.endswith((".lora_A.weight", ".lora_B.weight")) for key in state)


def test_served_sum_equals_both_adapters_applied_together_in_peft(
    tiny: Tiny, family: dict[str, Path]
) -> None:
    base, _ = tiny
    ids = input_ids()
    with torch.no_grad():
        expected = both_active(base, family)(input_ids=ids).logits  # (B, T, V)
        summed = PeftModel.from_pretrained(copy.deepcopy(base), str(family["sum"])).eval()
        ours = summed(input_ids=ids).logits
        parent_only = PeftModel.from_pretrained(copy.deepcopy(base), str(family["parent"])).eval()
        assert not torch.allclose(parent_only(input_ids=ids).logits, expected, atol=1e-3), (
            "child should matter"
        )

    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_served_sum_through_the_serving_layer_equals_both_adapters(
    tiny: Tiny, family: dict[str, Path]
) -> None:
    base, _ = tiny
    ids = input_ids()
    model = copy.deepcopy(base)
    layers = wrap_linears(model, None)
    slots = AdapterSlots(layers)
    slot = slots.acquire("sum", load_lora(family["sum"], ref="sum"))
    next(iter(layers.values())).batch.route([slot] * ids.shape[0])
    with torch.no_grad():
        ours = model(input_ids=ids).logits  # (B, T, V)
        expected = both_active(base, family)(input_ids=ids).logits

    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_engine_greedy_tokens_of_the_sum_equal_both_adapters_merged(
    tiny: Tiny, family: dict[str, Path]
) -> None:
    base, tokenizer = tiny
    prompts = ["hello", "the quick brown fox", "x"]
    greedy = SamplingSettings(max_tokens=12)
    engine = Engine(copy.deepcopy(base), tokenizer, cache=make_cache(base, {"sum": family["sum"]}))
    merged_base = both_active(base, family).merge_and_unload(adapter_names=["parent", "child"])
    merged = Engine(merged_base, tokenizer, cache=make_cache(base, {}))
    plain = Engine(copy.deepcopy(base), tokenizer, cache=make_cache(base, {}))

    ours = engine.generate([Request(prompt=p, adapter="sum", sampling=greedy) for p in prompts])
    expected = merged.generate([Request(prompt=p, adapter=None, sampling=greedy) for p in prompts])
    without = plain.generate([Request(prompt=p, adapter=None, sampling=greedy) for p in prompts])

    assert [c.token_ids for c in ours] == [c.token_ids for c in expected]
    assert [c.token_ids for c in ours] != [c.token_ids for c in without], "the adapters should change tokens"
