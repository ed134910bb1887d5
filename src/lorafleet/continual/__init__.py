"""Continual learning: the strategies that keep a child version from forgetting what its parent learned.

`ContinualConfig` (the recipe's `continual:` section) imports no torch; the math (replay mixing, the EWC
penalty and Fisher, the O-LoRA penalty and served sum) is imported on first use, so validating a recipe
stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lorafleet.continual.config import ContinualConfig, Strategy

FISHER_FILE = "fisher.safetensors"  # EWC's diagonal Fisher of a version, kept beside its adapter files

if TYPE_CHECKING:
    from lorafleet.continual.ewc import (
        estimate_fisher,
        ewc_penalty,
        load_fisher,
        mean_token_loss,
        save_fisher,
    )
    from lorafleet.continual.orthogonal import orthogonal_penalty, served_sum
    from lorafleet.continual.parameters import lora_a_matrices, lora_parameters
    from lorafleet.continual.replay import Pool, mix_replay, mixed_pools, rows_per_step, steps_per_epoch

_LAZY = {
    "estimate_fisher": "ewc",
    "ewc_penalty": "ewc",
    "load_fisher": "ewc",
    "mean_token_loss": "ewc",
    "save_fisher": "ewc",
    "orthogonal_penalty": "orthogonal",
    "served_sum": "orthogonal",
    "lora_a_matrices": "parameters",
    "lora_parameters": "parameters",
    "Pool": "replay",
    "mix_replay": "replay",
    "mixed_pools": "replay",
    "rows_per_step": "replay",
    "steps_per_epoch": "replay",
}

__all__ = [
    "FISHER_FILE",
    "ContinualConfig",
    "Pool",
    "Strategy",
    "estimate_fisher",
    "ewc_penalty",
    "load_fisher",
    "lora_a_matrices",
    "lora_parameters",
    "mean_token_loss",
    "mix_replay",
    "mixed_pools",
    "orthogonal_penalty",
    "rows_per_step",
    "save_fisher",
    "served_sum",
    "steps_per_epoch",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"lorafleet.continual.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
