"""The live LoRA parameters of a PEFT model, keyed as in its saved state dict (`adapter_model.safetensors`).

PEFT names a parameter `…q_proj.lora_A.<adapter>.weight` in the model and saves it as `…q_proj.lora_A.weight`;
keying the live parameters the saved way lets the penalties compare them with a stored parent directly.
"""

from __future__ import annotations

import torch
from torch import nn

from lorafleet.adapters.attach import ADAPTER_NAME
from lorafleet.errors import AdapterError


def lora_parameters(model: nn.Module, adapter_name: str = ADAPTER_NAME) -> dict[str, nn.Parameter]:
    """PEFT state-dict key → the `lora_A`/`lora_B` parameter of adapter `adapter_name` (autograd intact)."""
    params: dict[str, nn.Parameter] = {}
    for name, param in model.named_parameters():
        for factor in ("lora_A", "lora_B"):
            infix = f".{factor}.{adapter_name}."
            if infix in name:
                params[name.replace(infix, f".{factor}.")] = param
    if not params:
        raise AdapterError(f"the model holds no LoRA parameters of adapter {adapter_name!r}")
    return params


def lora_a_matrices(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Module name → its A factor (r, in), from a PEFT-keyed state dict (saved or `lora_parameters`)."""
    return {
        key.removesuffix(".lora_A.weight"): tensor
        for key, tensor in state.items()
        if key.endswith(".lora_A.weight")
    }
