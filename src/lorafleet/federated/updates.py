"""LoRA updates as state-dict arithmetic: deltas, norms, the checks an update must pass, weighted FedAvg.

A state is the LoRA tensors of one adapter (`dict[str, Tensor]`, PEFT key names, every tensor fp32). The
update of a client is Δ = w_client − w_global; its norm is the L2 norm over all tensors together,
‖Δ‖ = √(Σₜ ‖Δₜ‖²_F). FedAvg of K client states with row counts nₖ is

    w = Σₖ (nₖ / Σⱼ nⱼ) · wₖ

taken on each LoRA factor (A and B separately), as PEFT stores them: the mean of the factors, not of
the products BₖAₖ (the server never forms a dense ΔW).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

State = dict[str, torch.Tensor]


def delta(new: State, old: State) -> State:
    """new − old, tensor by tensor; the two must hold the same keys and shapes."""
    check_same_layout(new, old)
    return {key: new[key].float() - old[key].float() for key in old}


def add(state: State, update: State) -> State:
    """state + update, tensor by tensor."""
    return {key: state[key] + update[key] for key in state}


def scaled(update: State, factor: float) -> State:
    """factor · update, tensor by tensor."""
    return {key: tensor * factor for key, tensor in update.items()}


def norm(update: State) -> float:
    """‖Δ‖: the L2 norm over every tensor of `update` together."""
    total = sum(float(tensor.double().pow(2).sum()) for tensor in update.values())
    return math.sqrt(total)


def refusal(update: State, *, max_norm: float) -> str | None:
    """Why `update` must not be applied (NaN or inf; a norm above `max_norm`), or None when it may."""
    for key, tensor in sorted(update.items()):
        if not bool(torch.isfinite(tensor).all()):
            return f"non-finite values (NaN or inf) in {key}"
    size = norm(update)
    if size > max_norm:
        return f"update norm {size:.4g} exceeds max_update_norm {max_norm:g}"
    return None


def weighted_mean(states: Sequence[State], weights: Sequence[float]) -> State:
    """FedAvg: (Σₖ wₖ · stateₖ) / Σⱼ wⱼ, tensor by tensor (fp64 sums, fp32 result)."""
    if not states or len(states) != len(weights):
        raise ValueError(f"weighted_mean needs one weight per state (got {len(states)} and {len(weights)})")
    if any(weight < 0 for weight in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum (got {list(weights)})")
    for state in states[1:]:
        check_same_layout(state, states[0])
    total = float(sum(weights))
    mean: State = {}
    for key, first in states[0].items():
        weighted = torch.zeros_like(first, dtype=torch.float64)
        for state, weight in zip(states, weights, strict=True):
            weighted += state[key].double() * float(weight)
        mean[key] = (weighted / total).float()  # (Σ wₖ·stateₖ) / Σ wₖ
    return mean


def check_same_layout(state: State, reference: State) -> None:
    """Raise `ValueError` naming the first key or shape where `state` differs from `reference`."""
    if state.keys() != reference.keys():
        missing = sorted(reference.keys() - state.keys())
        extra = sorted(state.keys() - reference.keys())
        raise ValueError(f"LoRA tensors differ: missing {missing[:3]}, unexpected {extra[:3]}")
    for key, tensor in reference.items():
        if state[key].shape != tensor.shape:
            raise ValueError(f"{key}: shape {tuple(state[key].shape)}, expected {tuple(tensor.shape)}")
