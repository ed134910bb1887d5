"""An adapter's tensors as LoRA math: the factors (A, B) of each adapted module and the scale s.

Each adapted module computes ΔW·x = s·B·A·x with A: r × in, B: out × r, and s = α/r (α/√r with rsLoRA).
"""

from __future__ import annotations

import math

import torch
from peft import LoraConfig

from lorafleet.errors import AdapterError

Factors = tuple[torch.Tensor, torch.Tensor]  # A (r, in), B (out, r)


def lora_scale(config: LoraConfig) -> float:
    """s = α/r, or α/√r with rsLoRA."""
    return config.lora_alpha / (math.sqrt(config.r) if config.use_rslora else config.r)


def lora_factors(state: dict[str, torch.Tensor]) -> dict[str, Factors]:
    """Module name → (A, B) from a PEFT-keyed adapter state dict, in fp32."""
    factors: dict[str, Factors] = {}
    for key, a in sorted(state.items()):  # sorted: the same module order however the file was written
        if key.endswith(".lora_A.weight"):
            module = key.removesuffix(".lora_A.weight")
            b_key = f"{module}.lora_B.weight"
            if b_key not in state:
                raise AdapterError(f"adapter has {key} but not {b_key}")
            factors[module] = (a.float(), state[b_key].float())
    return factors
