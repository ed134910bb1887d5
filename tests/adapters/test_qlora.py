"""QLoRA on the CPU: the NF4 layer computes bitsandbytes' dequantize-then-matmul plus LoRA, and it trains."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from bitsandbytes.functional import dequantize_4bit

from lorafleet.adapters import LoraSettings, attach, load_adapter, save_adapter
from lorafleet.adapters.merge import merge
from lorafleet.errors import AdapterError
from lorafleet.models import tiny_model


def qlora_model() -> torch.nn.Module:
    base, _ = tiny_model("llama", hidden_size=64, intermediate_size=128)
    return attach(base, LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"], init="random"), "nf4")


def test_base_is_nf4_with_double_quantization() -> None:
    layer = qlora_model().base_model.model.model.layers[0].self_attn.q_proj.base_layer
    state = layer.weight.quant_state
    assert state.quant_type == "nf4"
    assert state.nested  # double quantization: the absmax values are quantized too
    assert layer.weight.dtype == torch.uint8


def test_forward_matches_bitsandbytes_dequantize_then_matmul() -> None:
    layer = qlora_model().base_model.model.model.layers[0].self_attn.q_proj
    base = layer.base_layer
    x = torch.randn(3, 5, 64)  # (B, T, in)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    w = dequantize_4bit(base.weight.data, base.weight.quant_state)  # (out, in), fp32
    expected = x @ w.T + layer.scaling["default"] * (x @ a.T) @ b.T
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_qlora_trains_on_cpu() -> None:
    model = qlora_model().train()
    tokens = torch.randint(0, 256, (2, 16))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(8):
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    frozen = [n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n]
    assert frozen == []


def test_qlora_adapter_reloads_onto_the_full_precision_base(tmp_path: Path) -> None:
    base, _ = tiny_model("llama", hidden_size=64, intermediate_size=128)
    model = attach(copy.deepcopy(base), LoraSettings(r=4, target_modules=["q_proj"], init="random"), "nf4")
    save_adapter(model, tmp_path / "q")  # identity taken before quantizing, so the fp32 base matches
    reloaded = load_adapter(copy.deepcopy(base), tmp_path / "q", quantization="nf4")
    tokens = torch.randint(0, 256, (2, 9))
    torch.testing.assert_close(reloaded(tokens).logits, model.eval()(tokens).logits, atol=1e-5, rtol=0)
    with pytest.raises(AdapterError, match="NF4"):
        merge(reloaded)
