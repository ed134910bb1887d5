"""EWC: the penalty and its gradient equal their formulas; the Fisher of a tiny model is a mean of squared
gradients keyed like the saved adapter; `fisher.safetensors` round-trips and refuses bad files."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import save_file
from transformers import PreTrainedModel

from lorafleet.adapters import LoraSettings, attach, save_adapter
from lorafleet.continual import (
    FISHER_FILE,
    estimate_fisher,
    ewc_penalty,
    load_fisher,
    lora_parameters,
    mean_token_loss,
    save_fisher,
)
from lorafleet.errors import AdapterError, CorruptFileError

SHAPES = {"layer.0.lora_A.weight": (4, 16), "layer.0.lora_B.weight": (24, 4), "layer.1.lora_A.weight": (2, 8)}


def random_dicts(seed: int = 0) -> tuple[dict[str, torch.Tensor], ...]:
    g = torch.Generator().manual_seed(seed)
    theta = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    anchor = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    fisher = {k: torch.rand(s, generator=g) for k, s in SHAPES.items()}
    return theta, anchor, fisher


def test_penalty_equals_its_formula() -> None:
    theta, anchor, fisher = random_dicts()
    lam = 3.7
    expected = sum(float((fisher[k] * (theta[k] - anchor[k]) ** 2).sum()) for k in SHAPES) * lam / 2

    penalty = ewc_penalty(theta, anchor, fisher, lam)

    assert penalty.ndim == 0
    torch.testing.assert_close(penalty, torch.tensor(expected), rtol=1e-6, atol=1e-6)
    assert float(ewc_penalty(anchor, anchor, fisher, lam)) == 0.0


def test_penalty_gradient_is_lambda_fisher_drift() -> None:
    theta, anchor, fisher = random_dicts(1)
    params = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
    lam = 0.8

    ewc_penalty(params, anchor, fisher, lam).backward()

    for key, param in params.items():
        torch.testing.assert_close(param.grad, lam * fisher[key] * (theta[key] - anchor[key]))


def test_penalty_names_a_key_the_parameters_lack() -> None:
    theta, anchor, fisher = random_dicts()
    del theta["layer.1.lora_A.weight"]
    with pytest.raises(AdapterError, match=r"layer\.1\.lora_A\.weight"):
        ewc_penalty(theta, anchor, fisher, 1.0)


def lora_model(base: PreTrainedModel, init: str = "random") -> PeftModel:
    settings = LoraSettings(r=4, target_modules=["q_proj", "v_proj"], init=init)
    return attach(copy.deepcopy(base), settings)


def batches(count: int = 3) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(count):
        input_ids = torch.randint(3, 250, (2, 9), generator=g)  # (B, T)
        labels = input_ids.clone()
        labels[:, :4] = -100  # a masked prompt
        out.append({"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels})
    return out


def test_fisher_is_the_mean_squared_gradient_keyed_like_the_saved_adapter(tiny_base: PreTrainedModel) -> None:
    model = lora_model(tiny_base).train()

    fisher = estimate_fisher(model, batches())

    assert fisher.keys() == get_peft_model_state_dict(model).keys()
    reference = {key: torch.zeros_like(p) for key, p in lora_parameters(model).items()}
    model.eval()
    for batch in batches():
        model.zero_grad()
        mean_token_loss(model, batch).backward()
        for key, p in lora_parameters(model).items():
            reference[key] += p.grad**2 / 3
    for key, value in fisher.items():
        assert value.dtype == torch.float32 and value.device.type == "cpu"
        assert bool((value >= 0).all()) and bool((value > 0).any()), key
        torch.testing.assert_close(value, reference[key], rtol=1e-4, atol=1e-12)


def test_estimating_leaves_the_model_as_it_was(tiny_base: PreTrainedModel) -> None:
    model = lora_model(tiny_base).train()
    params = lora_parameters(model)
    next(iter(params.values())).requires_grad_(False)
    flags = {key: p.requires_grad for key, p in params.items()}

    estimate_fisher(model, batches(1))

    assert model.training
    assert {key: p.requires_grad for key, p in params.items()} == flags
    assert all(p.grad is None for p in model.parameters())


def test_fisher_is_zero_where_no_gradient_arrives(tiny_base: PreTrainedModel) -> None:
    model = lora_model(tiny_base, init="default")  # B = 0, so ∂ℓ/∂A = 0 exactly
    unused = torch.nn.Parameter(torch.ones(3, 3))

    fisher = estimate_fisher(model, batches(2), {**lora_parameters(model), "unused.weight": unused})

    for key, value in fisher.items():
        if ".lora_A." in key or key == "unused.weight":
            assert bool((value == 0).all()), key
        else:
            assert bool((value > 0).any()), key


@pytest.fixture
def parent(tmp_path: Path, tiny_base: PreTrainedModel) -> tuple[Path, dict[str, torch.Tensor]]:
    """A saved random adapter and its estimated Fisher."""
    model = lora_model(tiny_base)
    return save_adapter(model, tmp_path / "parent"), estimate_fisher(model, batches(2))


def test_fisher_round_trips_beside_the_adapter(parent: tuple[Path, dict[str, torch.Tensor]]) -> None:
    folder, fisher = parent

    path = save_fisher(folder, fisher)

    assert path == folder / FISHER_FILE
    loaded = load_fisher(folder)
    assert loaded.keys() == fisher.keys()
    for key in fisher:
        torch.testing.assert_close(loaded[key], fisher[key], rtol=0, atol=0)
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == [], "no staging file left"


def test_a_truncated_fisher_is_a_corrupt_file_named(parent: tuple[Path, dict[str, torch.Tensor]]) -> None:
    folder, fisher = parent
    path = save_fisher(folder, fisher)
    path.write_bytes(path.read_bytes()[:-40])

    with pytest.raises(CorruptFileError, match=FISHER_FILE):
        load_fisher(folder)


def test_a_fisher_of_another_adapter_is_refused(parent: tuple[Path, dict[str, torch.Tensor]]) -> None:
    folder, fisher = parent
    key = next(iter(fisher))
    with pytest.raises(AdapterError, match=f"lacks {key}"):
        save_fisher(folder, {k: v for k, v in fisher.items() if k != key})
    save_file({**fisher, key: torch.zeros(1, 2)}, str(folder / FISHER_FILE))
    with pytest.raises(AdapterError, match=rf"{FISHER_FILE}: {key} has shape \(1, 2\)"):
        load_fisher(folder)
    with pytest.raises(AdapterError, match="not writing"):
        save_fisher(folder, {**fisher, key: -fisher[key] - 1})
    save_file({**fisher, key: -fisher[key] - 1}, str(folder / FISHER_FILE))
    with pytest.raises(CorruptFileError, match="negative or non-finite"):
        load_fisher(folder)


def test_a_missing_fisher_says_how_to_make_one(parent: tuple[Path, dict[str, torch.Tensor]]) -> None:
    folder, _ = parent
    with pytest.raises(AdapterError, match="no Fisher stored with this adapter"):
        load_fisher(folder)
