"""`lorafleet adapters`: create, inspect, merge and combine adapter directories; list, promote and roll back
the versions in the registry, set their canary, read their events (through the platform API, see
`cli.platform`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lorafleet.cli import plain_console
from lorafleet.cli.adaptation import policy, rollouts
from lorafleet.cli.evaluation import gate_policy, suites_app
from lorafleet.cli.platform import (
    ApiKeyOption,
    DatabaseOption,
    JsonOption,
    TenantOption,
    UrlOption,
    client_from_options,
    print_json,
    print_table,
    segment,
    when,
)
from lorafleet.cli.routing import canary, events
from lorafleet.errors import ConfigError
from lorafleet.home import lorafleet_home, validate_name

app = typer.Typer(
    help="Create, inspect, merge and combine adapters (PEFT format); list, promote, roll back, canary "
    "registry ones.",
    no_args_is_help=True,
)

app.add_typer(suites_app, name="suites")
app.command("gate-policy")(gate_policy)
app.command("policy")(policy)
app.command("rollouts")(rollouts)
app.command("canary")(canary)
app.command("events")(events)

AdapterArg = Annotated[
    str, typer.Argument(help="Adapter directory, or the name of one in $LORAFLEET_HOME/adapters.")
]
ModelOpt = Annotated[
    str, typer.Option("--model", "-m", help="Base model: 'default', a HF directory, a .gguf file.")
]
OutputOpt = Annotated[
    Path | None, typer.Option("--output", "-o", help="Write here instead of $LORAFLEET_HOME.")
]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing directory there.")]


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Name of the new adapter (letters, digits, '.', '_', '-').")],
    model: ModelOpt = "default",
    r: Annotated[int, typer.Option("--r", "-r", help="LoRA rank.")] = 8,
    alpha: Annotated[float, typer.Option(help="LoRA alpha; the update is scaled by alpha/r.")] = 16.0,
    target: Annotated[
        list[str] | None,
        typer.Option("--target", "-t", help="Module to adapt (repeatable); default all-linear."),
    ] = None,
    quantization: Annotated[str | None, typer.Option(help="'nf4' for a QLoRA adapter.")] = None,
    output: OutputOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Create a new, untrained adapter for a base model (the starting point of training)."""
    from lorafleet.adapters import Lineage, LoraSettings, attach, count_parameters, save_adapter
    from lorafleet.adapters.storage import adapters_dir
    from lorafleet.models import load_base

    validate_name(name, what="adapter name")
    settings = LoraSettings.parse(r=r, alpha=alpha, target_modules=target or "all-linear")
    destination = output or adapters_dir() / name
    base, _ = load_base(model, device="cpu")
    peft_model = attach(base, settings, quantization=quantization)  # type: ignore[arg-type]
    path = save_adapter(
        peft_model, destination, name=name, lineage=Lineage(method="create"), overwrite=overwrite
    )
    typer.echo(f"created {path}  ({count_parameters(peft_model)})")


@app.command("inspect")
def inspect(
    adapter: AdapterArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show an adapter's rank, alpha, targets, parameters, size, base model and lineage."""
    from lorafleet.adapters.inspection import inspect_adapter
    from lorafleet.adapters.storage import adapter_path

    info = inspect_adapter(adapter_path(adapter))
    if as_json:
        typer.echo(json.dumps(info.as_dict(), indent=2))
        return
    table = Table(show_header=False)
    table.add_column()
    table.add_column(overflow="fold")  # paths wrap, never cut short
    rows = {
        "path": info.path,
        "name": info.name or "-",
        "rank / alpha": f"{info.rank} / {info.alpha:g}" + (" (rsLoRA)" if info.use_rslora else ""),
        "targets": ", ".join(info.targets) + f"  ({info.modules} modules)",
        "parameters": f"{info.parameters:,}",
        "size on disk": f"{info.size_bytes / 1024:,.1f} KiB",
        "base model": info.base_model,
        "base fingerprint": (info.base_fingerprint or "unknown (plain PEFT adapter)")[:16],
        "created": info.created_at or "-",
        "lineage": _lineage_text(info.lineage),
    }
    for key, value in rows.items():
        table.add_row(key, value)
    plain_console().print(table)


@app.command("merge")
def merge(
    adapter: AdapterArg,
    name: Annotated[
        str, typer.Option("--name", "-n", help="Name of the merged model in $LORAFLEET_HOME/models.")
    ],
    model: ModelOpt = "default",
    output: OutputOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Merge an adapter into its base and save a standard HF model directory."""
    from lorafleet.adapters import load_adapter
    from lorafleet.adapters.merge import save_merged
    from lorafleet.adapters.storage import adapter_path
    from lorafleet.models import load_base

    validate_name(name, what="model name")
    destination = output or lorafleet_home() / "models" / name
    base, tokenizer = load_base(model, device="cpu", dtype="float32")
    peft_model = load_adapter(base, adapter_path(adapter))
    path = save_merged(peft_model, tokenizer, destination, overwrite=overwrite)
    typer.echo(f"merged model written to {path}  (load it with: lorafleet generate --model {path} ...)")


@app.command("combine")
def combine(
    name: Annotated[str, typer.Argument(help="Name of the new combined adapter.")],
    adapters: Annotated[
        list[str], typer.Option("--from", "-f", help="An adapter to combine (repeat for each).")
    ],
    weight: Annotated[
        list[float] | None,
        typer.Option("--weight", "-w", help="Weight of each --from adapter (default 1 each)."),
    ] = None,
    method: Annotated[
        str, typer.Option(help="linear, cat (exact), svd, ties, dare_linear or dare_ties.")
    ] = "cat",
    rank: Annotated[
        int | None, typer.Option(help="Target rank for svd/ties/dare (default: largest input).")
    ] = None,
    density: Annotated[float, typer.Option(help="Fraction of entries kept by ties/dare.")] = 0.5,
    seed: Annotated[int, typer.Option(help="Seed for dare's random pruning.")] = 0,
    output: OutputOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Combine several adapters of one base into a new adapter with weights."""
    from lorafleet.adapters.combine import combine_adapters
    from lorafleet.adapters.storage import adapter_path, adapters_dir, write_adapter

    validate_name(name, what="adapter name")
    weights = weight or [1.0] * len(adapters)
    paths = [str(adapter_path(a)) for a in adapters]
    config, state, card = combine_adapters(
        paths, weights, method=method, rank=rank, density=density, seed=seed
    )
    card = card.model_copy(update={"name": name})
    path = write_adapter(output or adapters_dir() / name, config, state, card, overwrite=overwrite)
    typer.echo(f"combined {len(paths)} adapters ({method}, rank {config.r}) into {path}")


RegistryNameArg = Annotated[str, typer.Argument(help="The adapter's name in the registry.")]
AliasOpt = Annotated[str, typer.Option("--alias", help="The alias to move (production, staging, any name).")]


@app.command("list")
def list_adapters(
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """The tenant's adapters in the registry: latest version and where each alias points."""
    with client_from_options(url, api_key, tenant, database_url) as client:
        answer = client.request("GET", "/v1/adapters")
    if as_json:
        print_json(answer)
        return
    rows = [
        {
            "name": a["name"],
            "latest": f"v{a['latest_version']}",
            "aliases": ", ".join(f"{alias} → v{number}" for alias, number in sorted(a["aliases"].items())),
            "created": when(a["created_at"]),
        }
        for a in answer["data"]
    ]
    columns = {"name": "name", "latest": "latest", "aliases": "aliases", "created": "created"}
    print_table(
        rows,
        columns,
        empty="no adapters in the registry yet: lorafleet jobs create ... trains one",
    )


@app.command("versions")
def versions(
    name: RegistryNameArg,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every version of a registry adapter, oldest first, with its aliases, size and lineage."""
    with client_from_options(url, api_key, tenant, database_url) as client:
        answer = client.request("GET", f"/v1/adapters/{segment(name)}/versions")
    if as_json:
        print_json(answer)
        return
    rows = [
        {
            "version": f"v{v['version']}",
            "aliases": ", ".join(v["aliases"]),
            "created": when(v["created_at"]),
            "size": f"{v['bytes'] / 1024:,.0f} KiB",
            "sha256": v["sha256"][:12],
            "loss": v["metrics"].get("final_train_loss"),
        }
        for v in answer["data"]
    ]
    columns = {key: key for key in ("version", "aliases", "created", "size", "sha256", "loss")}
    print_table(rows, columns)


@app.command("card")
def card(
    reference: Annotated[str, typer.Argument(help="The version: NAME@V (tickets@3).")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the card here.")] = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """The version's model card (Markdown): base, data lineage with the training file's scrubbing report,
    training, evaluation and forgetting, fairness, the promotion gate's checks, exports."""
    name, _, version = reference.partition("@")
    if not name or not version:
        raise ConfigError(f"{reference!r}: name the version as NAME@V (tickets@3)")
    with client_from_options(url, api_key, tenant, database_url) as client:
        text = client.download(f"/v1/adapters/{segment(name)}/versions/{segment(version)}/card").decode()
    if output is None:
        typer.echo(text, nl=False)
        return
    output.write_text(text)
    typer.echo(f"wrote the model card of {reference} to {output}")


@app.command("promote")
def promote(
    name: RegistryNameArg,
    version: Annotated[str, typer.Argument(help="The version to point the alias at: 3 or v3.")],
    alias: AliasOpt = "production",
    force: Annotated[
        bool, typer.Option("--force", help="Promote even if the adapter's gate refuses it (audited).")
    ] = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Point an alias at a version; requests for `NAME:ALIAS` (and `NAME`, for production) get it at once.

    Under the adapter's promotion gate a failing version is refused with the failed checks (see
    `lorafleet gate NAME@V`) unless --force.
    """
    number = version.strip().lower().removeprefix("v")
    if not number.isdigit() or int(number) < 1:
        raise ConfigError(f"version {version!r}: give a version number such as 3 or v3")
    with client_from_options(url, api_key, tenant, database_url) as client:
        path = f"/v1/adapters/{segment(name)}/aliases/{segment(alias)}"
        answer = client.request("POST", path, json={"version": int(number), "force": force})
    if as_json:
        print_json(answer)
        return
    typer.echo(f"{name}:{alias} → v{answer['version']}")


@app.command("rollback")
def rollback(
    name: RegistryNameArg,
    alias: AliasOpt = "production",
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Move an alias back to the version it pointed at before its last promotion."""
    with client_from_options(url, api_key, tenant, database_url) as client:
        path = f"/v1/adapters/{segment(name)}/aliases/{segment(alias)}/rollback"
        answer = client.request("POST", path)
    if as_json:
        print_json(answer)
        return
    typer.echo(f"{name}:{alias} rolled back to v{answer['version']}")


@app.command("history")
def history(
    name: RegistryNameArg,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every alias move of a registry adapter, oldest first: when, which alias, from and to, by whom."""
    with client_from_options(url, api_key, tenant, database_url) as client:
        answer = client.request("GET", f"/v1/adapters/{segment(name)}/history")
    if as_json:
        print_json(answer)
        return
    rows = [
        {
            **move,
            "when": when(move["created_at"]),
            "from": f"v{move['from_version']}" if move["from_version"] is not None else None,
            "to": f"v{move['to_version']}" if move["to_version"] is not None else None,
        }
        for move in answer["data"]
    ]
    for row in rows:
        report = row["report"]
        row["gate"] = ("forced past: " if row["forced"] else "") + (
            ("passed" if report["passed"] else "failed") if report is not None else "-"
        )
    columns = {key: key for key in ("when", "alias", "action", "from", "to", "actor", "gate")}
    print_table(
        rows,
        columns,
        empty=f"no alias of {name} was ever moved: lorafleet adapters promote {name} VERSION",
    )


def _lineage_text(lineage: dict[str, object]) -> str:
    parents = lineage.get("parents") or []
    if not parents:
        return str(lineage.get("method") or "-")
    weights = lineage.get("weights") or [None] * len(parents)  # type: ignore[arg-type]
    parts = [f"{p} ×{w:g}" if w is not None else str(p) for p, w in zip(parents, weights, strict=False)]  # type: ignore[call-overload]
    return f"{lineage.get('method')}: " + ", ".join(parts)
