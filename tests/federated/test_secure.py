"""Secure aggregation through Flower's SecAgg+ in a simulated federation on the tiny model: the server
recovers exactly the weighted mean of the updates (to the quantization step), completes a round when a
client drops out mid-protocol, and lorafleet's own clients train a private, securely aggregated run."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import torch

from lorafleet.adapters import read_adapter
from lorafleet.errors import ConfigError
from lorafleet.federated.config import FederatedConfig
from lorafleet.federated.privacy import noised_mean
from lorafleet.federated.rounds import aggregate_secure_round
from lorafleet.federated.secure import SecureRound, masked_answer
from lorafleet.federated.simulation import federate
from lorafleet.training import FinetuneConfig, parse_config

SECURE = ["federated.secure_aggregation.threshold=0.6", "federated.min_clients=2"]


def _known_update(client: int) -> float:
    return 0.001 * (client + 1)


def _rows(client: int) -> int:
    return 10 * (client + 1)


def _known_update_client(message: Any, context: Any) -> Any:
    """Client k sends the update Δ = 0.001·(k+1) everywhere with 10·(k+1) rows; client 0 fails in round 2
    after the SecAgg+ keys were shared (it drops out mid-protocol)."""
    from flwr.app import Message

    from lorafleet.federated.secure import round_inputs

    settings, global_state = round_inputs(message)
    client = int(context.node_config["partition-id"])
    if client == 0 and int(settings["round"]) == 2:
        raise RuntimeError("client 0 lost its connection")
    recipe = parse_config(json.loads(str(settings["recipe"])), source="test")
    state = {key: tensor + _known_update(client) for key, tensor in global_state.items()}
    content = masked_answer(state, global_state, _rows(client), 0.0, recipe.federated)
    return Message(content, reply_to=message)


def test_secagg_reveals_the_weighted_mean_and_survives_a_client_that_drops_out(
    fed_recipe: Callable[..., FinetuneConfig],
) -> None:
    from lorafleet.federated.apps import client_app

    config = fed_recipe(*SECURE)
    initial = _initial_state(config)
    result = federate(config, client_app=client_app(_known_update_client), client_cpus=1, log=lambda _: None)

    ledger = [json.loads(line) for line in (result.run_dir / "ledger.jsonl").read_text().splitlines()]
    assert [len(entry["accepted"]) for entry in ledger] == [3, 2]
    assert all(entry["applied"] for entry in ledger)
    assert not ledger[0]["refused"]
    (reason,) = ledger[1]["refused"].values()
    assert reason.startswith("client failed") and "client 0 lost its connection" in reason
    assert all(entry["bytes_up"] > 0 and entry["bytes_down"] > 0 for entry in ledger)

    def mean(clients: range) -> float:
        return sum(_rows(k) * _known_update(k) for k in clients) / sum(_rows(k) for k in clients)

    expected = mean(range(3)) + mean(range(1, 3))  # round 1: all three; round 2: without client 0
    _, state, _ = read_adapter(result.adapter_dir)
    for key, tensor in initial.items():
        saved = state[key.replace(".default", "")]
        torch.testing.assert_close(saved - tensor, torch.full_like(tensor, expected), rtol=0, atol=2e-5)


def test_a_private_secure_run_of_lorafleets_own_clients_trains_and_spends_epsilon(
    fed_recipe: Callable[..., FinetuneConfig],
) -> None:
    config = fed_recipe(
        *SECURE,
        "federated.rounds=1",
        "federated.privacy.noise_multiplier=0.5",
        "federated.privacy.clip_norm=0.5",
    )
    result = federate(config, client_cpus=1, log=lambda _: None)
    (entry,) = result.summary["rounds"]
    assert entry["applied"] and entry["epsilon"] > 0 and len(entry["accepted"]) == len(entry["sampled"])
    _, state, card = read_adapter(result.adapter_dir)
    assert all(bool(torch.isfinite(tensor).all()) for tensor in state.values())
    assert any(float(tensor.abs().sum()) > 0 for key, tensor in state.items() if "lora_B" in key)
    assert card is not None and card.lineage.method == "federated"


def test_a_private_secure_round_noises_k_times_the_revealed_mean() -> None:
    federated = FederatedConfig(
        clients=10,
        fraction=0.3,
        privacy={"noise_multiplier": 1.5, "clip_norm": 0.1},  # type: ignore[arg-type]
        secure_aggregation={},  # type: ignore[arg-type]
    )
    start = {"w": torch.zeros(4, 4)}
    revealed = SecureRound(mean={"w": torch.full((4, 4), 0.01)}, contributors=["1", "2", "3"])
    outcome = aggregate_secure_round(
        start, revealed, federated, noise_multiplier=1.5, generator=torch.Generator().manual_seed(7)
    )
    expected = noised_mean(
        {"w": torch.full((4, 4), 0.03)},
        clip_norm=0.1,
        noise_multiplier=1.5,
        expected_clients=3.0,
        generator=torch.Generator().manual_seed(7),
    )
    assert outcome.applied and outcome.accepted == ["1", "2", "3"]
    torch.testing.assert_close(outcome.state["w"], expected["w"])


def test_a_client_refuses_to_mask_an_update_outside_the_clipping_range() -> None:
    federated = FederatedConfig(secure_aggregation={"clipping_range": 0.5})  # type: ignore[arg-type]
    start = {"w": torch.zeros(2, 2)}
    with pytest.raises(ValueError, match=r"outside ±0.5 \(federated.secure_aggregation.clipping_range\)"):
        masked_answer({"w": torch.full((2, 2), 0.7)}, start, 10, 0.0, federated)
    with pytest.raises(ValueError, match="non-finite"):
        masked_answer({"w": torch.full((2, 2), float("nan"))}, start, 10, 0.0, federated)


def test_secure_aggregation_needs_two_clients_per_round(fed_recipe: Callable[..., FinetuneConfig]) -> None:
    with pytest.raises(ConfigError, match="secure_aggregation needs min_clients of at least 2"):
        fed_recipe("federated.secure_aggregation.threshold=0.6")


def _initial_state(config: FinetuneConfig) -> dict[str, torch.Tensor]:
    """The global LoRA a run starts from (the server draws it with the recipe's seed)."""
    from lorafleet.federated.client import LocalModel

    return LocalModel.load(config).state()
