"""`lorafleet federate` (a simulated federation on this machine) and `lorafleet fl server` / `fl client`
(the same run as separate processes over the network)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from lorafleet.cli.platform import DatabaseOption, TenantOption

app = typer.Typer(help="Federated runs as separate processes: a server and clients beside their data.")

RecipeArg = Annotated[Path, typer.Argument(help="A YAML recipe with a federated: section.")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override any recipe field: --set federated.rounds=20 (repeatable)."),
]
OverwriteOption = Annotated[bool, typer.Option(help="Replace an existing adapter of the same name.")]


def federate(
    recipe: RecipeArg,
    overrides: SetOption = None,
    overwrite: OverwriteOption = False,
    tenant: TenantOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Simulate the recipe's federated run on this machine: federated.clients clients, client k reading
    data.path with {client} → k; with --tenant, the adapter is registered as a version (lineage federated)."""
    from lorafleet.federated.simulation import federate as run_federated
    from lorafleet.training import load_config

    config = load_config(recipe, [*(overrides or []), *(["output.overwrite=true"] if overwrite else [])])
    result = run_federated(config)
    _finish(config, result, tenant, database_url)


@app.command("server")
def server(
    recipe: RecipeArg,
    overrides: SetOption = None,
    overwrite: OverwriteOption = False,
    host: Annotated[str, typer.Option(help="Address the server listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port clients connect to.")] = 9092,
    timeout: Annotated[
        float | None, typer.Option(help="Give up when the run has not finished after this many seconds.")
    ] = None,
    tenant: TenantOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Run the recipe's federated rounds as a server: wait for federated.clients clients (`lorafleet fl
    client`), train, save the adapter; with --tenant, register it as a version (lineage federated)."""
    from lorafleet.federated.deployment import serve
    from lorafleet.training import load_config

    every = [*(overrides or []), *(["output.overwrite=true"] if overwrite else [])]
    config = load_config(recipe, every)
    result = serve(recipe, config, overrides=every, host=host, port=port, timeout=timeout)
    _finish(config, result, tenant, database_url)


@app.command("client")
def client(
    data: Annotated[Path, typer.Option("--data", help="This client's training rows; they never leave it.")],
    server: Annotated[str, typer.Option(help="The server's host:port.")] = "127.0.0.1:9092",
    port: Annotated[
        int, typer.Option(help="This client's own local port (one per client on a machine).")
    ] = 9094,
    name: Annotated[
        str | None,
        typer.Option(
            help="This client's name in the server's ledger and log; the seeded sampler draws clients in "
            "name order, so named clients are sampled alike in every run (default: its node id)."
        ),
    ] = None,
) -> None:
    """Join a federated run: train on --data whenever the server samples this client, until stopped."""
    from lorafleet.federated.deployment import join

    join(data, server=server, port=port, name=name)


def _finish(config: Any, result: Any, tenant: str | None, database_url: str | None) -> None:
    summary = result.summary
    lineage = summary["federated"]
    epsilon = "" if lineage["epsilon"] is None else f", ε {lineage['epsilon']:.3f} at δ {lineage['delta']:g}"
    typer.echo(
        f"federated adapter saved to {result.adapter_dir}: {lineage['rounds']} rounds, {lineage['clients']} "
        f"clients{epsilon}, {summary['bytes_communicated'] / 1e6:.1f} MB communicated; "
        f"ledger {summary['ledger']}"
    )
    if summary["stopped"]:
        typer.echo(f"stopped early: {summary['stopped']}")
    if tenant is None:
        return
    from lorafleet.federated.registration import register_federated
    from lorafleet.registry import Registry

    registry = Registry(database_url)
    try:
        version = register_federated(registry, registry.tenants.get(tenant).id, config, result)
        typer.echo(f"registered {config.output.name}@{version.number} (lineage federated)")
    finally:
        registry.close()
