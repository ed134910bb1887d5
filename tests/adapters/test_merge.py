"""Merging: merged and unmerged outputs agree, unmerge restores the base, a merged directory stands alone."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from lorafleet.adapters import load_adapter
from lorafleet.adapters.merge import merge, save_merged, unmerge
from lorafleet.models import tiny_model
from tests.helpers import AdapterFactory


def test_merged_logits_equal_unmerged(
    tmp_path: Path, tiny_base: PreTrainedModel, tokens: torch.Tensor, make_adapter: AdapterFactory
) -> None:
    model = load_adapter(tiny_base, make_adapter(tiny_base, tmp_path / "a", target_modules="all-linear"))
    unmerged = model(tokens).logits
    merge(model)
    torch.testing.assert_close(model(tokens).logits, unmerged, atol=1e-5, rtol=0)


def test_merge_then_unmerge_restores_weights(
    tmp_path: Path, tiny_base: PreTrainedModel, make_adapter: AdapterFactory
) -> None:
    original = {k: v.clone() for k, v in tiny_base.state_dict().items()}
    model = load_adapter(tiny_base, make_adapter(tiny_base, tmp_path / "a"))
    weight = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
    merge(model)
    assert not torch.allclose(
        weight, original["model.layers.0.self_attn.q_proj.weight"]
    )  # merging changed it
    unmerge(model)
    restored = model.get_base_model().state_dict()
    for key, value in original.items():
        peft_key = key.replace("q_proj.", "q_proj.base_layer.").replace("v_proj.", "v_proj.base_layer.")
        torch.testing.assert_close(restored[peft_key], value, atol=1e-6, rtol=0)


def test_saved_merged_model_loads_in_transformers_alone(
    tmp_path: Path, tiny_base: PreTrainedModel, tokens: torch.Tensor, make_adapter: AdapterFactory
) -> None:
    _, tokenizer = tiny_model("llama")
    model = load_adapter(copy.deepcopy(tiny_base), make_adapter(tiny_base, tmp_path / "a"))
    expected = model(tokens).logits
    save_merged(model, tokenizer, tmp_path / "merged")

    standalone = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert not any("lora" in name for name, _ in standalone.named_parameters())
    torch.testing.assert_close(standalone(tokens).logits, expected, atol=1e-5, rtol=0)
