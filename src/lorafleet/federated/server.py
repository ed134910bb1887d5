"""The server side of a federated run: the rounds, as a Flower ServerApp runs them on its `Grid`.

    setup   load the base with a fresh LoRA (the initial global state), the server's validation rows, σ
            (from the ε budget, `privacy.noise_for_budget`); wait until `federated.clients` clients are up
    rounds  for r = 1..R: stop if ε after r would exceed the budget; ask clients not yet known their names
            (`exchange.roll_call`); sample clients (`ClientSampler`: Poisson under privacy, else
            fraction × clients of them in name order, each once per pass, seeded); send the global
            LoRA tensors; collect answers until `round_timeout`; aggregate (`rounds.aggregate_round`), or
            run the round through SecAgg+ (`secure.secure_round`, `rounds.aggregate_secure_round`); score
            the validation rows; write the ledger entry (clients by name)
    finish  score the held-out rows (`eval.metric` on `eval.test_path`), save the adapter with lineage
            `federated` (clients, rounds, ε, δ) and write `federated.json` beside the ledger

Only LoRA tensors travel: the recipe (as JSON) and the round's settings go with them, so a client needs
nothing but the base model and its own rows.
"""

from __future__ import annotations

import json
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lorafleet.errors import AlreadyExistsError, LorafleetError
from lorafleet.federated.client import LocalModel
from lorafleet.federated.config import FederatedConfig
from lorafleet.federated.exchange import roll_call, send_and_receive
from lorafleet.federated.ledger import LEDGER_FILE, Ledger, LedgerEntry
from lorafleet.federated.privacy import epsilon_spent, noise_for_budget
from lorafleet.federated.rounds import ClientAnswer, aggregate_round, aggregate_secure_round
from lorafleet.federated.secure import last_line, secure_round
from lorafleet.federated.updates import State
from lorafleet.training.config import FinetuneConfig

SUMMARY_FILE = "federated.json"
ERROR_FILE = "federated-error.txt"
TRAIN_MESSAGE = "train"


class FederatedError(LorafleetError):
    """A federated run could not go on: too few clients connected, the run failed, the budget is too small."""


@dataclass(frozen=True)
class FederatedResult:
    """Where the adapter, ledger and summary are, and what the run spent."""

    adapter_dir: Path
    run_dir: Path
    summary: dict[str, Any]


def run_rounds(grid: Any, config: FinetuneConfig, *, log: Callable[[str], None] = print) -> FederatedResult:
    """Run `config`'s federated rounds over `grid` (a Flower `Grid`); see the module docstring."""
    federated, privacy = config.federated, config.federated.privacy
    started = time.perf_counter()
    run_dir, adapter_dir = config.run_dir(), config.adapter_dir()
    if adapter_dir.exists() and not config.output.overwrite:
        raise AlreadyExistsError(
            f"{adapter_dir}: adapter {config.output.name!r} exists; set output.overwrite (--overwrite) "
            "or choose another output.name"
        )
    for name in (SUMMARY_FILE, ERROR_FILE):  # what an earlier run left for another process to read
        (run_dir / name).unlink(missing_ok=True)
    sigma = _noise_multiplier(config)
    local = LocalModel.load(config)
    global_state = local.state()
    validation = _validation_rows(config, local.tokenizer)
    nodes = _wait_for_clients(grid, federated.clients, timeout=federated.round_timeout, log=log)
    names: dict[int, str] = {}  # node id → the client's name
    ledger = Ledger(run_dir / LEDGER_FILE)
    sampler = ClientSampler(federated, seed=config.training.seed)
    noise = torch.Generator().manual_seed(secrets.randbits(63))  # DP noise must not be predictable
    epsilon, stopped = 0.0 if privacy is not None else None, None
    log(_describe(config, sigma, len(nodes)))
    for round_number in range(1, federated.rounds + 1):
        clock = time.perf_counter()
        if privacy is not None and sigma is not None:
            after = epsilon_spent(
                noise_multiplier=sigma,
                sample_rate=federated.fraction,
                rounds=round_number,
                delta=privacy.delta,
            )
            if privacy.epsilon is not None and after > privacy.epsilon:
                stopped = (
                    f"round {round_number} would spend ε {after:.3f}, over the budget {privacy.epsilon:g}"
                )
                log(f"stopping: {stopped}")
                break
            epsilon = after
        nodes = list(grid.get_node_ids())
        roll_call(grid, nodes, names, timeout=federated.round_timeout)
        sampled = sampler.sample(sorted(nodes, key=names.__getitem__))
        settings = _round_settings(config, round_number)
        if federated.secure_aggregation is not None:
            secure = secure_round(grid, sampled, global_state, settings, federated, round_number)
            bytes_down, bytes_up = secure.bytes_down, secure.bytes_up
            outcome = aggregate_secure_round(
                global_state, secure, federated, noise_multiplier=sigma, generator=noise
            )
        else:
            answers, bytes_down, bytes_up = _exchange(grid, sampled, global_state, settings, config)
            outcome = aggregate_round(
                global_state, answers, federated, noise_multiplier=sigma, generator=noise
            )
        global_state = outcome.state
        loss = _validation_loss(local, global_state, validation, config) if validation else None
        entry = LedgerEntry(  # a round labels its clients by node id (str), the ledger by name
            round=round_number,
            sampled=[names[node] for node in sampled],
            accepted=[names[int(client)] for client in outcome.accepted],
            refused={names[int(client)]: reason for client, reason in outcome.refused.items()},
            applied=outcome.applied,
            bytes_down=bytes_down,
            bytes_up=bytes_up,
            epsilon=epsilon,
            validation_loss=loss,
            update_norm=outcome.update_norm,
            wall_seconds=round(time.perf_counter() - clock, 3),
            note=outcome.note,
        )
        ledger.write(entry)
        log(_describe_round(entry, federated.rounds))
        for client, reason in entry.refused.items():
            log(f"  refused client {client}: {reason}")
    local.load_state(global_state)
    evaluation = _evaluate(config, local, log)
    rounds_run = len(ledger.entries)
    lineage = {
        "clients": len(nodes),
        "rounds": rounds_run,
        "epsilon": epsilon,
        "delta": privacy.delta if privacy is not None else None,
        "noise_multiplier": sigma,
        "strategy": federated.strategy,
        "fraction": federated.fraction,
        "local_steps": federated.local_steps,
    }
    _save(config, local, adapter_dir, lineage, evaluation)
    summary = {
        "adapter": str(adapter_dir),
        "run_dir": str(run_dir),
        "ledger": str(run_dir / LEDGER_FILE),
        "federated": lineage,
        "stopped": stopped,
        "evaluation": evaluation,
        "bytes_communicated": ledger.bytes_total(),
        "final_validation_loss": ledger.entries[-1].validation_loss if ledger.entries else None,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "rounds": [asdict(entry) for entry in ledger.entries],
    }
    (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return FederatedResult(adapter_dir=adapter_dir, run_dir=run_dir, summary=summary)


def _noise_multiplier(config: FinetuneConfig) -> float | None:
    """σ of the run: the recipe's, or the smallest that keeps `rounds` rounds within the ε budget."""
    federated, privacy = config.federated, config.federated.privacy
    if privacy is None:
        return None
    if privacy.noise_multiplier is not None:
        return privacy.noise_multiplier
    assert privacy.epsilon is not None  # the schema asks for one of the two
    try:
        return noise_for_budget(
            epsilon=privacy.epsilon,
            delta=privacy.delta,
            sample_rate=federated.fraction,
            rounds=federated.rounds,
        )
    except ValueError as err:  # Opacus: no σ reaches so small an ε
        raise FederatedError(f"federated.privacy.epsilon: {err}") from err


def _wait_for_clients(grid: Any, count: int, *, timeout: float, log: Callable[[str], None]) -> list[int]:
    """The connected clients' node ids once `count` are connected; `FederatedError` after `timeout` s."""
    deadline, said = time.monotonic() + timeout, -1
    while len(nodes := list(grid.get_node_ids())) < count:
        if len(nodes) != said:
            log(f"waiting for clients: {len(nodes)} of {count} connected")
            said = len(nodes)
        if time.monotonic() > deadline:
            raise FederatedError(
                f"federated.clients: only {len(nodes)} of {count} clients connected within "
                f"{timeout:g} s (federated.round_timeout); start more clients or lower federated.clients"
            )
        time.sleep(0.2)
    return nodes


class ClientSampler:
    """Who takes part in each round.

    Under privacy every client independently with probability q = fraction (Poisson sampling, what the
    accountant assumes), from the system's random source. Otherwise round(q·N) clients (at least
    min_clients) drawn without replacement across rounds: every client takes part once before any takes
    part twice, so with non-IID clients no client's rows sit out for long. That draw is seeded
    (training.seed) and taken from `nodes` in the order given: the server gives them in name order, so
    the same seed draws the same clients again."""

    def __init__(self, federated: FederatedConfig, *, seed: int) -> None:
        self.federated = federated
        self.random = random.SystemRandom() if federated.privacy is not None else random.Random(seed)
        self.waiting: list[int] = []  # this pass's clients not yet sampled

    def sample(self, nodes: list[int]) -> list[int]:
        federated = self.federated
        if federated.privacy is not None:
            return [node for node in nodes if self.random.random() < federated.fraction]
        count = min(len(nodes), max(federated.min_clients, round(federated.fraction * len(nodes))))
        self.waiting = [node for node in self.waiting if node in nodes]  # a client may have left
        chosen: list[int] = []
        while len(chosen) < count:
            if not self.waiting:  # a new pass over the clients not chosen for this round
                self.waiting = [node for node in nodes if node not in chosen]
                self.random.shuffle(self.waiting)
            chosen.append(self.waiting.pop())
        return chosen


def _round_settings(config: FinetuneConfig, round_number: int) -> dict[str, Any]:
    """What a client needs besides the LoRA: the recipe (as JSON) and the round's training settings."""
    federated = config.federated
    return {
        "recipe": json.dumps(config.model_dump(mode="json", exclude_unset=True)),
        "round": round_number,
        "rounds": federated.rounds,
        "local-steps": federated.local_steps,
        "learning-rate": config.training.learning_rate,
        "proximal-mu": federated.proximal_mu if federated.strategy == "fedprox" else 0.0,
    }


def _exchange(
    grid: Any, sampled: list[int], global_state: State, settings: dict[str, Any], config: FinetuneConfig
) -> tuple[list[ClientAnswer], int, int]:
    """Send the global LoRA to `sampled`, collect their answers: (answers, bytes down, bytes up)."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

    if not sampled:
        return [], 0, 0
    federated = config.federated
    arrays = ArrayRecord(torch_state_dict=global_state)
    messages = [
        Message(
            RecordDict({"lora": arrays, "round": ConfigRecord(settings)}),
            dst_node_id=node,
            message_type=TRAIN_MESSAGE,
        )
        for node in sampled
    ]
    replies = send_and_receive(grid, messages, timeout=federated.round_timeout)
    answers, bytes_up, answered = [], 0, set()
    for reply in replies:
        node = reply.metadata.src_node_id
        answered.add(node)
        if reply.has_error():
            answers.append(ClientAnswer(str(node), error=f"client failed: {last_line(reply.error.reason)}"))
            continue
        try:
            lora = reply.content["lora"]
            bytes_up += lora.count_bytes()
            metrics = reply.content["metrics"]
            state = {key: tensor.float() for key, tensor in lora.to_torch_state_dict().items()}
            answers.append(ClientAnswer(str(node), state=state, examples=int(metrics["num-examples"])))
        except (KeyError, TypeError, ValueError) as err:
            answers.append(ClientAnswer(str(node), error=f"malformed answer ({err})"))
    for node in sampled:
        if node not in answered:
            answers.append(ClientAnswer(str(node), error=f"no answer within {federated.round_timeout:g} s"))
    return answers, arrays.count_bytes() * len(sampled), bytes_up


def _validation_rows(config: FinetuneConfig, tokenizer: Any) -> list[Any]:
    """The server's validation rows (data.validation_path, else eval.test_path; at most
    federated.validation_rows of them), tokenized."""
    path, rows = config.data.validation_path or config.eval.test_path, config.federated.validation_rows
    if path is None or rows == 0:
        return []
    from lorafleet.data import prepare_data

    data = config.data.model_copy(
        update={"path": path, "validation_path": None, "validation_fraction": 0.0, "max_rows": rows}
    )
    return prepare_data(data, tokenizer).train


def _validation_loss(local: LocalModel, state: State, rows: list[Any], config: FinetuneConfig) -> float:
    from lorafleet.training.evaluate import validation_loss

    local.load_state(state)
    loss, _ = validation_loss(
        local.model,
        rows,
        batch_size=config.eval.batch_size,
        pad_token_id=local.tokenizer.pad_token_id,
        max_length=config.data.max_length,
    )
    return round(loss, 5)


def _evaluate(config: FinetuneConfig, local: LocalModel, log: Callable[[str], None]) -> dict[str, Any] | None:
    """`eval.metric` of the final global adapter on `eval.test_path` (None when either is unset)."""
    if config.eval.metric == "none" or config.eval.test_path is None:
        return None
    from lorafleet.data import read_examples, with_system_prompt
    from lorafleet.training.evaluate import evaluate_model, headline

    read = read_examples(config.eval.test_path)
    examples = [with_system_prompt(e, config.data.system_prompt) for e in read.examples]
    examples = [e for e in examples if e.reference is not None][: config.eval.generation_rows]
    result = evaluate_model(
        local.model,
        local.tokenizer,
        validation=[],
        examples=examples,
        metric=config.eval.metric,
        max_length=config.data.max_length,
        max_new_tokens=config.eval.max_new_tokens,
        batch_size=config.eval.batch_size,
    )
    log("federated adapter: " + ", ".join(f"{k} {v:.3f}" for k, v in headline(result).items()))
    return result.task


def _save(
    config: FinetuneConfig,
    local: LocalModel,
    adapter_dir: Path,
    lineage: dict[str, Any],
    evaluation: dict[str, Any] | None,
) -> None:
    from lorafleet.adapters import Lineage, save_adapter

    save_adapter(
        local.model,
        adapter_dir,
        name=config.output.name,
        training=config.model_dump(mode="json"),
        metrics={"adapter": evaluation} if evaluation else {},
        lineage=Lineage(method="federated", details=lineage),
        overwrite=config.output.overwrite,
    )


def _describe(config: FinetuneConfig, sigma: float | None, connected: int) -> str:
    federated = config.federated
    text = (
        f"federated {federated.strategy}: {connected} clients, {federated.rounds} rounds, "
        f"fraction {federated.fraction:g}, {federated.local_steps} local steps"
    )
    if federated.privacy is not None and sigma is not None:
        privacy = federated.privacy
        budget = f"ε budget {privacy.epsilon:g}, " if privacy.epsilon is not None else ""
        text += f"; DP: {budget}δ {privacy.delta:g}, σ {sigma:.3f}, C {privacy.clip_norm:g}"
    return text


def _describe_round(entry: LedgerEntry, rounds: int) -> str:
    parts = [f"round {entry.round}/{rounds}: {len(entry.accepted)} of {len(entry.sampled)} accepted"]
    if not entry.applied:
        parts.append(f"not applied ({entry.note})")
    if entry.validation_loss is not None:
        parts.append(f"validation loss {entry.validation_loss:.4f}")
    if entry.epsilon is not None:
        parts.append(f"ε {entry.epsilon:.3f}")
    parts.append(f"{(entry.bytes_down + entry.bytes_up) / 1e6:.1f} MB, {entry.wall_seconds:.1f} s")
    return ", ".join(parts)
