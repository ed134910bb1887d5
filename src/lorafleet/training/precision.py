"""Which precision and attention kernel a run trains in, and the frozen base held in bf16 while a CPU
trains in bf16.

    mixed_precision      `training.mixed_precision` resolved on the device: `auto` is bf16 where the
                         hardware computes it natively (a CUDA GPU that supports it, a CPU with
                         AVX512-BF16 or AMX), fp16 on other GPUs, fp32 elsewhere
    accelerator_for      accelerate's `Accelerator` in that precision, also after a run in another one
    bf16_frozen_weights  on such a CPU the base's frozen weights are cast to bf16 for the steps: oneDNN
                         then multiplies bf16 by bf16 without casting a weight at every call, the weights
                         take half the memory, and so do the activations the backward pass keeps. The
                         LoRA weights stay fp32 (PEFT upcasts adapters), so AdamW updates fp32 values
    restore_weights      after the steps the base's exact fp32 weights are loaded back, so the adapter
                         is scored (and saved, fingerprinted) against the same base it is served on
    use_attention        `training.attention` resolved on the device and set on the base: `auto` is
                         eager attention that recomputes its probabilities in the backward pass
                         (`training.attention`'s module) on a CPU for rows of at most 512 tokens (eager
                         runs a step of the default model, batch 9 of 165 tokens, 18% faster in bf16,
                         6% in fp32, than sdpa, whose CPU flash kernel is slow backward; at 1024 tokens
                         sdpa is faster), else the model's own

A base loaded in a dtype the recipe names (`model.dtype`) is left as it is, and so is a quantized one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lorafleet.adapters.identity import base_identity, remember_identity
from lorafleet.errors import ConfigError
from lorafleet.training.attention import register as register_recomputed_eager
from lorafleet.training.config import EAGER_CPU_MAX_LENGTH, FinetuneConfig


def mixed_precision(config: FinetuneConfig, device: torch.device) -> str:
    """The autocast precision (`no`, `bf16`, `fp16`) of `config` on `device`; an asked precision the
    device cannot run is a `ConfigError` naming the field."""
    choice = config.training.mixed_precision
    if choice == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if device.type == "cpu" and cpu_has_bf16() else "no"
    if choice == "no" or device.type == "cuda":
        return choice
    if choice == "bf16" and device.type == "cpu" and cpu_has_bf16():
        return choice
    raise ConfigError(
        f"training.mixed_precision: {choice} needs a CUDA device"
        + (" or a CPU with bf16 instructions (AVX512-BF16 or AMX)" if choice == "bf16" else "")
        + f" (running on {device})"
    )


def accelerator_for(device: torch.device, precision: str, **options: Any) -> Any:
    """An `accelerate.Accelerator` on `device` in `precision` (`options` passed on). accelerate keeps
    one process-wide state and refuses a second precision in the same process, so a state left by an
    earlier run in another precision is reset first (the distributed process-group state is kept)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and str(state.get("_mixed_precision", precision)) != precision:
        AcceleratorState._reset_state()
    return Accelerator(cpu=device.type == "cpu", mixed_precision=precision, **options)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 matmuls in hardware (oneDNN's own check: AVX512-BF16 or AMX)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def trains_base_in_bf16(config: FinetuneConfig, device: torch.device, precision: str) -> bool:
    """Whether the frozen base is held in bf16 for the steps (see the module docstring)."""
    return (
        precision == "bf16"
        and device.type == "cpu"
        and config.model.dtype is None
        and config.quantization.method == "none"
    )


FrozenWeights = dict[str, nn.Parameter]


def bf16_frozen_weights(model: nn.Module) -> FrozenWeights:
    """Cast `model`'s fp32 parameters to bf16 in place, before an adapter is attached; returns them by
    name for `restore_weights`. The base's identity is taken first, so the adapter records the fp32 base
    it will be served on."""
    remember_identity(model, base_identity(model))
    frozen = {name: p for name, p in model.named_parameters() if p.dtype == torch.float32}
    for parameter in frozen.values():
        parameter.data = parameter.data.to(torch.bfloat16)
    return frozen


def restore_weights(frozen: FrozenWeights, reload: Callable[[], nn.Module]) -> None:
    """Put back the exact weights of `frozen` from a fresh load of the base (`reload`): the same
    parameter objects, now holding the loaded values, wherever an adapter has wrapped them."""
    if not frozen:
        return
    fresh = dict(reload().named_parameters())
    for name, parameter in frozen.items():
        parameter.data = fresh[name].data


def use_attention(model: Any, config: FinetuneConfig, device: torch.device) -> str:
    """Set the attention kernel `model` (a transformers model) trains with (see the module docstring)
    and return its name; `auto` off a CPU, or for longer rows, leaves the model's own."""
    choice: str = config.training.attention
    if choice == "auto":
        if device.type != "cpu" or config.data.max_length > EAGER_CPU_MAX_LENGTH:
            return str(model.config._attn_implementation)
        choice = register_recomputed_eager()
    model.set_attn_implementation(choice)
    return choice
