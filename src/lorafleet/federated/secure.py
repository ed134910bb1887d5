"""Secure aggregation of a round with Flower's SecAgg+ protocol (`federated.secure_aggregation`).

    server  `secure_round`: Flower's `SecAggPlusWorkflow` over the round's sampled clients, driven by a
            one-round `Strategy`: its configure_fit hands the workflow the global LoRA and the round's
            settings, its aggregate_fit receives the unmasked weighted mean of the clients' updates,
            the only thing the server learns
    client  `secure_mod`: the ClientApp mod that passes SecAgg+ messages to Flower's `secaggplus_mod`
            (plain rounds go straight to the app); `masked_answer`: what that mod quantizes and masks,
            the client's update Δ = w_client − w_global (clipped to C by the client under privacy,
            since the server can no longer clip it) with its weight

The workflow speaks Flower's legacy FitIns/FitRes records, so the LoRA travels as arrays in the sorted
order of its PEFT key names (the round's `lora-keys`). A client refuses to send an update that is not
finite, too large (`max_update_norm`) or outside ±clipping_range: its round fails, and the protocol
removes its masks through the secret shares its neighbours hold and completes with the others.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import torch

from lorafleet.federated.config import FederatedConfig, SecureAggregationConfig
from lorafleet.federated.exchange import send_and_receive
from lorafleet.federated.privacy import clip
from lorafleet.federated.updates import State, delta, refusal

if TYPE_CHECKING:
    from flwr.server.strategy import Strategy

LORA_KEYS = "lora-keys"
FITINS_PARAMETERS = "fitins.parameters"  # where Flower's legacy records put FitIns' arrays


@dataclass
class SecureRound:
    """What a SecAgg+ round revealed: the weighted mean update of the clients that completed it (None
    when the protocol halted), who they were, who dropped out and why, and the bytes each way."""

    mean: State | None = None
    contributors: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    bytes_down: int = 0
    bytes_up: int = 0
    note: str | None = None


def secure_round(
    grid: Any,
    sampled: list[int],
    global_state: State,
    settings: dict[str, Any],
    federated: FederatedConfig,
    round_number: int,
) -> SecureRound:
    """Run one SecAgg+ round of `sampled` (at least two) from `global_state`; see the module docstring."""
    from flwr.app import ConfigRecord, Context, RecordDict
    from flwr.common import FitIns, ndarrays_to_parameters
    from flwr.compat.common import recorddict_compat as compat
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
    from flwr.server.workflow.constant import Key as WorkflowKey

    secure = federated.secure_aggregation
    assert secure is not None
    result = SecureRound()
    if len(sampled) < 2:
        result.note = f"{len(sampled)} client(s) sampled; SecAgg+ needs at least 2"
        return result
    keys = sorted(global_state)
    parameters = ndarrays_to_parameters([global_state[key].numpy() for key in keys])
    instructions = FitIns(parameters, {**settings, LORA_KEYS: json.dumps(keys)})
    state = RecordDict(
        {
            MAIN_CONFIGS_RECORD: ConfigRecord({WorkflowKey.CURRENT_ROUND: round_number}),
            MAIN_PARAMS_RECORD: compat.parameters_to_arrayrecord(parameters, True),
        }
    )
    counting = _CountingGrid(grid, result)
    strategy = _OneRound(sampled, instructions, counting)
    context = LegacyContext(  # the workflow calls only the strategy's configure_fit and aggregate_fit
        Context(run_id=0, node_id=0, node_config={}, state=state, run_config={}),
        strategy=cast("Strategy", strategy),
    )
    workflow(secure, federated.round_timeout)(counting, context)
    if strategy.aggregate is not None:
        result.mean = {
            key: torch.as_tensor(array, dtype=torch.float32)
            for key, array in zip(keys, strategy.aggregate, strict=True)
        }
        result.contributors = strategy.contributors
    else:
        result.note = "SecAgg+ halted: too few clients completed the protocol to unmask the sum"
    for node in sampled:
        if str(node) not in result.contributors:
            result.dropped.setdefault(str(node), "dropped out of the SecAgg+ round")
    return result


def workflow(secure: SecureAggregationConfig, timeout: float) -> Any:
    """Flower's SecAgg+ workflow with the recipe's settings."""
    from flwr.server.workflow import SecAggPlusWorkflow

    return SecAggPlusWorkflow(
        num_shares=secure.shares,
        reconstruction_threshold=secure.threshold,
        max_weight=float(secure.max_weight),
        clipping_range=secure.clipping_range,
        quantization_range=secure.quantization_range,
        timeout=timeout,
    )


def secure_mod(message: Any, context: Any, call_next: Any) -> Any:
    """A ClientApp mod: SecAgg+ messages (they carry its config record) go through Flower's
    `secaggplus_mod`, every other message straight to the app."""
    from flwr.client.mod import secaggplus_mod
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    if RECORD_KEY_CONFIGS in message.content.config_records:
        return secaggplus_mod(message, context, call_next)
    return call_next(message, context)


def is_secure(message: Any) -> bool:
    """Whether `message` is the training step of a SecAgg+ round (legacy FitIns records)."""
    return FITINS_PARAMETERS in message.content.array_records


def round_inputs(message: Any) -> tuple[dict[str, Any], State]:
    """The round's settings and the global LoRA state carried by a SecAgg+ training message."""
    from flwr.common import parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    instructions = compat.recorddict_to_fitins(message.content, keep_input=True)
    settings = dict(instructions.config)
    keys = json.loads(str(settings[LORA_KEYS]))
    arrays = parameters_to_ndarrays(instructions.parameters)
    return settings, {key: torch.as_tensor(array).float() for key, array in zip(keys, arrays, strict=True)}


def masked_answer(
    state: State, global_state: State, examples: int, loss: float, federated: FederatedConfig
) -> Any:
    """The FitRes records `secaggplus_mod` masks: this client's update (clipped to C under privacy) in
    the order of the round's keys, weighted by its rows (capped at max_weight; 1 under privacy).
    Raises `ValueError` for an update the client must not send."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.compat.common import recorddict_compat as compat

    secure, privacy = federated.secure_aggregation, federated.privacy
    assert secure is not None
    update = delta(state, global_state)
    reason = refusal(update, max_norm=federated.max_update_norm)
    if reason is not None:
        raise ValueError(f"this client's update is not sent: {reason}")
    if privacy is not None:
        update = clip(update, privacy.clip_norm)
    largest = max(float(tensor.abs().max()) for tensor in update.values())
    if largest > secure.clipping_range:
        raise ValueError(
            f"this client's update is not sent: a value of {largest:.4g} lies outside "
            f"±{secure.clipping_range:g} (federated.secure_aggregation.clipping_range)"
        )
    weight = 1 if privacy is not None else min(examples, secure.max_weight)
    keys = sorted(global_state)
    parameters = ndarrays_to_parameters([update[key].numpy() for key in keys])
    return compat.fitres_to_recorddict(
        FitRes(Status(Code.OK, ""), parameters, weight, {"train-loss": loss}), keep_input=False
    )


class _OneRound:
    """The legacy `Strategy` the SecAgg+ workflow calls for one round: it sends `instructions` to the
    sampled nodes and keeps the unmasked aggregate."""

    def __init__(self, sampled: list[int], instructions: Any, grid: Any) -> None:
        self.sampled, self.instructions, self.grid = sampled, instructions, grid
        self.aggregate: list[Any] | None = None
        self.contributors: list[str] = []

    def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> list[Any]:
        from flwr.server.compat.grid_client_proxy import GridClientProxy

        return [(GridClientProxy(node, self.grid, 0), self.instructions) for node in self.sampled]

    def aggregate_fit(self, server_round: int, results: list[Any], failures: list[Any]) -> Any:
        from flwr.common import parameters_to_ndarrays

        if not results:
            return None, {}
        parameters = results[0][1].parameters  # the workflow puts the unmasked mean into every result
        self.aggregate = parameters_to_ndarrays(parameters)
        self.contributors = [proxy.cid for proxy, _ in results]
        return parameters, {}


class _CountingGrid:
    """A Grid that counts the bytes of every message each way into `result` and notes each node's error."""

    def __init__(self, grid: Any, result: SecureRound) -> None:
        self.grid, self.result = grid, result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Any]:
        messages = list(messages)
        self.result.bytes_down += sum(message_bytes(message.content) for message in messages)
        replies = send_and_receive(self.grid, messages, timeout=timeout)
        for reply in replies:
            if reply.has_error():
                node = str(reply.metadata.src_node_id)
                self.result.dropped[node] = f"client failed: {last_line(reply.error.reason)}"
            else:
                self.result.bytes_up += message_bytes(reply.content)
        return replies


def message_bytes(content: Any) -> int:
    """Bytes of the arrays and byte strings in a message's records (what dominates its size)."""
    total = sum(record.count_bytes() for record in content.array_records.values())
    for record in content.config_records.values():
        for value in record.values():
            values = value if isinstance(value, list) else [value]
            total += sum(len(item) for item in values if isinstance(item, bytes))
    return int(total)


def last_line(text: str) -> str:
    """The last non-blank line of an error's text (a traceback's message), at most 300 characters."""
    lines = [line for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else text)[:300]
