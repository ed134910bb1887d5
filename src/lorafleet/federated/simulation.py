"""`federate(config)`: a federated run on one machine, its clients simulated by Flower's simulation engine.

`federated.clients` SuperNodes are simulated; client k reads data.path with `{client}` replaced by k
(`lorafleet data example DIR --federated N` writes such files). The ServerApp runs in this process, the
ClientApps in Ray actors, one per `client_cpus` cores, each loading the base model once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from lorafleet.errors import ConfigError
from lorafleet.federated.server import FederatedError, FederatedResult
from lorafleet.training.config import FinetuneConfig


def federate(
    config: FinetuneConfig,
    *,
    client_app: Any = None,
    client_cpus: int | None = None,
    log: Callable[[str], None] = print,
) -> FederatedResult:
    """Simulate `config`'s federated run and return its result; `client_app` replaces lorafleet's own
    ClientApp (tests use one that misbehaves)."""
    from flwr.simulation import run_simulation

    from lorafleet.federated.apps import client_app as lorafleet_client_app
    from lorafleet.federated.apps import server_app

    check_simulated_data(config)
    outcome: list[FederatedResult | BaseException] = []
    cpus = client_cpus or os.cpu_count() or 1
    run_simulation(
        server_app(config, on_result=outcome.append, log=log),
        client_app or lorafleet_client_app(),
        num_supernodes=config.federated.clients,
        backend_config={"client_resources": {"num_cpus": cpus, "num_gpus": 0.0}},
    )
    if not outcome:
        raise FederatedError("the federated simulation ended without a result; see Flower's log above")
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def check_simulated_data(config: FinetuneConfig) -> None:
    """Raise `ConfigError` unless data.path names each simulated client's rows through `{client}`."""
    path = config.data.path
    if "{client" not in path:
        raise ConfigError(
            f"data.path: {path!r} must hold {{client}} (e.g. data/fed/client-{{client:02d}}/train.jsonl) "
            "so each simulated client reads its own rows; `lorafleet data example DIR --federated N` "
            "writes them",
            field="data.path",
        )
    try:
        first = path.format(client=0)
    except (KeyError, IndexError, ValueError) as err:
        raise ConfigError(f"data.path: {path!r} is not a valid pattern ({err})", field="data.path") from err
    missing = [k for k in range(config.federated.clients) if not os.path.exists(path.format(client=k))]
    if missing:
        raise ConfigError(
            f"data.path: no rows for client {missing[0]} ({path.format(client=missing[0])}); "
            f"federated.clients is {config.federated.clients} (client 0 reads {first})",
            field="data.path",
        )
