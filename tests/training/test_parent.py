"""`train` from a parent adapter: the child starts from the parent's exact weights, keeps its LoRA settings,
names it in its lineage, and a parent that does not fit fails before anything is written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from lorafleet.adapters import read_adapter
from lorafleet.continual import lora_parameters
from lorafleet.errors import BaseModelMismatchError, ConfigError, UnknownAdapterError
from lorafleet.models import tiny_model
from lorafleet.training import loop as training_loop
from lorafleet.training import train
from tests.helpers import save_random_adapter
from tests.training.conftest import RecipeFactory


def quiet(config: Any) -> Any:
    return train(config, show_progress=False, log=lambda _: None)


def lora_tensors_before_the_first_step(monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.Tensor]:
    """Filled, when training runs, with the trainable LoRA tensors as they are when step 1 begins."""
    seen: dict[str, torch.Tensor] = {}
    real_step = training_loop.optimizer_step

    def step(config: Any, accelerator: Any, model: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if not seen:
            seen.update({k: v.detach().clone() for k, v in lora_parameters(model).items()})
        return real_step(config, accelerator, model, *args, **kwargs)

    monkeypatch.setattr(training_loop, "optimizer_step", step)
    return seen


def test_a_child_starts_from_the_parents_exact_weights_and_then_moves(
    recipe: RecipeFactory, random_adapter: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, parent_state, _ = read_adapter(random_adapter)
    before = lora_tensors_before_the_first_step(monkeypatch)

    result = quiet(recipe("model.parent=rand", "output.name=child", "training.max_steps=2"))

    assert before.keys() == parent_state.keys()
    for key, tensor in parent_state.items():
        assert torch.equal(before[key], tensor), key
    _, child_state, _ = read_adapter(result.adapter_dir)
    assert child_state.keys() == parent_state.keys()
    assert any(not torch.equal(child_state[k], parent_state[k]) for k in parent_state)


def test_the_childs_lineage_names_its_parent_and_strategy(
    recipe: RecipeFactory, random_adapter: Path
) -> None:
    result = quiet(recipe(f"model.parent={random_adapter}", "output.name=child", "training.max_steps=1"))

    _, _, card = read_adapter(result.adapter_dir)
    assert card is not None
    assert card.lineage.parents == [str(random_adapter)]
    assert card.lineage.method == "continual:none"
    assert card.training is not None and card.training["model"]["parent"] == str(random_adapter)


def test_a_child_takes_the_parents_lora_settings(
    recipe: RecipeFactory, tiny_dir: Path, lorafleet_home: Path
) -> None:
    from lorafleet.models import load_base

    base, _ = load_base(str(tiny_dir), device="cpu")
    save_random_adapter(base, lorafleet_home / "adapters" / "wide", r=2, alpha=4.0, target_modules=["k_proj"])
    config = recipe("model.parent=wide", "output.name=child", "training.max_steps=1")
    config = config.model_copy(update={"lora": type(config.lora)()})  # a recipe with no lora: section

    result = quiet(config)

    child, _, _ = read_adapter(result.adapter_dir)
    assert (child.r, child.lora_alpha, set(child.target_modules)) == (2, 4, {"k_proj"})


def test_a_lora_field_that_differs_from_the_parent_is_named(
    recipe: RecipeFactory, random_adapter: Path
) -> None:
    with pytest.raises(ConfigError, match=r"lora\.r: 8 in the recipe, but parent rand has 4") as err:
        quiet(recipe("model.parent=rand", "output.name=child", "lora.r=8"))
    assert err.value.field == "lora.r"


def test_a_parent_of_another_base_fails_before_anything_is_written(
    recipe: RecipeFactory, lorafleet_home: Path
) -> None:
    other, _ = tiny_model("llama", seed=1)
    save_random_adapter(other, lorafleet_home / "adapters" / "other")

    with pytest.raises(BaseModelMismatchError, match=r"parent .*other was trained on base"):
        quiet(recipe("model.parent=other", "output.name=child"))

    assert not (lorafleet_home / "adapters" / "child").exists()
    assert not (lorafleet_home / "runs" / "child" / "metrics.jsonl").exists()


def test_an_unknown_parent_names_the_known_adapters(recipe: RecipeFactory, random_adapter: Path) -> None:
    with pytest.raises(UnknownAdapterError, match=r"unknown adapter 'nope'.*adapters in .*: rand"):
        quiet(recipe("model.parent=nope", "output.name=child"))
