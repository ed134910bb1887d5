"""Merging an adapter into its base (W = W₀ + s·BA), undoing it, and saving the merged model.

A merged model computes the same function as base + adapter with no LoRA overhead at inference;
saved with `save_merged` it is a standard HF model directory that transformers loads on its own.
"""

from __future__ import annotations

import os
from pathlib import Path

from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from lorafleet.errors import AdapterError, AlreadyExistsError
from lorafleet.files import atomic_directory


def merge(model: PeftModel) -> None:
    """Add the active adapter's s·BA into each adapted base weight, in place (reversible with `unmerge`)."""
    _require_full_precision(model)
    model.merge_adapter()


def unmerge(model: PeftModel) -> None:
    """Subtract what `merge` added, restoring the base weights (up to float rounding)."""
    model.unmerge_adapter()


def save_merged(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> Path:
    """Merge the adapter for good and write base + adapter as one HF model directory, atomically.

    `model` is consumed: its LoRA layers are removed.
    """
    _require_full_precision(model)
    target = Path(path)
    if target.exists() and not overwrite:  # checked before the model is consumed
        raise AlreadyExistsError(f"{target} already exists; choose another name or path, or overwrite it")
    merged = model.merge_and_unload()
    with atomic_directory(target, overwrite=overwrite) as staging:
        merged.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
    return target


def _require_full_precision(model: PeftModel) -> None:
    if any(getattr(p, "quant_state", None) is not None for p in model.parameters()):
        raise AdapterError(
            "merging into an NF4 base would re-quantize the merged weights and lose the adapter's precision; "
            "load the base in fp32 or bf16 to merge"
        )
