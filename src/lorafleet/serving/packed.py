"""Linear layers whose weights are packed once for oneDNN: faster fp32 inference on a CPU.

`F.linear` hands an fp32 matrix product to the BLAS as it comes, in the weight's plain row-major layout,
and a decode step's products are skinny (one row per running request). oneDNN can reorder a weight once
into the blocked layout its kernels read best. Timed alone with 32 rows, the bundled model's output head
(49,152 × 576) goes from ~48 to ~20 ms and an MLP projection from ~0.50 to ~0.43 ms; in the engine, a
decode step of 32 rows went from 245 to 201 ms with 32 adapters (176 to 163 ms merged) when the
attention projections were packed as well (medians of 6 runs; at one row the two were within noise).
Each row's result no longer depends on how many rows share the product. Weights under `min_weights`
values, where a call's fixed cost dominates, are left to `F.linear`.

The packed copy is frozen: pack after any change to the weights (merging an adapter, quantizing), and
only for inference. `packed_for_inference` packs a model for a while and puts its own linears back
after, for scoring a model that then trains on or unmerges its adapter. The private `torch.ops.mkldnn`
kernels are the ones torch's own compiler emits for frozen CPU linears; `pack_linears` packs nothing
where the build has no oneDNN.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

MIN_WEIGHTS = 1 << 16  # 65,536 values: every linear of the bundled model (its smallest is 576 × 192)


def can_pack(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether linears on `device` in `dtype` can be packed (a CPU, fp32, a torch built with oneDNN)."""
    return device.type == "cpu" and dtype == torch.float32 and torch.backends.mkldnn.is_available()


class PackedLinear(nn.Module):
    """An `nn.Linear`'s forward with its weight packed for oneDNN (`rows` hints the usual batch rows)."""

    def __init__(self, linear: nn.Linear, rows: int = 32) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bias = linear.bias
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed for oneDNN"


def pack_linears(model: nn.Module, *, rows: int = 32, min_weights: int | None = None) -> list[str]:
    """Replace `model`'s fp32 CPU `nn.Linear`s of at least `min_weights` values by `PackedLinear`s.

    `min_weights` defaults to `MIN_WEIGHTS`. Wrapped layers count too (a `MultiLoraLinear`'s base layer).
    Returns the names of the layers packed.
    """
    return [name for name, _, _, _ in _swap_in_packed(model, rows, min_weights)]


@contextmanager
def packed_for_inference(model: nn.Module, *, rows: int = 32) -> Iterator[list[str]]:
    """`model` with its large linears packed (as `pack_linears`) inside the block, its own linears after.

    The originals are held meanwhile (the packed copies add their size in memory until the block ends).
    """
    swaps = _swap_in_packed(model, rows, None)
    try:
        yield [name for name, _, _, _ in swaps]
    finally:
        for _, parent, child_name, linear in swaps:
            setattr(parent, child_name, linear)


def _swap_in_packed(
    model: nn.Module, rows: int, min_weights: int | None
) -> list[tuple[str, nn.Module, str, nn.Linear]]:
    """Pack every linear worth it in place; (name, parent, attribute, original linear) for each."""
    min_weights = MIN_WEIGHTS if min_weights is None else min_weights
    swaps = []
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is not nn.Linear or child.weight.numel() < min_weights:
                continue
            if "lora_" in parent_name:  # a PEFT adapter's own factors: PEFT reads their weights
                continue
            if not can_pack(child.weight.device, child.weight.dtype):
                continue
            setattr(parent, child_name, PackedLinear(child, rows))
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            swaps.append((name, parent, child_name, child))
    return swaps
