"""Weighted combination of several adapters of one base into a new adapter, on state dicts (no model needed).

For adapter i with factors Aᵢ (rᵢ × in), Bᵢ (out × rᵢ), scale sᵢ and weight wᵢ, its update is
ΔWᵢ = sᵢ·BᵢAᵢ. The result is saved with scale 1 (lora_alpha = r) and:

- `cat`:    A = [wᵢsᵢAᵢ] stacked, B = [Bᵢ] side by side, rank Σrᵢ.  BA = Σ wᵢsᵢBᵢAᵢ exactly.
- `linear`: A = Σ ±√|wᵢsᵢ|·Aᵢ, B = Σ √|wᵢsᵢ|·Bᵢ (equal ranks). Cheap, rank kept, but the product has
            cross terms BᵢAⱼ: exact only for one adapter; PEFT's `linear`.
- `svd`:    ΔW = Σ wᵢΔWᵢ, then the best rank-k factorisation ΔW ≈ U_k Σ_k V_kᵀ (Eckart–Young), so
            ‖ΔW − BA‖²_F = Σ_{j>k} σⱼ². k = `rank` (default max rᵢ).
- `ties`, `dare_linear`, `dare_ties`: the TIES / DARE task-vector merges of PEFT's `merge_utils`
            applied to the full ΔWᵢ (keeping a `density` fraction of entries), then factorised as `svd`.

A module adapted by only some adapters counts as ΔW = 0 for the others.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Literal

import torch
from peft import LoraConfig
from peft.utils import merge_utils

from lorafleet.adapters.factors import Factors, lora_factors, lora_scale
from lorafleet.adapters.identity import check_same_base
from lorafleet.adapters.storage import AdapterCard, Lineage, read_adapter
from lorafleet.errors import AdapterError, ConfigError

Method = Literal["linear", "cat", "svd", "ties", "dare_linear", "dare_ties"]
METHODS: tuple[str, ...] = Method.__args__  # type: ignore[attr-defined]


def combine_adapters(
    paths: Sequence[str],
    weights: Sequence[float],
    *,
    method: str = "cat",
    rank: int | None = None,
    density: float = 0.5,
    seed: int = 0,
) -> tuple[LoraConfig, dict[str, torch.Tensor], AdapterCard]:
    """Combine the adapters at `paths` with `weights`; return config, state and card for `write_adapter`."""
    if method not in METHODS:
        raise ConfigError(f"combination method {method!r} is not one of {', '.join(METHODS)}")
    if len(paths) < 1 or len(paths) != len(weights):
        raise ConfigError(f"give one weight per adapter: {len(paths)} adapters, {len(weights)} weights")
    if rank is not None and rank < 1:
        raise ConfigError(f"rank must be ≥ 1, got {rank}")
    if not 0.0 < density <= 1.0:
        raise ConfigError(f"density must be in (0, 1], got {density}")
    loaded = [read_adapter(path) for path in paths]
    known = [(path, card) for path, (_, _, card) in zip(paths, loaded, strict=True) if card is not None]
    if not known:
        raise AdapterError(
            f"{paths[0]}: no lorafleet.json, so its base model is unknown; save it with lorafleet"
        )
    base = known[0][1].base_model
    for path, card in known[1:]:
        check_same_base(base, card.base_model, adapter=path)
    configs = [config for config, _, _ in loaded]
    for path, config in zip(paths, configs, strict=True):
        if config.use_dora:
            raise ConfigError(
                f"{path}: DoRA adapters cannot be combined (their magnitude vectors do not add)"
            )
        if config.modules_to_save:
            raise ConfigError(
                f"{path}: adapters with modules_to_save cannot be combined (full modules do not add)"
            )
    factors = [lora_factors(state) for _, state, _ in loaded]
    scaled = [w * lora_scale(c) for w, c in zip(weights, configs, strict=True)]
    modules = sorted(set().union(*factors))
    ranks = [c.r for c in configs]

    if method == "linear":
        if len(set(ranks)) != 1:
            raise ConfigError(
                f"method 'linear' needs adapters of one rank, got ranks {ranks}; use cat or svd"
            )
        new_rank = ranks[0]
    elif method == "cat":
        new_rank = sum(ranks)
    else:
        new_rank = rank or max(ranks)

    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for module in modules:
        present = [(f[module], s) for f, s in zip(factors, scaled, strict=True) if module in f]
        if method == "cat":
            a, b = _cat(factors, scaled, ranks, module)
        elif method == "linear":
            a, b = _linear(present)
        else:
            delta = _merge_deltas(method, present, density, generator)  # (out, in)
            a, b = _truncated_svd(delta, new_rank)
        state[f"{module}.lora_A.weight"] = a.contiguous()
        state[f"{module}.lora_B.weight"] = b.contiguous()

    config = replace(
        configs[0],
        r=new_rank,
        lora_alpha=new_rank,
        use_rslora=False,
        target_modules=_target_names(modules),
        rank_pattern={},
        alpha_pattern={},
    )
    card = AdapterCard(
        base_model=base,
        lineage=Lineage(parents=[str(p) for p in paths], method=f"combine:{method}", weights=list(weights)),
    )
    return config, state, card


def _cat(factors: list[dict[str, Factors]], scaled: list[float], ranks: list[int], module: str) -> Factors:
    """Stack wᵢsᵢAᵢ and Bᵢ; an adapter without this module contributes zero blocks of its rank."""
    reference = next(f[module] for f in factors if module in f)
    in_features, out_features = reference[0].shape[1], reference[1].shape[0]
    blocks_a, blocks_b = [], []
    for f, s, r in zip(factors, scaled, ranks, strict=True):
        if module in f:
            a, b = f[module]
            blocks_a.append(s * a)
            blocks_b.append(b)
        else:
            blocks_a.append(torch.zeros(r, in_features))
            blocks_b.append(torch.zeros(out_features, r))
    return torch.cat(blocks_a, dim=0), torch.cat(blocks_b, dim=1)  # (Σr, in), (out, Σr)


def _linear(present: list[tuple[Factors, float]]) -> Factors:
    """Σ ±√|wᵢsᵢ|·Aᵢ and Σ √|wᵢsᵢ|·Bᵢ: the sign rides on A only, so negative weights subtract."""
    a = torch.stack([math.copysign(math.sqrt(abs(s)), s) * fa for (fa, _), s in present]).sum(0)
    b = torch.stack([math.sqrt(abs(s)) * fb for (_, fb), s in present]).sum(0)
    return a, b


def _merge_deltas(
    method: str, present: list[tuple[Factors, float]], density: float, generator: torch.Generator
) -> torch.Tensor:
    deltas = [fb @ fa for (fa, fb), _ in present]  # each (out, in), unscaled BᵢAᵢ
    weights = torch.tensor([s for _, s in present])
    if method == "svd":
        return merge_utils.task_arithmetic(deltas, weights)
    if method == "ties":
        return merge_utils.ties(deltas, weights, density)
    # DARE drops entries at random: draw with our generator so a seed gives the same adapter.
    state = torch.get_rng_state()
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    try:
        merge = merge_utils.dare_linear if method == "dare_linear" else merge_utils.dare_ties
        return merge(deltas, weights, density)
    finally:
        torch.set_rng_state(state)


def _truncated_svd(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A (k × in), B (out × k) with BA the best rank-k approximation of `delta`; √σ split across both."""
    u, sigma, vh = torch.linalg.svd(delta, full_matrices=False)
    k = min(rank, sigma.numel())
    root = sigma[:k].sqrt()
    a = root[:, None] * vh[:k]  # (k, in)
    b = u[:, :k] * root[None, :]  # (out, k)
    if k < rank:  # keep the declared rank: pad with zero directions
        a = torch.cat([a, torch.zeros(rank - k, a.shape[1])])
        b = torch.cat([b, torch.zeros(b.shape[0], rank - k)], dim=1)
    return a, b


def _target_names(modules: list[str]) -> list[str]:
    return sorted({module.split(".")[-1] for module in modules})
