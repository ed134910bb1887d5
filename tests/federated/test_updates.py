"""FedAvg on LoRA states and one round's checks: the weighted mean exactly, bad answers refused."""

from __future__ import annotations

import torch

from lorafleet.federated.config import FederatedConfig
from lorafleet.federated.rounds import ClientAnswer, aggregate_round
from lorafleet.federated.updates import State, delta, norm, refusal, weighted_mean

KEYS = ("m.q_proj.lora_A.weight", "m.q_proj.lora_B.weight")


def _state(seed: int, scale: float = 1.0) -> State:
    generator = torch.Generator().manual_seed(seed)
    return {
        KEYS[0]: torch.randn(4, 16, generator=generator) * scale,
        KEYS[1]: torch.randn(16, 4, generator=generator) * scale,
    }


def test_fedavg_is_the_weighted_mean_of_the_client_tensors() -> None:
    states, rows = [_state(1), _state(2), _state(3)], [10, 30, 60]
    mean = weighted_mean(states, rows)
    for key in KEYS:
        expected = (
            10 * states[0][key].double() + 30 * states[1][key].double() + 60 * states[2][key].double()
        ) / 100
        torch.testing.assert_close(mean[key], expected.float(), rtol=0, atol=0)


def test_a_round_without_privacy_applies_exactly_the_weighted_mean() -> None:
    start = _state(0)
    answers = [ClientAnswer("a", _state(1), 10), ClientAnswer("b", _state(2), 30)]
    outcome = aggregate_round(start, answers, FederatedConfig(clients=2, min_clients=2))
    assert outcome.applied and outcome.accepted == ["a", "b"] and not outcome.refused
    expected = weighted_mean([_state(1), _state(2)], [10, 30])
    for key in KEYS:
        torch.testing.assert_close(outcome.state[key], expected[key], rtol=0, atol=0)
    assert outcome.update_norm == norm(delta(expected, start))


def test_nan_and_huge_updates_are_refused_and_the_round_completes_with_the_others() -> None:
    start = _state(0)
    poisoned = _state(1)
    poisoned[KEYS[1]][3, 2] = float("nan")
    huge = {key: tensor * 1e6 for key, tensor in _state(2).items()}
    answers = [
        ClientAnswer("nan", poisoned, 10),
        ClientAnswer("huge", huge, 10),
        ClientAnswer("crashed", error="client failed: out of memory"),
        ClientAnswer("good-1", _state(3), 10),
        ClientAnswer("good-2", _state(4), 30),
    ]
    outcome = aggregate_round(
        start, answers, FederatedConfig(clients=5, min_clients=2, max_update_norm=100.0)
    )
    assert outcome.applied
    assert outcome.accepted == ["good-1", "good-2"]
    assert "NaN" in outcome.refused["nan"] and KEYS[1] in outcome.refused["nan"]
    assert "exceeds max_update_norm 100" in outcome.refused["huge"]
    assert outcome.refused["crashed"] == "client failed: out of memory"
    expected = weighted_mean([_state(3), _state(4)], [10, 30])
    for key in KEYS:
        torch.testing.assert_close(outcome.state[key], expected[key], rtol=0, atol=0)


def test_a_round_with_too_few_accepted_answers_keeps_the_global_state() -> None:
    start = _state(0)
    broken = {key: tensor.clone().fill_(float("inf")) for key, tensor in _state(1).items()}
    outcome = aggregate_round(
        start, [ClientAnswer("a", _state(2), 5), ClientAnswer("b", broken, 5)], FederatedConfig(min_clients=2)
    )
    assert not outcome.applied and outcome.state is start
    assert "fewer than min_clients 2" in (outcome.note or "")


def test_wrong_tensors_are_refused_by_name() -> None:
    start = _state(0)
    wrong = {KEYS[0]: torch.zeros(4, 16), KEYS[1]: torch.zeros(16, 8)}
    outcome = aggregate_round(start, [ClientAnswer("x", wrong, 5)], FederatedConfig(min_clients=1))
    assert KEYS[1] in outcome.refused["x"] and "shape" in outcome.refused["x"]


def test_refusal_passes_a_finite_update_within_the_bound() -> None:
    assert refusal(_state(1), max_norm=1e3) is None
