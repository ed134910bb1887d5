from __future__ import annotations

import torch

from lorafleet.adapters import attach
from lorafleet.adapters.identity import base_identity
from lorafleet.adapters.settings import LoraSettings
from lorafleet.models import tiny_model
from lorafleet.training.precision import bf16_frozen_weights, restore_weights


def test_the_bf16_base_keeps_its_fp32_identity_and_gets_its_exact_weights_back() -> None:
    torch.manual_seed(0)
    model, _ = tiny_model("llama")
    original = {name: p.detach().clone() for name, p in model.named_parameters()}
    identity = base_identity(model)

    frozen = bf16_frozen_weights(model)
    peft_model = attach(model, LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))

    assert base_identity(peft_model) == identity  # the adapter will name the fp32 base
    assert all(p.dtype == torch.bfloat16 for p in frozen.values())
    lora = [p for n, p in peft_model.named_parameters() if "lora_" in n]
    assert lora and all(p.dtype == torch.float32 and p.requires_grad for p in lora)
    assert not torch.equal(
        frozen["model.layers.0.self_attn.q_proj.weight"].float(),
        original["model.layers.0.self_attn.q_proj.weight"],
    )

    reloaded, _ = tiny_model("llama")
    reloaded.load_state_dict(original)
    restore_weights(frozen, lambda: reloaded)

    base = peft_model.get_base_model()
    for name, value in original.items():
        restored = base.get_parameter(
            name.replace("q_proj.", "q_proj.base_layer.").replace("v_proj.", "v_proj.base_layer.")
        )
        assert restored.dtype == torch.float32 and torch.equal(restored, value), name
