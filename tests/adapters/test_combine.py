"""Weighted combination: `cat` is the exact weighted sum of deltas, `svd` loses exactly the dropped energy."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import PreTrainedModel

from lorafleet.adapters import load_adapter
from lorafleet.adapters.combine import combine_adapters
from lorafleet.adapters.factors import lora_factors, lora_scale
from lorafleet.adapters.storage import read_adapter, write_adapter
from lorafleet.errors import AdapterError, BaseModelMismatchError, ConfigError
from lorafleet.models import tiny_model
from tests.helpers import AdapterFactory

WEIGHTS = [0.7, -0.4, 1.3]


@pytest.fixture
def three(tmp_path: Path, tiny_base: PreTrainedModel, make_adapter: AdapterFactory) -> list[str]:
    """Three adapters of ranks 2, 4, 8 with different alphas and one rsLoRA; the third also adapts k_proj."""
    return [
        str(make_adapter(tiny_base, tmp_path / "r2", seed=1, r=2, alpha=3.0)),
        str(make_adapter(tiny_base, tmp_path / "r4", seed=2, r=4, alpha=16.0, use_rslora=True)),
        str(
            make_adapter(
                tiny_base, tmp_path / "r8", seed=3, r=8, target_modules=["q_proj", "v_proj", "k_proj"]
            )
        ),
    ]


def deltas(path: str) -> dict[str, torch.Tensor]:
    """Module → s·B·A of the adapter at `path`."""
    config, state, _ = read_adapter(path)
    return {m: lora_scale(config) * b @ a for m, (a, b) in lora_factors(state).items()}


def weighted_sum(paths: list[str], weights: list[float]) -> dict[str, torch.Tensor]:
    total: dict[str, torch.Tensor] = {}
    for path, weight in zip(paths, weights, strict=True):
        for module, delta in deltas(path).items():
            total[module] = total.get(module, torch.zeros_like(delta)) + weight * delta
    return total


def test_cat_is_the_exact_weighted_sum_of_deltas(tmp_path: Path, three: list[str]) -> None:
    config, state, card = combine_adapters(three, WEIGHTS, method="cat")
    write_adapter(tmp_path / "cat", config, state, card)
    assert config.r == 2 + 4 + 8
    expected = weighted_sum(three, WEIGHTS)
    combined = deltas(str(tmp_path / "cat"))
    assert combined.keys() == expected.keys()
    for module in expected:
        torch.testing.assert_close(combined[module], expected[module], atol=1e-6, rtol=1e-5)
    assert card.lineage.parents == three and card.lineage.method == "combine:cat"


@pytest.mark.parametrize("rank", [1, 3, 8])
def test_svd_error_is_the_energy_of_dropped_singular_values(
    tmp_path: Path, three: list[str], rank: int
) -> None:
    config, state, card = combine_adapters(three, WEIGHTS, method="svd", rank=rank)
    write_adapter(tmp_path / "svd", config, state, card)
    assert config.r == rank
    expected = weighted_sum(three, WEIGHTS)
    combined = deltas(str(tmp_path / "svd"))
    for module, delta in expected.items():
        sigma = torch.linalg.svdvals(delta)
        error = torch.linalg.matrix_norm(delta - combined[module]) ** 2  # ‖ΔW − BA‖²_F
        torch.testing.assert_close(error, (sigma[rank:] ** 2).sum(), atol=1e-6, rtol=1e-4)


def test_svd_at_full_rank_is_exact(three: list[str]) -> None:
    _, state, _ = combine_adapters(three, WEIGHTS, method="svd", rank=14)
    expected = weighted_sum(three, WEIGHTS)
    for module, (a, b) in lora_factors(state).items():
        torch.testing.assert_close(b @ a, expected[module], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", ["cat", "svd"])
def test_matches_peft_add_weighted_adapter(
    tmp_path: Path,
    tiny_base: PreTrainedModel,
    make_adapter: AdapterFactory,
    tokens: torch.Tensor,
    method: str,
) -> None:
    paths = [make_adapter(tiny_base, tmp_path / f"a{i}", seed=i, r=4, alpha=4.0 + 4 * i) for i in range(2)]
    reference = PeftModel.from_pretrained(copy.deepcopy(tiny_base), str(paths[0]), adapter_name="a0")
    reference.load_adapter(str(paths[1]), adapter_name="a1")
    reference.add_weighted_adapter(
        ["a0", "a1"], [0.6, 0.9], adapter_name="mix", combination_type=method, svd_rank=8
    )
    reference.set_adapter("mix")

    config, state, card = combine_adapters([str(p) for p in paths], [0.6, 0.9], method=method, rank=8)
    ours = load_adapter(copy.deepcopy(tiny_base), write_adapter(tmp_path / "mix", config, state, card))
    torch.testing.assert_close(ours(tokens).logits, reference(tokens).logits, atol=1e-5, rtol=0)


def test_linear_of_one_adapter_is_that_adapter(three: list[str]) -> None:
    _, state, _ = combine_adapters(three[:1], [0.5], method="linear")
    expected = deltas(three[0])
    for module, (a, b) in lora_factors(state).items():
        torch.testing.assert_close(b @ a, 0.5 * expected[module], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method", ["ties", "dare_linear", "dare_ties"])
def test_task_vector_methods_give_the_target_rank(three: list[str], method: str) -> None:
    config, state, _ = combine_adapters(three, [1.0, 1.0, 1.0], method=method, rank=6, density=0.3, seed=7)
    assert config.r == 6
    assert all(a.shape[0] == 6 and b.shape[1] == 6 for a, b in lora_factors(state).values())
    again = combine_adapters(three, [1.0, 1.0, 1.0], method=method, rank=6, density=0.3, seed=7)[1]
    for key, value in state.items():  # same seed, same adapter
        torch.testing.assert_close(again[key], value)


def test_bad_requests_fail_clearly(three: list[str], tmp_path: Path, make_adapter: AdapterFactory) -> None:
    with pytest.raises(ConfigError, match="one weight per adapter"):
        combine_adapters(three, [1.0], method="cat")
    with pytest.raises(ConfigError, match="not one of"):
        combine_adapters(three, WEIGHTS, method="average")
    with pytest.raises(ConfigError, match="rank must be"):
        combine_adapters(three, WEIGHTS, method="svd", rank=0)
    with pytest.raises(ConfigError, match="one rank"):
        combine_adapters(three, WEIGHTS, method="linear")
    other, _ = tiny_model("llama", seed=5)
    foreign = make_adapter(other, tmp_path / "foreign")
    with pytest.raises(BaseModelMismatchError, match=r"module model\.embed_tokens"):
        combine_adapters([three[0], str(foreign)], [1.0, 1.0], method="cat")


@pytest.mark.parametrize(
    ("settings", "needle"),
    [({"use_dora": True}, "DoRA"), ({"modules_to_save": ["lm_head"]}, "modules_to_save")],
)
def test_adapters_that_do_not_add_are_refused(
    tmp_path: Path,
    tiny_base: PreTrainedModel,
    make_adapter: AdapterFactory,
    three: list[str],
    settings: dict[str, object],
    needle: str,
) -> None:
    odd = make_adapter(tiny_base, tmp_path / "odd", **settings)
    with pytest.raises(ConfigError, match=needle):
        combine_adapters([three[0], str(odd)], [1.0, 1.0], method="cat")


def test_adapters_of_unknown_base_are_refused(three: list[str]) -> None:
    for path in three:
        (Path(path) / "lorafleet.json").unlink()
    with pytest.raises(AdapterError, match="base model is unknown"):
        combine_adapters(three, WEIGHTS, method="cat")
