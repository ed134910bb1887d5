"""FedProx's proximal term, added to a client's loss so it stays near the global adapter it started from.

    penalty(w) = μ/2 · Σₜ ‖wₜ − w_globalₜ‖²_F     over the trainable LoRA tensors t

Its gradient μ(w − w_global) pulls each local step back towards the round's global weights; μ = 0 is FedAvg.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def proximal_term(
    parameters: Sequence[torch.Tensor], anchors: Sequence[torch.Tensor], mu: float
) -> torch.Tensor:
    """μ/2 Σ ‖w − w_global‖² of `parameters` against their `anchors` (the global values), differentiable."""
    if len(parameters) != len(anchors):
        raise ValueError(f"{len(parameters)} parameters but {len(anchors)} anchors")
    total = sum(((p - a.to(p.device, p.dtype)) ** 2).sum() for p, a in zip(parameters, anchors, strict=True))
    return 0.5 * mu * torch.as_tensor(total)


def proximal_penalty(parameters: Sequence[torch.nn.Parameter], mu: float) -> Callable[[], torch.Tensor]:
    """The penalty for a round: anchored at the parameters' values now (the global weights just loaded)."""
    anchors = [p.detach().clone() for p in parameters]
    return lambda: proximal_term(list(parameters), anchors, mu)
