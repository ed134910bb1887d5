"""One round's aggregation: check every client's answer, combine the accepted ones, check the result.

    answers ──► refuse: errors, wrong tensors, NaN/inf, ‖Δ‖ > max_update_norm ──► accepted
    without privacy: w = weighted FedAvg of the accepted states (row counts), if ≥ min_clients accepted
    with privacy:    w = w_global + (Σ clip_C(Δₖ) + N(0, σ²C²)) / (q·N)          (`privacy`)
    the aggregate's own update w − w_global must pass the same check, else the round is not applied

A refused client is logged with its reason and left out; the round completes with the others. Under
privacy a refused client counts as one that sent nothing, which only lowers the sum's sensitivity.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lorafleet.federated.config import FederatedConfig
from lorafleet.federated.privacy import private_mean
from lorafleet.federated.updates import State, add, delta, norm, refusal, weighted_mean


@dataclass(frozen=True)
class ClientAnswer:
    """What one sampled client sent back: its LoRA state and row count, or the error it reported."""

    client: str  # a label for the ledger: the client's name or node id
    state: State | None = None
    examples: int = 0
    error: str | None = None


@dataclass
class RoundOutcome:
    """The round's new global state (the old one when nothing was applied) and who was refused and why."""

    state: State
    applied: bool
    accepted: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    update_norm: float | None = None
    note: str | None = None  # why the round's update was not applied


def aggregate_round(
    global_state: State,
    answers: list[ClientAnswer],
    federated: FederatedConfig,
    *,
    noise_multiplier: float | None = None,
    generator: torch.Generator | None = None,
) -> RoundOutcome:
    """The global state after one round from the clients' `answers`; see the module docstring."""
    updates: list[State] = []
    states: list[State] = []
    weights: list[float] = []
    outcome = RoundOutcome(state=global_state, applied=False)
    for answer in answers:
        reason = answer.error
        if reason is None and (answer.state is None or answer.examples < 1):
            reason = "no LoRA tensors or no rows in the answer"
        if reason is None:
            assert answer.state is not None
            try:
                update = delta(answer.state, global_state)
            except ValueError as err:
                reason = str(err)
            else:
                reason = refusal(update, max_norm=federated.max_update_norm)
        if reason is not None:
            outcome.refused[answer.client] = reason
            continue
        assert answer.state is not None
        outcome.accepted.append(answer.client)
        updates.append(update)
        states.append(answer.state)
        weights.append(float(answer.examples))

    privacy = federated.privacy
    if privacy is not None:
        if noise_multiplier is None or generator is None:
            raise ValueError("a private round needs its noise multiplier and a generator")
        mean = private_mean(
            updates,
            global_state,
            clip_norm=privacy.clip_norm,
            noise_multiplier=noise_multiplier,
            expected_clients=federated.expected_clients(),
            generator=generator,
        )
        new_state = add(global_state, mean)
    elif len(states) < federated.min_clients:
        outcome.note = f"{len(states)} accepted answers, fewer than min_clients {federated.min_clients}"
        return outcome
    else:
        new_state = weighted_mean(states, weights)
    applied = delta(new_state, global_state)
    reason = refusal(applied, max_norm=federated.max_update_norm)
    if reason is not None:
        outcome.note = f"aggregate refused: {reason}"
        return outcome
    outcome.state, outcome.applied, outcome.update_norm = new_state, True, norm(applied)
    return outcome
