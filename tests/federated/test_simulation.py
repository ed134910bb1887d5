"""A simulated federation on the tiny model (Flower's simulation engine, Ray actors): two clients misbehave
(NaN, a huge update), the rounds complete with the honest one, and the adapter is registered."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import torch

from lorafleet.adapters import read_adapter
from lorafleet.federated.privacy import epsilon_spent
from lorafleet.federated.simulation import federate
from lorafleet.registry import Registry
from lorafleet.training import FinetuneConfig


def _misbehaving_client(message: Any, context: Any) -> Any:
    """lorafleet's client, except that client 0 sends NaN and client 1 an update a million times too big."""
    from flwr.app import ArrayRecord

    from lorafleet.federated.apps import answer

    reply = answer(message, context)
    client = int(context.node_config["partition-id"])
    if client < 2:
        sent = message.content["lora"].to_torch_state_dict()
        state = reply.content["lora"].to_torch_state_dict()
        if client == 0:
            state = {key: torch.full_like(tensor, float("nan")) for key, tensor in state.items()}
        else:
            state = {key: sent[key] + (tensor - sent[key]) * 1e6 for key, tensor in state.items()}
        reply.content["lora"] = ArrayRecord(torch_state_dict=state)
    return reply


def test_bad_clients_are_refused_and_the_run_registers_a_federated_version(
    fed_recipe: Callable[..., FinetuneConfig],
) -> None:
    from lorafleet.federated.apps import client_app
    from lorafleet.federated.registration import register_federated

    config = fed_recipe()
    result = federate(config, client_app=client_app(_misbehaving_client), client_cpus=1, log=lambda _: None)

    ledger = [json.loads(line) for line in (result.run_dir / "ledger.jsonl").read_text().splitlines()]
    assert [entry["round"] for entry in ledger] == [1, 2]
    for entry in ledger:  # clients by the names they answered the roll-call with
        assert sorted(entry["sampled"]) == ["client-0", "client-1", "client-2"] and entry["applied"]
        assert entry["accepted"] == ["client-2"] and sorted(entry["refused"]) == ["client-0", "client-1"]
        assert "non-finite values (NaN or inf)" in entry["refused"]["client-0"]
        assert "exceeds max_update_norm" in entry["refused"]["client-1"]
        assert entry["bytes_down"] == entry["bytes_up"] > 0 and entry["epsilon"] is None  # 3 × the LoRA
        assert entry["validation_loss"] is not None and entry["wall_seconds"] > 0
    _, state, card = read_adapter(result.adapter_dir)
    assert all(bool(torch.isfinite(tensor).all()) for tensor in state.values())
    assert any(
        float(tensor.abs().sum()) > 0 for key, tensor in state.items() if "lora_B" in key
    )  # it learned
    assert card is not None and card.lineage.method == "federated"
    assert card.lineage.details == result.summary["federated"]
    assert card.lineage.details["clients"] == 3 and card.lineage.details["rounds"] == 2

    registry = Registry()
    tenant = registry.tenants.create("acme")
    version = register_federated(registry, tenant.id, config, result)
    stored = registry.adapters.version(tenant.id, "fed", version.number)
    assert stored.metrics["lineage"]["method"] == "federated"
    assert stored.metrics["lineage"]["rounds"] == 2 and stored.metrics["lineage"]["epsilon"] is None
    registry.close()


class _SilentGrid:
    """A Flower grid whose three clients never answer: under privacy every round is noise only."""

    def get_node_ids(self) -> list[int]:
        return [1, 2, 3]

    def push_messages(self, messages: Any) -> list[str]:
        return [str(k) for k, _ in enumerate(messages)]

    def pull_messages(self, message_ids: Any) -> list[Any]:
        return []


def test_a_private_run_stops_before_its_budget_is_spent(fed_recipe: Callable[..., FinetuneConfig]) -> None:
    from lorafleet.federated.server import run_rounds

    config = fed_recipe(
        "federated.rounds=4",
        "federated.fraction=0.5",
        "federated.privacy.epsilon=6",
        "federated.privacy.noise_multiplier=1.0",
        "federated.privacy.clip_norm=0.1",
        "federated.round_timeout=1",
    )
    result = run_rounds(_SilentGrid(), config, log=lambda _: None)
    rounds = result.summary["rounds"]
    epsilons = [entry["epsilon"] for entry in rounds]
    expected = [epsilon_spent(noise_multiplier=1.0, sample_rate=0.5, rounds=r, delta=1e-5) for r in (1, 2)]
    assert epsilons == expected and expected[-1] <= 6.0  # round 3 would spend 6.48
    assert result.summary["stopped"].startswith("round 3 would spend ε 6.48")
    assert result.summary["federated"]["epsilon"] == expected[-1]
    assert all(entry["applied"] for entry in rounds)  # noise is released even when nobody answers
