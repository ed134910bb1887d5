"""Autograd through lorafleet's (PEFT's) LoRA layer agrees with the closed-form LoRA gradients.

For y = W₀x + s·B·A·x and upstream gradient g = ∂L/∂y (rows are tokens, so in batch form X: n × in,
G: n × out): ∂L/∂A = s·Bᵀ·Gᵀ·X  and  ∂L/∂B = s·Gᵀ·(X·Aᵀ).
"""

from __future__ import annotations

import torch

from lorafleet.adapters import LoraSettings, attach
from lorafleet.models import tiny_model


def test_autograd_matches_lora_gradient_formulas() -> None:
    base, _ = tiny_model("llama", hidden_size=32)
    model = attach(base, LoraSettings(r=3, alpha=6, target_modules=["q_proj"], init="random"))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight  # (r, in), (out, r)
    s = layer.scaling["default"]
    assert s == 2.0

    x = torch.randn(5, 32)  # (n, in)
    y = layer(x)  # (n, out)
    target = torch.randn_like(y)
    loss = ((y - target) ** 2).sum()
    loss.backward()

    g = 2 * (y - target).detach()  # ∂L/∂y, (n, out)
    expected_a = s * b.detach().T @ g.T @ x  # (r, in)
    expected_b = s * g.T @ (x @ a.detach().T)  # (out, r)
    torch.testing.assert_close(a.grad, expected_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.grad, expected_b, atol=1e-5, rtol=1e-5)
    assert layer.base_layer.weight.grad is None  # the base stays frozen
