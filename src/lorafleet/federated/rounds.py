"""One round's aggregation: check every client's answer, combine the accepted ones, check the result.

    answers ──► refuse: errors, wrong tensors, NaN/inf, ‖Δ‖ > max_update_norm ──► accepted
    without privacy: w = weighted FedAvg of the accepted states (row counts), if ≥ min_clients accepted
    with privacy:    w = w_global + (Σ clip_C(Δₖ) + N(0, σ²C²)) / (q·N)          (`privacy`)
    under secure aggregation the server sees only Δ̄ (`aggregate_secure_round`): each client checks and
    clips its own update, and the server checks the aggregate
    the aggregate's own update w − w_global must pass the same check, else the round is not applied

A refused client is logged with its reason and left out; the round completes with the others. Under
privacy a refused client counts as one that sent nothing, which only lowers the sum's sensitivity.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lorafleet.federated.config import FederatedConfig
from lorafleet.federated.privacy import clipped_sum, noised_mean
from lorafleet.federated.secure import SecureRound
from lorafleet.federated.updates import State, add, delta, norm, refusal, scaled, weighted_mean


@dataclass(frozen=True)
class ClientAnswer:
    """What one sampled client sent back: its LoRA state and row count, or the error it reported."""

    client: str  # the client's node id (the ledger writes its name instead)
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

    if federated.privacy is not None:
        total = clipped_sum(updates, global_state, federated.privacy.clip_norm)
        return _private_step(outcome, global_state, total, federated, noise_multiplier, generator)
    if len(states) < federated.min_clients:
        outcome.note = f"{len(states)} accepted answers, fewer than min_clients {federated.min_clients}"
        return outcome
    return _applied(outcome, global_state, weighted_mean(states, weights), federated)


def aggregate_secure_round(
    global_state: State,
    secure: SecureRound,
    federated: FederatedConfig,
    *,
    noise_multiplier: float | None = None,
    generator: torch.Generator | None = None,
) -> RoundOutcome:
    """The global state after a SecAgg+ round (`secure.secure_round`), from the mean update it revealed.

    Each client checked (and under privacy clipped) its own update; the server sees only the weighted mean
    of the K clients that completed the round. Under privacy every client weighs 1, so K × the mean is
    the sum of clipped updates, to which the noise is added as in `aggregate_round`."""
    outcome = RoundOutcome(
        state=global_state, applied=False, accepted=list(secure.contributors), refused=dict(secure.dropped)
    )
    if federated.privacy is not None:
        total = (
            scaled(secure.mean, float(len(secure.contributors)))
            if secure.mean is not None
            else clipped_sum([], global_state, federated.privacy.clip_norm)
        )
        return _private_step(outcome, global_state, total, federated, noise_multiplier, generator)
    if secure.mean is None:
        outcome.note = secure.note
        return outcome
    if len(secure.contributors) < federated.min_clients:
        outcome.note = (
            f"{len(secure.contributors)} clients completed the round, fewer than min_clients "
            f"{federated.min_clients}"
        )
        return outcome
    return _applied(outcome, global_state, add(global_state, secure.mean), federated)


def _private_step(
    outcome: RoundOutcome,
    global_state: State,
    total: State,
    federated: FederatedConfig,
    noise_multiplier: float | None,
    generator: torch.Generator | None,
) -> RoundOutcome:
    """`outcome` with w_global + (total + N(0, σ²C²)) / (q·N) applied, `total` being a sum of updates
    each clipped to C."""
    assert federated.privacy is not None
    if noise_multiplier is None or generator is None:
        raise ValueError("a private round needs its noise multiplier and a generator")
    mean = noised_mean(
        total,
        clip_norm=federated.privacy.clip_norm,
        noise_multiplier=noise_multiplier,
        expected_clients=federated.expected_clients(),
        generator=generator,
    )
    return _applied(outcome, global_state, add(global_state, mean), federated)


def _applied(
    outcome: RoundOutcome, global_state: State, new_state: State, federated: FederatedConfig
) -> RoundOutcome:
    """`outcome` with `new_state` applied, unless its update w − w_global fails the checks."""
    applied = delta(new_state, global_state)
    reason = refusal(applied, max_norm=federated.max_update_norm)
    if reason is not None:
        outcome.note = f"aggregate refused: {reason}"
        return outcome
    outcome.state, outcome.applied, outcome.update_norm = new_state, True, norm(applied)
    return outcome
