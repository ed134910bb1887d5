"""`train --from` with `continual.strategy: orthogonal`: the frozen parent and a new adapter act together, the
model starts as the parent alone, only the new adapter moves, the penalty keeps its A away from the parent's,
and the version saved is one plain LoRA equal to parent + new adapter."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel

from lorafleet.adapters import LoraSettings, read_adapter
from lorafleet.continual import ContinualConfig
from lorafleet.errors import ConfigError
from lorafleet.models import load_base
from lorafleet.training import TrainResult, train
from lorafleet.training import loop as training_loop
from lorafleet.training.orthogonal import (
    NEW_ADAPTER_DIR,
    PARENT_ADAPTER,
    attach_orthogonal,
    new_adapter_settings,
)
from lorafleet.training.parent import read_parent
from tests.helpers import save_random_adapter
from tests.training.conftest import RecipeFactory

ORTHOGONAL = ("continual.strategy=orthogonal", "model.parent=rand", "output.name=child")


def quiet(config: Any, **kwargs: Any) -> TrainResult:
    return train(config, show_progress=False, log=lambda _: None, **kwargs)


def input_ids() -> torch.Tensor:
    return torch.randint(3, 250, (2, 9), generator=torch.Generator().manual_seed(5))  # (B, T)


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=input_ids()).logits  # (B, T, V)


def both_active(tiny_dir: Path, parent: Path, new: Path) -> PeftModel:
    """PEFT with the parent and the new adapter loaded from disk, both applied in one forward pass."""
    base, _ = load_base(str(tiny_dir), device="cpu")
    model = PeftModel.from_pretrained(base, str(parent), adapter_name="parent")
    model.load_adapter(str(new), adapter_name="new")
    model.base_model.set_adapter(["parent", "new"])
    return model


def test_the_model_starts_as_the_parent_and_only_the_new_adapter_moves(
    recipe: RecipeFactory, tiny_dir: Path, random_adapter: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}
    real_step = training_loop.optimizer_step

    def step(config: Any, accelerator: Any, model: Any, optimizer: Any, *args: Any, **kwargs: Any) -> Any:
        if not seen:
            seen["model"], seen["logits"] = model, logits(model)
            seen["optimized"] = {id(p) for group in optimizer.param_groups for p in group["params"]}
        return real_step(config, accelerator, model, optimizer, *args, **kwargs)

    monkeypatch.setattr(training_loop, "optimizer_step", step)
    base, _ = load_base(str(tiny_dir), device="cpu")
    parent_alone = logits(PeftModel.from_pretrained(base, str(random_adapter)))

    # fp32 steps: on a CPU with bf16 instructions `auto` would hold the base in bf16 for them
    quiet(recipe(*ORTHOGONAL, "training.max_steps=3", "training.mixed_precision=no"))

    torch.testing.assert_close(seen["logits"], parent_alone, atol=1e-6, rtol=0)
    model: PeftModel = seen["model"]
    _, parent_state, _ = read_adapter(random_adapter)
    parent_params = {n: p for n, p in model.named_parameters() if f".{PARENT_ADAPTER}." in n}
    assert len(parent_params) == len(parent_state)
    for name, param in parent_params.items():
        assert not param.requires_grad and id(param) not in seen["optimized"], name
        saved = name.replace(f".{PARENT_ADAPTER}.", ".")
        assert torch.equal(param.detach(), parent_state[saved]), name
    new_b = [p for n, p in model.named_parameters() if ".lora_B.default." in n]
    assert new_b and all(id(p) in seen["optimized"] for p in new_b)
    assert any(bool(p.detach().abs().sum() > 0) for p in new_b), "the new adapter should have moved"


def test_the_version_is_one_plain_lora_equal_to_parent_plus_new_adapter(
    recipe: RecipeFactory, tiny_dir: Path, lorafleet_home: Path
) -> None:
    base, _ = load_base(str(tiny_dir), device="cpu")
    parent = save_random_adapter(base, lorafleet_home / "adapters" / "rand", r=2, alpha=4.0)

    result = quiet(recipe(*ORTHOGONAL, "continual.orthogonal_r=3", "lora.r=3", "training.max_steps=3"))

    config, state, card = read_adapter(result.adapter_dir)
    assert config.r == 2 + 3 and not config.use_rslora
    assert all(key.endswith((".lora_A.weight", ".lora_B.weight")) for key in state)
    assert card is not None and card.name == "child"
    assert card.lineage.parents == [str(parent)] and card.lineage.method == "continual:orthogonal"
    assert card.training is not None and card.training["continual"]["strategy"] == "orthogonal"
    new = result.run_dir / NEW_ADAPTER_DIR
    assert read_adapter(new)[0].r == 3
    base, _ = load_base(str(tiny_dir), device="cpu")
    served = logits(PeftModel.from_pretrained(base, str(result.adapter_dir)))
    expected = logits(both_active(tiny_dir, parent, new))
    torch.testing.assert_close(served, expected, atol=1e-5, rtol=0)
    base, _ = load_base(str(tiny_dir), device="cpu")
    assert not torch.allclose(logits(PeftModel.from_pretrained(base, str(parent))), served, atol=1e-4)


def test_a_large_lambda_keeps_the_new_subspace_away_from_the_parents(
    recipe: RecipeFactory, random_adapter: Path
) -> None:
    def overlap(lam: str, name: str) -> float:
        settings = ("training.max_steps=10", "training.learning_rate=3e-2")
        settings += (f"continual.orthogonal_lambda={lam}",)
        return float(quiet(recipe(*ORTHOGONAL[:2], f"output.name={name}", *settings)).summary["overlap"])

    free, held = overlap("1e-8", "free"), overlap("1e3", "held")

    assert held < 0.02 * free, (held, free)  # about 1/100 on the tiny llama


def test_resume_continues_with_the_same_losses(recipe: RecipeFactory, random_adapter: Path) -> None:
    settings = (*ORTHOGONAL[:2], "training.max_steps=4", "training.checkpoint_steps=2")
    straight: list[float] = []
    quiet(recipe(*settings, "output.name=straight"), on_step=lambda r: straight.append(r["loss"]))
    killed = recipe(*settings, "output.name=killed")

    def stop(record: dict[str, Any]) -> None:
        if record["step"] == 3:
            raise RuntimeError("stopped by the test")

    with pytest.raises(RuntimeError):
        quiet(killed, on_step=stop)
    after: list[float] = []
    result = quiet(killed, resume=True, on_step=lambda r: after.append(r["loss"]))

    assert result.summary["steps"] == 4
    torch.testing.assert_close(torch.tensor(after), torch.tensor(straight[2:]), rtol=1e-5, atol=0)
    assert read_adapter(result.adapter_dir)[0].r == 8


def test_qlora_trains_the_new_adapter_beside_the_frozen_parent(
    recipe: RecipeFactory, random_adapter: Path
) -> None:
    result = quiet(recipe(*ORTHOGONAL, "quantization.method=nf4", "training.max_steps=2"))

    config, _, card = read_adapter(result.adapter_dir)
    assert config.r == 8 and card is not None and card.lineage.method == "continual:orthogonal"


def test_new_adapter_settings_take_the_parents_unless_the_recipe_says(
    tiny_dir: Path, random_adapter: Path
) -> None:
    parent = read_parent("rand")
    continual = ContinualConfig(strategy="orthogonal", orthogonal_r=2)

    plain = new_adapter_settings(parent, LoraSettings(dropout=0.1), continual)
    chosen = new_adapter_settings(parent, LoraSettings(alpha=2.0, target_modules=["q_proj"]), continual)
    unset = ContinualConfig(strategy="orthogonal")

    assert (plain.r, plain.alpha, plain.target_modules, plain.dropout) == (2, 16.0, ["q_proj", "v_proj"], 0.1)
    assert (chosen.r, chosen.alpha, chosen.target_modules) == (2, 2.0, ["q_proj"])
    assert new_adapter_settings(parent, LoraSettings(), unset).r == parent.settings.r
    assert new_adapter_settings(parent, LoraSettings(r=3), unset).r == 3  # a chain keeps the recipe's rank


@pytest.mark.parametrize(
    ("recipe_lora", "parent_lora", "field", "needle"),
    [
        ({"r": 8}, {}, "lora.r", "continual.orthogonal_r sets the new adapter's rank to 4"),
        ({"init": "pissa"}, {}, "lora.init", "does not start the new adapter at zero"),
        ({"use_dora": True}, {}, "lora.use_dora", "cannot be summed"),
        ({}, {"use_dora": True}, "continual.strategy", "uses DoRA"),
    ],
)
def test_what_cannot_be_summed_is_refused_naming_the_field(
    tiny_dir: Path,
    lorafleet_home: Path,
    recipe_lora: dict[str, Any],
    parent_lora: dict[str, Any],
    field: str,
    needle: str,
) -> None:
    base, _ = load_base(str(tiny_dir), device="cpu")
    save_random_adapter(base, lorafleet_home / "adapters" / "p", **parent_lora)
    continual = ContinualConfig(strategy="orthogonal", orthogonal_r=4)

    with pytest.raises(ConfigError, match=needle) as err:
        new_adapter_settings(read_parent("p"), LoraSettings(**recipe_lora), continual)
    assert err.value.field == field


def test_targets_with_nothing_in_common_fail_before_anything_is_written(
    recipe: RecipeFactory, random_adapter: Path, lorafleet_home: Path
) -> None:
    with pytest.raises(ConfigError, match="none of the modules") as err:
        quiet(recipe(*ORTHOGONAL, "lora.target_modules=[k_proj]"))

    assert err.value.field == "lora.target_modules"
    assert not (lorafleet_home / "adapters" / "child").exists()


def test_the_penalty_reads_the_live_new_factors_against_the_parents(
    tiny_dir: Path, random_adapter: Path
) -> None:
    base, _ = load_base(str(tiny_dir), device="cpu")
    parent = read_parent("rand")
    settings = new_adapter_settings(parent, LoraSettings(), ContinualConfig(strategy="orthogonal"))

    _, subspace = attach_orthogonal(copy.deepcopy(base), parent, settings, lam=1.0)

    assert subspace.new_a.keys() == subspace.parent_a.keys()
    assert float(subspace.overlap().detach()) > 0
    assert all(a.requires_grad for a in subspace.new_a.values())
