"""`attach`: put a fresh LoRA adapter (or a QLoRA one, over an NF4 base) on a model through PEFT."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Literal

import torch
from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training
from torch import nn
from transformers.pytorch_utils import Conv1D

from lorafleet.adapters.identity import base_identity, remember_identity
from lorafleet.adapters.quantize import quantize_nf4
from lorafleet.adapters.settings import LoraSettings
from lorafleet.errors import ConfigError

Quantization = Literal["nf4"] | None
ADAPTER_NAME = "default"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParameterCount:
    """Trainable and total parameters of a model (4-bit weights counted as the values they stand for)."""

    trainable: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return (
            f"trainable params: {self.trainable:,} || all params: {self.total:,} "
            f"|| trainable%: {self.percent:.4f}"
        )


def attach(
    model: nn.Module,
    settings: LoraSettings,
    quantization: Quantization = None,
    *,
    gradient_checkpointing: bool = False,
) -> PeftModel:
    """Wrap `model` with a new trainable LoRA adapter described by `settings`.

    `model` itself is changed: PEFT replaces its target layers in place (and NF4 its linear layers),
    so keep a copy if the plain base is still needed.

    With `quantization="nf4"` the base's linear layers are first stored in NF4 with double quantization
    (QLoRA) and the adapters are kept in the model's compute dtype. The base identity (fingerprint) is
    taken before quantizing, so the adapter still matches the full-precision base. Target names that
    match nothing raise `ConfigError` listing the model's linear module names. The trainable and
    total parameter counts are logged; `count_parameters` returns them.
    """
    check_targets(model, settings)
    identity = base_identity(model)
    if quantization is not None:
        if quantization != "nf4":
            raise ConfigError(f"quantization {quantization!r} is not supported; use 'nf4' or none")
        compute_dtype = next(model.parameters()).dtype
        quantize_nf4(model, compute_dtype=compute_dtype, skip=("lm_head", *(settings.modules_to_save or ())))
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})  # type: ignore[operator]
        model.enable_input_require_grads()  # type: ignore[operator]
    peft_model = get_peft_model(model, settings.to_peft(), adapter_name=ADAPTER_NAME)
    remember_identity(peft_model, identity)
    logger.info("attached LoRA r=%d: %s", settings.r, count_parameters(peft_model))
    return peft_model


def count_parameters(model: nn.Module) -> ParameterCount:
    """Trainable and total parameters, counting each packed 4-bit weight as the values it holds."""
    trainable = total = 0
    for param in model.parameters():
        quant_state = getattr(param, "quant_state", None)
        count = int(torch.Size(quant_state.shape).numel()) if quant_state is not None else param.numel()
        total += count
        if param.requires_grad:
            trainable += count
    return ParameterCount(trainable=trainable, total=total)


def linear_module_names(model: nn.Module) -> list[str]:
    """The distinct short names of `model`'s linear layers (what `target_modules` may name)."""
    names = {
        name.split(".")[-1]
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear | Conv1D)
    }
    return sorted(names)


def check_targets(model: nn.Module, settings: LoraSettings) -> None:
    """Raise `ConfigError` if a target or modules_to_save name matches no module of `model`."""
    module_names = [name for name, _ in model.named_modules() if name]
    targets = settings.target_modules
    unmatched: list[str] = []
    if isinstance(targets, str) and targets != "all-linear":
        if not any(re.fullmatch(targets, name) for name in module_names):
            unmatched.append(targets)
    elif isinstance(targets, list):
        unmatched += [t for t in targets if not _matches(t, module_names)]
    field = "lora.target_modules" if unmatched else "lora.modules_to_save"
    unmatched += [m for m in settings.modules_to_save or () if not _matches(m, module_names)]
    if unmatched:
        raise ConfigError(
            f"target module {', '.join(repr(u) for u in unmatched)} matches no module of "
            f"{type(model).__name__}; its linear modules are: {', '.join(linear_module_names(model))}",
            field=field,
        )


def _matches(target: str, module_names: list[str]) -> bool:
    return any(name == target or name.endswith(f".{target}") for name in module_names)
