"""O-LoRA (Wang et al. 2023): learn the child in a subspace orthogonal to the frozen parent, serve their sum.

The parent's factors (Aₚ: rₚ × in, Bₚ, scale sₚ) are frozen and a new adapter (Aₙ: rₙ × in, Bₙ, sₙ) is
trained on top of them, so each adapted layer computes y = W₀x + sₚBₚAₚx + sₙBₙAₙx. The rows of A span
the input directions an adapter reads; O-LoRA keeps the new ones away from the parent's with

    L_orth = Σ_modules ‖Aₚ · Aₙᵀ‖²_F = Σ_modules Σ_{j,k} ⟨aₚⱼ, aₙₖ⟩²,   Aₚ·Aₙᵀ: rₚ × rₙ

which is 0 exactly when every new row is orthogonal to every parent row, and grows with their overlap;
∂L_orth/∂Aₙ = 2·AₙAₚᵀAₚ per module. The loss trained is task loss + λ·L_orth.

The version is served as the exact sum, one plain LoRA adapter of rank rₚ + rₙ (`combine_adapters`' `cat`
with weights [1, 1]): A = [sₚAₚ; sₙAₙ] (stacked along rank), B = [Bₚ Bₙ] (side by side), scale 1, so
BA = sₚBₚAₚ + sₙBₙAₙ and serving, merging and export see an ordinary LoRA adapter.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from peft import LoraConfig

from lorafleet.adapters.combine import combine_adapters
from lorafleet.adapters.storage import AdapterCard, Lineage
from lorafleet.errors import AdapterError

SERVED_SUM_METHOD = "continual:orthogonal"


def orthogonal_penalty(
    new_a: Mapping[str, torch.Tensor], parent_a: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """Σ ‖Aₚ·Aₙᵀ‖²_F over the modules both adapt (a 0-d fp32 tensor, differentiable in `new_a` only).

    Both map a module (or PEFT key) to its A factor (r, in), as `lora_a_matrices` gives them. A module only
    the new adapter adapts overlaps nothing; no module in common at all is an error (mismatched names).
    """
    common = sorted(new_a.keys() & parent_a.keys())
    if not common:
        raise AdapterError(
            "the new adapter and its parent adapt no module in common (first new module: "
            f"{next(iter(new_a), None)}, first parent module: {next(iter(parent_a), None)}); "
            "key both the same way (continual.lora_a_matrices)"
        )
    total: torch.Tensor | None = None
    for module in common:
        a_new = new_a[module].float()  # (r_new, in)
        a_parent = parent_a[module].detach().to(a_new.device, torch.float32)  # (r_parent, in)
        if a_parent.shape[1] != a_new.shape[1]:
            raise AdapterError(
                f"module {module}: the new A reads {a_new.shape[1]} features, "
                f"the parent's {a_parent.shape[1]}"
            )
        overlap = a_parent @ a_new.T  # (r_parent, r_new)
        term = overlap.square().sum()
        total = term if total is None else total + term
    assert total is not None
    return total


def served_sum(
    parent_dir: str | os.PathLike[str], child_dir: str | os.PathLike[str]
) -> tuple[LoraConfig, dict[str, torch.Tensor], AdapterCard]:
    """The parent and the child adapter as one plain LoRA adapter whose update is exactly the sum of theirs.

    Returns config, state and card for `write_adapter`; the card's lineage names both and the method
    `continual:orthogonal`. Both must be lorafleet adapters of the same base (checked).
    """
    config, state, card = combine_adapters([str(parent_dir), str(child_dir)], [1.0, 1.0], method="cat")
    lineage = Lineage(parents=card.lineage.parents, method=SERVED_SUM_METHOD, weights=[1.0, 1.0])
    return config, state, card.model_copy(update={"lineage": lineage})
