"""Training from a parent adapter (`lorafleet train --from`): the child starts from its exact weights.

The parent is an adapter name (under $LORAFLEET_HOME/adapters) or a directory. The child's LoRA takes the
parent's settings from its `adapter_config.json` (rank, alpha, targets, bias, rsLoRA, DoRA, modules_to_save),
so the parent's tensors fit it one to one; a recipe `lora:` field set to something else fails naming the
field. Only the dropout is the recipe's (it acts in training only). A parent trained on another base fails
with `BaseModelMismatchError` before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, set_peft_model_state_dict
from torch import nn

from lorafleet.adapters import attach
from lorafleet.adapters.attach import ADAPTER_NAME, Quantization
from lorafleet.adapters.identity import base_identity, check_same_base
from lorafleet.adapters.settings import LoraSettings
from lorafleet.adapters.storage import (
    CONFIG_FILE,
    AdapterCard,
    Lineage,
    adapter_path,
    adapters_dir,
    check_shapes,
    read_adapter,
)
from lorafleet.errors import AdapterError, ConfigError, UnknownAdapterError

# LoRA fields that shape the adapter's tensors or their meaning: a child must keep the parent's.
_INHERITED = ("r", "alpha", "target_modules", "bias", "use_rslora", "use_dora", "modules_to_save")


@dataclass(frozen=True)
class ParentAdapter:
    """A parent adapter as read from disk: where it is, its LoRA settings, its tensors and its card."""

    ref: str  # as the user named it
    path: Path
    settings: LoraSettings
    state: dict[str, torch.Tensor]  # PEFT-keyed, as in adapter_model.safetensors
    card: AdapterCard | None

    def lineage(self, strategy: str) -> Lineage:
        """The child's lineage: this parent, and `continual:<strategy>` as the method."""
        return Lineage(parents=[str(self.path)], method=f"continual:{strategy}")


def read_parent(ref: str) -> ParentAdapter:
    """Resolve `ref` (a name or a directory) and read the adapter there; `UnknownAdapterError` if none."""
    try:
        path = adapter_path(ref)
    except ConfigError as err:  # a name that cannot be a path
        raise UnknownAdapterError(f"model.parent: unknown adapter {ref!r} ({err})") from err
    if not path.is_dir():
        raise UnknownAdapterError(f"model.parent: unknown adapter {ref!r}: no directory {path}; {_known()}")
    try:
        config, state, card = read_adapter(path)
    except AdapterError as err:
        if (path / "config.json").is_file() and not (path / CONFIG_FILE).is_file():
            raise AdapterError(
                f"model.parent: {path} holds a full model (config.json, no {CONFIG_FILE}), such as "
                "`lorafleet adapters merge` writes, not a LoRA adapter; train from the adapter it was made "
                "from, or use it as the base (model.name, --model)"
            ) from err
        raise type(err)(f"model.parent: {err}") from err
    return ParentAdapter(ref=ref, path=path, settings=LoraSettings.from_peft(config), state=state, card=card)


def child_settings(parent: ParentAdapter, recipe: LoraSettings) -> LoraSettings:
    """The parent's LoRA settings with the recipe's dropout; `ConfigError` for a recipe field that differs."""
    for name in _INHERITED:
        if name not in recipe.model_fields_set:
            continue
        mine, theirs = getattr(recipe, name), getattr(parent.settings, name)
        if _normalised(mine) != _normalised(theirs):
            raise ConfigError(
                f"lora.{name}: {mine!r} in the recipe, but parent {parent.ref} has {theirs!r}; a child keeps "
                "its parent's LoRA settings: remove the field or set it to the parent's",
                field=f"lora.{name}",
            )
    # init "default": the parent's tensors replace whatever init made (PiSSA/OLoRA would change the base).
    return parent.settings.model_copy(update={"dropout": recipe.dropout, "init": "default"})


def attach_parent(
    model: nn.Module,
    parent: ParentAdapter,
    settings: LoraSettings,
    quantization: Quantization = None,
    *,
    gradient_checkpointing: bool = False,
) -> PeftModel:
    """Attach a trainable LoRA with `settings` to `model` and load `parent`'s tensors into it exactly.

    The base is checked first (`BaseModelMismatchError` naming the first module that differs), so a
    parent of another base fails before `model` is changed.
    """
    check_parent_fits(model, parent)
    peft_model = attach(model, settings, quantization, gradient_checkpointing=gradient_checkpointing)
    load_parent_tensors(peft_model, parent, ADAPTER_NAME)
    return peft_model


def check_parent_fits(model: nn.Module, parent: ParentAdapter) -> None:
    """`BaseModelMismatchError` (naming the first module that differs) or `AdapterError` when `parent` was
    not trained on `model`'s base; checked before `model` is changed."""
    if parent.card is not None:
        check_same_base(parent.card.base_model, base_identity(model), adapter=f"parent {parent.path}")
    check_shapes(model, parent.state, adapter=f"parent {parent.path}")


def load_parent_tensors(peft_model: PeftModel, parent: ParentAdapter, adapter_name: str) -> None:
    """Load `parent`'s tensors exactly into adapter `adapter_name`; `AdapterError` for a tensor that fits
    no LoRA layer of it, or a LoRA layer the parent has no tensor for."""
    loaded: Any = set_peft_model_state_dict(peft_model, parent.state, adapter_name=adapter_name)
    unexpected = [key for key in loaded.unexpected_keys if "lora_" in key]
    missing = [key for key in loaded.missing_keys if f".{adapter_name}." in key and "lora_" in key]
    if unexpected or missing:
        problem = f"tensor {unexpected[0]} fits no" if unexpected else f"it lacks {missing[0]} of the"
        raise AdapterError(
            f"parent {parent.path}: {problem} LoRA layer of adapter {adapter_name!r}; is it a LoRA adapter?"
        )


def _normalised(value: Any) -> Any:
    return sorted(value) if isinstance(value, list) else value


def _known() -> str:
    folder = adapters_dir()
    names = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    return f"adapters in {folder}: {', '.join(names)}" if names else f"no adapters in {folder}"
