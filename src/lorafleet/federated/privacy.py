"""Client-level differential privacy for federated rounds (DP-FedAvg) and its accounting through Opacus.

Each round samples every client independently with probability q (Poisson), clips each sampled client's
update to norm C and releases

    Δ̄ = (Σₖ clip_C(Δₖ) + z) / (q·N),   z ~ N(0, σ²C² I)

Adding or removing one client changes the sum by at most C, so a round is the subsampled Gaussian
mechanism with noise multiplier σ and sampling rate q, and R rounds are R compositions of it: exactly what
Opacus' RDP accountant counts for R steps of DP-SGD at (σ, q), amplification by sampling included. The ε
reported after round r is that accountant's ε for (σ, q, r) at the run's δ; σ for a target (ε, δ) over R
rounds is Opacus' `get_noise_multiplier` (the smallest σ whose ε after R rounds is at most the target).
"""

from __future__ import annotations

import warnings

import torch

from lorafleet.federated.updates import State, norm


def clip(update: State, clip_norm: float) -> State:
    """`update` scaled by min(1, C/‖update‖): its norm is at most C, its direction kept."""
    size = norm(update)
    scale = min(1.0, clip_norm / size) if size > 0 else 1.0
    return {key: tensor * scale for key, tensor in update.items()}


def gaussian_noise(like: State, std: float, generator: torch.Generator) -> State:
    """N(0, std²) noise shaped like `like`, drawn from `generator`."""
    return {
        key: torch.randn(tensor.shape, generator=generator, dtype=torch.float32) * std
        for key, tensor in like.items()
    }


def clipped_sum(updates: list[State], like: State, clip_norm: float) -> State:
    """Σ clip_C(Δₖ), tensor by tensor (zeros shaped like `like` when there are no updates)."""
    total = {key: torch.zeros_like(tensor, dtype=torch.float32) for key, tensor in like.items()}
    for update in updates:
        for key, tensor in clip(update, clip_norm).items():
            total[key] += tensor
    return total


def noised_mean(
    total: State,
    *,
    clip_norm: float,
    noise_multiplier: float,
    expected_clients: float,
    generator: torch.Generator,
) -> State:
    """(total + N(0, σ²C²)) / (q·N), where `total` is a sum of updates each clipped to C (by the server,
    or by each client under secure aggregation, where the server sees only the sum)."""
    noise = gaussian_noise(total, noise_multiplier * clip_norm, generator)
    return {key: (total[key] + noise[key]) / expected_clients for key in total}


def epsilon_spent(*, noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """ε after `rounds` rounds at (σ, q), at δ: Opacus' RDP accountant (0 before the first round)."""
    if rounds == 0:
        return 0.0
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, rounds)]
    with warnings.catch_warnings():  # "optimal order is the largest alpha" at tiny ε: the bound still holds
        warnings.simplefilter("ignore", UserWarning)
        return float(accountant.get_epsilon(delta=delta))


def noise_for_budget(*, epsilon: float, delta: float, sample_rate: float, rounds: int) -> float:
    """σ: the smallest noise multiplier whose ε after `rounds` rounds at rate q stays within `epsilon`."""
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(
            get_noise_multiplier(
                target_epsilon=epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=rounds,
                accountant="rdp",
            )
        )
