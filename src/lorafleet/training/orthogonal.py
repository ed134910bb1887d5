"""O-LoRA in training (`continual.strategy: orthogonal`): a frozen parent, a new adapter kept out of its way.

The model holds two LoRA adapters on one base (PEFT multi-adapter, both active): the parent's, named
`parent`, loaded exactly and frozen (no gradient, not in the optimizer), and a new one, `default`, that is
the only thing trained. Each adapted layer computes

    y = W₀x + sₚBₚAₚx + sₙBₙAₙx,      Bₙ = 0 at the start, so the model begins as the parent alone

and each optimizer step adds λ·Σ_modules ‖Aₚ·Aₙᵀ‖²_F (`continual.orthogonal_penalty`, λ the recipe's
`continual.orthogonal_lambda`) to the mean token loss.

The new adapter: rank `continual.orthogonal_r`, else the recipe's `lora.r` when it sets one, else the
parent's rank (a parent that is itself a sum holds every stage's rank, so a chain keeps the recipe's rank
per stage; `lora.r` and `orthogonal_r` both set must agree); targets the recipe's `lora.target_modules`
when the recipe sets them (at least one module in common with the parent's, or there is no overlap to
penalise), else the parent's; alpha the recipe's `lora.alpha` when set, else the parent's; dropout and
rsLoRA the recipe's. The parent runs without dropout.

The version saved is the served sum, one plain LoRA adapter of rank rₚ + rₙ (`continual.served_sum`): the new
adapter alone is kept in the run directory (`new_adapter/`), and the sum is written to the adapter
directory, its lineage naming the parent and `continual:orthogonal`. Checkpoints hold the new adapter only;
`--resume` reloads the parent from `model.parent`, so a run resumes exactly while the parent is unchanged.
DoRA, `modules_to_save` and trained biases do not add up into one LoRA adapter and are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from torch import nn

from lorafleet.adapters import attach
from lorafleet.adapters.attach import ADAPTER_NAME, Quantization
from lorafleet.adapters.settings import LoraSettings
from lorafleet.adapters.storage import save_adapter, write_adapter
from lorafleet.continual.config import ContinualConfig
from lorafleet.continual.orthogonal import orthogonal_penalty, served_sum
from lorafleet.continual.parameters import lora_a_matrices, lora_parameters
from lorafleet.errors import ConfigError
from lorafleet.training.parent import ParentAdapter, check_parent_fits, load_parent_tensors

PARENT_ADAPTER = "parent"  # the frozen parent's name inside the PEFT model; the new adapter is ADAPTER_NAME
NEW_ADAPTER_DIR = "new_adapter"  # the new adapter alone, in the run directory


@dataclass(frozen=True)
class OrthogonalSubspace:
    """The new adapter's live A factors, the parent's A factors they are kept orthogonal to, and λ."""

    new_a: dict[str, torch.Tensor]  # module → Aₙ (r_new, in), autograd intact
    parent_a: dict[str, torch.Tensor]  # module → Aₚ (r_parent, in), on the model's device
    lam: float

    def overlap(self) -> torch.Tensor:
        """Σ ‖Aₚ·Aₙᵀ‖²_F over the modules both adapt (a 0-d fp32 tensor)."""
        return orthogonal_penalty(self.new_a, self.parent_a)

    def penalty(self) -> torch.Tensor:
        """λ · the overlap, differentiable in the new adapter's A factors."""
        return self.lam * self.overlap()


def new_adapter_settings(
    parent: ParentAdapter, recipe: LoraSettings, continual: ContinualConfig
) -> LoraSettings:
    """The new adapter's LoRA settings (see the module docstring); `ConfigError` for what cannot be summed."""
    _check_summable(parent, recipe)
    given = recipe.model_fields_set
    rank = continual.orthogonal_r or (recipe.r if "r" in given else parent.settings.r)
    if "r" in given and recipe.r != rank:
        raise ConfigError(
            f"lora.r: {recipe.r} in the recipe, but continual.orthogonal_r sets the new adapter's rank to "
            f"{rank}; set one of them",
            field="lora.r",
        )
    if recipe.init not in ("default", "gaussian"):
        raise ConfigError(
            f"lora.init: {recipe.init} does not start the new adapter at zero (B = 0), so the child "
            "would not begin as its parent; use default or gaussian with strategy orthogonal",
            field="lora.init",
        )
    return recipe.model_copy(
        update={
            "r": rank,
            "alpha": recipe.alpha if "alpha" in given else parent.settings.alpha,
            "target_modules": recipe.target_modules
            if "target_modules" in given
            else parent.settings.target_modules,
        }
    )


def attach_orthogonal(
    model: nn.Module,
    parent: ParentAdapter,
    settings: LoraSettings,
    *,
    lam: float,
    quantization: Quantization = None,
    gradient_checkpointing: bool = False,
) -> tuple[PeftModel, OrthogonalSubspace]:
    """Attach the new trainable adapter (`settings`) and the frozen parent to `model`, both active.

    The base is checked first (`BaseModelMismatchError`), so a parent of another base fails before `model`
    is changed. The parent's tensors are loaded exactly; a tensor that fits no layer is an `AdapterError`.
    """
    check_parent_fits(model, parent)
    peft_model = attach(model, settings, quantization, gradient_checkpointing=gradient_checkpointing)
    frozen = parent.settings.model_copy(update={"dropout": 0.0, "init": "default"})
    peft_model.add_adapter(PARENT_ADAPTER, frozen.to_peft())
    load_parent_tensors(peft_model, parent, PARENT_ADAPTER)
    # Both adapters act in the forward pass; PEFT marks every active adapter trainable, so freeze the parent.
    lora_model: Any = peft_model.base_model
    lora_model.set_adapter([ADAPTER_NAME, PARENT_ADAPTER])
    for name, param in peft_model.named_parameters():
        if f".{PARENT_ADAPTER}." in name:
            param.requires_grad_(False)

    live: dict[str, torch.Tensor] = dict(lora_parameters(peft_model, ADAPTER_NAME))
    new_a = lora_a_matrices(live)  # the live A parameters, autograd intact
    device = next(iter(new_a.values())).device
    parent_a = {module: a.to(device) for module, a in lora_a_matrices(parent.state).items()}
    if not new_a.keys() & parent_a.keys():
        raise ConfigError(
            f"lora.target_modules: the new adapter adapts {settings.target_modules}, none of the modules "
            f"parent {parent.ref} adapts ({parent.settings.target_modules}), so strategy orthogonal has no "
            "overlap to keep small; remove the field to adapt the parent's modules",
            field="lora.target_modules",
        )
    return peft_model, OrthogonalSubspace(new_a=new_a, parent_a=parent_a, lam=lam)


def save_served_sum(
    model: PeftModel,
    parent: ParentAdapter,
    adapter_dir: Path,
    run_dir: Path,
    *,
    name: str,
    training: dict[str, Any],
    metrics: dict[str, Any],
    overwrite: bool,
) -> Path:
    """Keep the new adapter in `run_dir/new_adapter`; write parent + new adapter, summed, to `adapter_dir`.

    The sum is written atomically (`write_adapter`): a failure leaves any earlier adapter as it was.
    """
    new_dir = save_adapter(model, run_dir / NEW_ADAPTER_DIR, name=f"{name} (new adapter)", overwrite=True)
    config, state, card = served_sum(parent.path, new_dir)
    card = card.model_copy(
        update={
            "name": name,
            "training": training,
            "metrics": metrics,
            "lineage": parent.lineage("orthogonal"),
        }
    )
    return write_adapter(adapter_dir, config, state, card, overwrite=overwrite)


def _check_summable(parent: ParentAdapter, recipe: LoraSettings) -> None:
    """Parent and new adapter must add up into one plain LoRA adapter: no DoRA, full modules or biases."""
    theirs = parent.settings
    if theirs.use_dora or theirs.modules_to_save or theirs.bias != "none":
        what = (
            "DoRA" if theirs.use_dora else "modules_to_save" if theirs.modules_to_save else "trained biases"
        )
        raise ConfigError(
            f"continual.strategy: orthogonal serves parent and new adapter as one plain LoRA adapter, but "
            f"parent {parent.ref} uses {what}, which does not add up; choose strategy none, replay or ewc",
            field="continual.strategy",
        )
    for field, value, plain in (
        ("use_dora", recipe.use_dora, False),
        ("modules_to_save", recipe.modules_to_save, None),
        ("bias", recipe.bias, "none"),
    ):
        if value != plain:
            raise ConfigError(
                f"lora.{field}: {value!r} cannot be summed with the parent into one plain LoRA adapter "
                f"(strategy orthogonal); remove the field",
                field=f"lora.{field}",
            )
