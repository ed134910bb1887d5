"""`lorafleet adapters canary|events` and `lorafleet experiments …`: how the server splits an adapter's
requests across versions, and the adapter's audited events (through the platform API, see `cli.platform`).

Splits apply from the next request and are sticky per user (the request's `user` field, else its API key).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

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
from lorafleet.errors import ConfigError

experiments_app = typer.Typer(
    help="A/B experiments: split the requests naming a model across versions, sticky per user.",
    no_args_is_help=True,
)

NameArg = Annotated[str, typer.Argument(help="The adapter's name in the registry.")]


def canary(
    name: NameArg,
    target: Annotated[
        str | None,
        typer.Option("--target", help="The version the canary's users get: support@5, support:staging."),
    ] = None,
    percent: Annotated[
        float | None,
        typer.Option("--percent", min=0.0, max=100.0, help="Share of the adapter's users sent to it, 0-100."),
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="End the canary: everyone routes as usual.")] = False,
    model: Annotated[
        str | None,
        typer.Option(
            "--model", help="The reference whose requests are sampled (default NAME; or NAME:ALIAS)."
        ),
    ] = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show, set (--target and --percent) or --clear the canary of a registry adapter.

    A canary sends PERCENT of the users of NAME (sticky per user; raising it keeps those already in it) to
    TARGET from the very next request, and leaves requests naming a version (NAME@3) alone. Every change is
    recorded in the adapter's events (lorafleet adapters events NAME).
    """
    setting = target is not None or percent is not None
    if clear and setting:
        raise ConfigError("--clear ends the canary; give it alone, or --target and --percent to set one")
    if setting and (target is None or percent is None):
        raise ConfigError("setting a canary needs both --target (e.g. support@5) and --percent (e.g. 10)")
    path = f"/v1/adapters/{segment(name)}/canary"
    params = {"model": model} if model is not None else {}
    with client_from_options(url, api_key, tenant, database_url) as client:
        if clear:
            answer = client.request("DELETE", path, params=params)
        elif setting:
            body: dict[str, Any] = {"target": target, "percent": percent}
            if model is not None:
                body["model"] = model
            answer = client.request("PUT", path, json=body)
        else:
            answer = client.request("GET", path, params=params)
    if as_json:
        print_json(answer)
        return
    line = f"{answer['model']}: {answer['percent']:g}% of users → {answer['target']}"
    typer.echo(f"canary cleared ({line})" if clear else line)


def events(
    name: NameArg,
    since: Annotated[
        int | None, typer.Option("--since", min=0, help="Only the events after this id.")
    ] = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """The audited events of a registry adapter, oldest first: canaries and experiments set and cleared,
    and what an adaptation controller recorded (triggers, jobs, gates, promotions), with who did it."""
    params = {"since_id": since} if since is not None else {}
    with client_from_options(url, api_key, tenant, database_url) as client:
        answer = client.request("GET", f"/v1/adapters/{segment(name)}/events", params=params)
    if as_json:
        print_json(answer)
        return
    rows = [{**event, "when": when(event["created_at"])} for event in answer["data"]]
    columns = {key: key for key in ("id", "when", "kind", "actor", "job_id", "detail")}
    print_table(rows, columns, empty=f"no events of {name} yet: lorafleet adapters canary {name} --help")


@experiments_app.command("list")
def list_experiments(
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """The tenant's A/B experiments: which model each splits, and its arms."""
    with client_from_options(url, api_key, tenant, database_url) as client:
        answer = client.request("GET", "/v1/experiments")
    if as_json:
        print_json(answer)
        return
    rows = [{**e, "arms": _arms_text(e["arms"])} for e in answer["data"]]
    print_table(
        rows,
        {"name": "name", "model": "model", "arms": "arms"},
        empty="no experiments: lorafleet experiments set NAME --model M --arm M@1=50 --arm M@2=50",
    )


@experiments_app.command("set")
def set_experiment(
    name: Annotated[str, typer.Argument(help="The experiment's name (also the salt of its assignment).")],
    model: Annotated[str, typer.Option("--model", help="The reference split: support, support:production.")],
    arm: Annotated[
        list[str],
        typer.Option("--arm", help="TARGET=PERCENT, e.g. support@1=50 (repeat; the percents sum to 100)."),
    ],
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Split the users of MODEL across the arms, sticky per user, from the next request (audited).

    Setting an experiment of the same name again replaces it; one model has at most one experiment.
    """
    arms = [_arm(text) for text in arm]
    with client_from_options(url, api_key, tenant, database_url) as client:
        answer = client.request(
            "PUT", f"/v1/experiments/{segment(name)}", json={"model": model, "arms": arms}
        )
    if as_json:
        print_json(answer)
        return
    typer.echo(f"{answer['name']}: {answer['model']} → {_arms_text(answer['arms'])}")


@experiments_app.command("clear")
def clear_experiment(
    name: Annotated[str, typer.Argument(help="The experiment to end.")],
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """End an experiment: its model's users route as usual from the next request (audited)."""
    with client_from_options(url, api_key, tenant, database_url) as client:
        answer = client.request("DELETE", f"/v1/experiments/{segment(name)}")
    if as_json:
        print_json(answer)
        return
    typer.echo(f"experiment {answer['name']} on {answer['model']} cleared")


def _arm(text: str) -> dict[str, Any]:
    """`support@1=50` → `{"target": "support@1", "percent": 50.0}`; `ConfigError` naming a bad one."""
    target, sep, percent = text.rpartition("=")
    try:
        value = float(percent)
    except ValueError:
        value = None
    if not sep or not target or value is None:
        raise ConfigError(f"--arm {text!r}: write TARGET=PERCENT, e.g. support@1=50")
    return {"target": target, "percent": value}


def _arms_text(arms: list[dict[str, Any]]) -> str:
    return ", ".join(f"{arm['target']} {arm['percent']:g}%" for arm in arms)
