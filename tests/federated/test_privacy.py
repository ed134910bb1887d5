"""Client-level DP: clipping bounds each client's share; ε is Opacus' RDP accountant's for (σ, q, rounds)."""

from __future__ import annotations

import pytest
import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from lorafleet.federated.config import FederatedConfig, PrivacyConfig
from lorafleet.federated.privacy import clip, clipped_sum, epsilon_spent, noise_for_budget
from lorafleet.federated.rounds import ClientAnswer, aggregate_round
from lorafleet.federated.updates import norm


def _update(seed: int, scale: float) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "a": torch.randn(5, 7, generator=generator) * scale,
        "b": torch.randn(7, 5, generator=generator) * scale,
    }


@pytest.mark.parametrize(("sigma", "q", "rounds"), [(0.8, 0.3, 10), (1.5, 0.1, 50), (4.0, 0.5, 3)])
def test_epsilon_equals_opacus_rdp_accountant_stepped_round_by_round(
    sigma: float, q: float, rounds: int
) -> None:
    accountant = RDPAccountant()
    for _ in range(rounds):
        accountant.step(noise_multiplier=sigma, sample_rate=q)
    assert epsilon_spent(noise_multiplier=sigma, sample_rate=q, rounds=rounds, delta=1e-5) == pytest.approx(
        accountant.get_epsilon(delta=1e-5), rel=1e-12
    )


def test_epsilon_falls_as_sigma_grows_and_grows_with_rounds() -> None:
    epsilons = [
        epsilon_spent(noise_multiplier=s, sample_rate=0.3, rounds=10, delta=1e-5) for s in (0.6, 1, 2, 4)
    ]
    assert epsilons == sorted(epsilons, reverse=True) and epsilons[-1] < epsilons[0] / 5
    over_rounds = [
        epsilon_spent(noise_multiplier=1.0, sample_rate=0.3, rounds=r, delta=1e-5) for r in (0, 1, 5, 10)
    ]
    assert over_rounds[0] == 0.0 and over_rounds == sorted(over_rounds)


def test_sigma_for_a_budget_is_opacus_and_keeps_the_run_within_it() -> None:
    sigma = noise_for_budget(epsilon=8.0, delta=1e-5, sample_rate=0.3, rounds=6)
    expected = get_noise_multiplier(
        target_epsilon=8.0, target_delta=1e-5, sample_rate=0.3, steps=6, accountant="rdp"
    )
    assert sigma == pytest.approx(expected)
    assert 7.9 <= epsilon_spent(noise_multiplier=sigma, sample_rate=0.3, rounds=6, delta=1e-5) <= 8.0


def test_clipping_bounds_every_clients_contribution() -> None:
    clip_norm = 0.5
    updates = [_update(seed, scale) for seed, scale in enumerate((1e-3, 0.1, 10.0, 80.0))]
    for update in updates:
        assert norm(clip(update, clip_norm)) <= clip_norm * (1 + 1e-6)
    small = updates[0]
    torch.testing.assert_close(clip(small, clip_norm)["a"], small["a"])  # under C: unchanged
    like = {key: torch.zeros_like(t) for key, t in updates[0].items()}
    everyone = clipped_sum(updates, like, clip_norm)
    for left_out in range(len(updates)):  # the sensitivity: one client moves the sum by at most C
        others = clipped_sum(updates[:left_out] + updates[left_out + 1 :], like, clip_norm)
        assert norm({k: everyone[k] - others[k] for k in everyone}) <= clip_norm * (1 + 1e-6)


def test_a_private_round_adds_noise_of_std_sigma_c_over_the_expected_clients() -> None:
    config = FederatedConfig(
        clients=10,
        fraction=0.5,
        min_clients=1,
        max_update_norm=1e4,
        privacy=PrivacyConfig(epsilon=8.0, clip_norm=2.0),
    )
    start = {"w": torch.zeros(200_000)}
    answer = ClientAnswer("a", {"w": torch.full((200_000,), 1e-6)}, 5)
    outcome = aggregate_round(
        start, [answer], config, noise_multiplier=1.5, generator=torch.Generator().manual_seed(0)
    )
    assert outcome.applied
    noise = outcome.state["w"] - 1e-6 / 5  # the client's clipped update is tiny; the rest is noise
    assert float(noise.std()) == pytest.approx(1.5 * 2.0 / 5, rel=0.01)
