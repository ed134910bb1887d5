"""lorafleet's Flower apps: the ServerApp runs `server.run_rounds`, the ClientApp answers each round with
`client.train_locally` on the client's own rows, and the server's roll-call with the client's name
(`client_name`).

A client finds its rows in its node config: `data-path` (a SuperNode started by `lorafleet fl client
--data FILE`), or, simulated, `partition-id` k put into the recipe's data.path (`{client}` → k). The
recipe travels with every round as JSON, so a client is configured by the server it trusts and its rows.

`server` and `client` are the module-level apps a Flower App (`deployment`) names as its components; they
read the recipe from the run config (`recipe`: a YAML file, `overrides`: `--set` lines joined by newlines).
"""

from __future__ import annotations

import json
import traceback
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorafleet.federated.exchange import NAME_RECORD

if TYPE_CHECKING:  # the rest is imported where it is used: Flower starts a process per message, and a
    # roll-call answer needs none of torch, transformers or PEFT
    from lorafleet.federated.server import FederatedResult
    from lorafleet.training.config import FinetuneConfig

_LOCAL_MODELS: dict[str, Any] = {}  # recipe's model/LoRA → LocalModel, one per process
_CLIENT_ROWS: dict[tuple[str, str], Any] = {}  # (recipe's data settings, path) → ClientRows


def server_app(
    config: FinetuneConfig | None = None,
    *,
    on_result: Callable[[FederatedResult | BaseException], None] | None = None,
    log: Callable[[str], None] = print,
) -> Any:
    """A ServerApp running `config` (default: the run config's recipe); `on_result` gets the result or
    the exception that ended the run, which is also written to the run directory for another process."""
    from flwr.serverapp import ServerApp

    app = ServerApp()

    @app.main()
    def main(grid: Any, context: Any) -> None:
        from lorafleet.federated.server import ERROR_FILE, run_rounds

        recipe = config or recipe_from_run_config(dict(context.run_config))
        try:
            result: FederatedResult | BaseException = run_rounds(grid, recipe, log=log)
        except Exception as err:  # reported to the caller, which may be another process
            recipe.run_dir().mkdir(parents=True, exist_ok=True)
            (recipe.run_dir() / ERROR_FILE).write_text(f"{err}\n\n{traceback.format_exc()}")
            result = err
        if on_result is not None:
            on_result(result)

    return app


def client_app(train: Callable[[Any, Any], Any] | None = None) -> Any:
    """A ClientApp answering `train` messages with `answer` (tests pass another `train` to misbehave);
    SecAgg+ rounds go through `secure.secure_mod`."""
    from flwr.clientapp import ClientApp

    from lorafleet.federated.secure import secure_mod

    app = ClientApp(mods=[secure_mod])
    app.train()(train or answer)
    app.query()(introduce)
    return app


def introduce(message: Any, context: Any) -> Any:
    """Answer the server's roll-call (`exchange.roll_call`) with this client's name (`client_name`)."""
    from flwr.app import ConfigRecord, Message, RecordDict

    name = ConfigRecord({"name": client_name(dict(context.node_config))})
    return Message(RecordDict({NAME_RECORD: name}), reply_to=message)


def client_name(node_config: dict[str, Any]) -> str:
    """How the server and its ledger know this client: the node's `name` (`lorafleet fl client --name`),
    `client-k` for simulated client k, else nothing (the server then uses its node id)."""
    if "name" in node_config:
        return str(node_config["name"])
    if "partition-id" in node_config:
        return f"client-{int(node_config['partition-id'])}"
    return ""


def answer(message: Any, context: Any) -> Any:
    """Train on this client's rows from the round's global LoRA; reply with the LoRA, row count and loss
    (under SecAgg+: the update, for `secaggplus_mod` to mask)."""
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

    from lorafleet.federated.client import train_locally
    from lorafleet.federated.secure import is_secure, masked_answer, round_inputs
    from lorafleet.training.config import parse_config

    secure = is_secure(message)
    if secure:
        settings, global_state = round_inputs(message)
    else:
        settings = dict(message.content["round"])
        global_state = {
            key: tensor.float() for key, tensor in message.content["lora"].to_torch_state_dict().items()
        }
    recipe = parse_config(json.loads(str(settings["recipe"])), source="the server's recipe")
    node_config = dict(context.node_config)
    path = client_data_path(recipe, node_config)
    local = _local_model(recipe)
    rows = _client_rows(recipe, path, local.tokenizer)
    update = train_locally(
        local,
        rows,
        global_state,
        steps=int(settings["local-steps"]),
        learning_rate=float(settings["learning-rate"]),
        first_step=(int(settings["round"]) - 1) * int(settings["local-steps"]),
        total_steps=int(settings["rounds"]) * int(settings["local-steps"]),
        proximal_mu=float(settings["proximal-mu"]),
        seed=recipe.training.seed + 7919 * int(settings["round"]) + _client_seed(node_config, path),
    )
    if secure:
        content = masked_answer(update.state, global_state, update.examples, update.loss, recipe.federated)
    else:
        metrics = MetricRecord({"num-examples": update.examples, "train-loss": update.loss})
        content = RecordDict({"lora": ArrayRecord(torch_state_dict=update.state), "metrics": metrics})
    return Message(content, reply_to=message)


def _client_seed(node_config: dict[str, Any], path: str) -> int:
    """What sets this client's draws apart from the others' in a round, the same in every run: from its
    name, else from the path of its rows (never from the node id Flower drew for it)."""
    return zlib.crc32((client_name(node_config) or path).encode()) % 7919


def client_data_path(recipe: FinetuneConfig, node_config: dict[str, Any]) -> str:
    """This client's rows: the node's `data-path`, or data.path with `{client}` → its `partition-id`."""
    if "data-path" in node_config:
        return str(node_config["data-path"])
    return recipe.data.path.format(client=int(node_config["partition-id"]))


def recipe_from_run_config(run_config: dict[str, Any]) -> FinetuneConfig:
    """The recipe a deployed ServerApp runs: the run config's `recipe` file and `overrides` lines."""
    from lorafleet.training.config import load_config

    overrides = [line for line in str(run_config.get("overrides", "")).splitlines() if line.strip()]
    return load_config(str(run_config["recipe"]), overrides)


def read_outcome(run_dir: Path) -> dict[str, Any] | str | None:
    """What a ServerApp in another process left in `run_dir`: its summary, its error text, or None yet."""
    from lorafleet.federated.server import ERROR_FILE, SUMMARY_FILE

    error = run_dir / ERROR_FILE
    if error.is_file():
        return error.read_text()
    summary = run_dir / SUMMARY_FILE
    if summary.is_file():
        loaded: dict[str, Any] = json.loads(summary.read_text())
        return loaded
    return None


def _local_model(recipe: FinetuneConfig) -> Any:
    from lorafleet.federated.client import LocalModel

    key = json.dumps(
        [
            recipe.model.model_dump(mode="json"),
            recipe.lora.model_dump(mode="json"),
            recipe.training.seed,
            recipe.training.mixed_precision,
        ]
    )
    if key not in _LOCAL_MODELS:
        _LOCAL_MODELS.clear()  # one base per process
        _CLIENT_ROWS.clear()
        _LOCAL_MODELS[key] = LocalModel.load(recipe, trains=True)
    return _LOCAL_MODELS[key]


def _client_rows(recipe: FinetuneConfig, path: str, tokenizer: Any) -> Any:
    from lorafleet.federated.client import ClientRows

    key = (recipe.data.model_dump_json() + recipe.training.model_dump_json(), path)
    if key not in _CLIENT_ROWS:
        _CLIENT_ROWS[key] = ClientRows.read(recipe, path, tokenizer)
    return _CLIENT_ROWS[key]


server = server_app()  # the components a deployed Flower App names (`deployment.write_app`)
client = client_app()
