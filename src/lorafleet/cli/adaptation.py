"""`lorafleet adapters policy|rollouts`: an alias's adaptation policy, its monitor, and the rollouts the
controller ran (through the platform API)."""

from __future__ import annotations

from pathlib import Path
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

NameArg = Annotated[str, typer.Argument(help="The adapter's name in the registry.")]


def policy(
    name: NameArg,
    alias: Annotated[str, typer.Option("--alias", help="The alias the policy watches.")] = "production",
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            "-f",
            help="A YAML or JSON policy: triggers (drift, quality), train, gate, canary, validator.",
        ),
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Stop adapting the alias.")] = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Set (--file), remove (--clear) or show an alias's adaptation policy and what its monitor sees now.

    Under a policy the controller (run by `lorafleet serve` and `lorafleet worker`) watches the alias's
    traffic; on input drift or low quality it trains a continual version on the users' corrections, checks
    it against the gate, serves it to a canary share of users and promotes it or rolls it back.
    """
    if file is not None and clear:
        raise ConfigError("give --file or --clear, not both")
    path = f"/v1/adapters/{segment(name)}/policies/{segment(alias)}"
    with client_from_options(url, api_key, tenant, database_url) as client:
        if file is not None:
            from lorafleet.rollout.policy import AdaptationPolicy

            spec = AdaptationPolicy.from_file(file).model_dump(
                mode="json", exclude_unset=True, exclude={"alias"}
            )
            answer = client.request("PUT", path, json=spec)
        elif clear:
            answer = client.request("DELETE", path)
        else:
            answer = client.request("GET", path)
    if as_json:
        print_json(answer)
        return
    if clear:
        typer.echo(f"{name}:{alias} is no longer adapted")
        return
    typer.echo(f"{name}:{alias}: policy set by {answer['actor']} at {when(answer['updated_at'])}")
    status: dict[str, Any] = answer.get("status") or {}
    if not status:
        typer.echo("  the controller has not looked at it yet")
        return
    typer.echo(f"  state: {status.get('state')} (as of {when(answer['status_at'])})")
    for key in ("requests", "windows_tested", "windows_drifted", "drift_p_value", "drift_auc", "quality"):
        typer.echo(f"  {key}: {_figure(status.get(key))}")
    for key in ("valid_rate", "error_rate", "latency_p50_ms", "latency_p95_ms", "error", "note"):
        if status.get(key) is not None:
            typer.echo(f"  {key}: {_figure(status[key])}")


def rollouts(
    name: NameArg,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """The adapter's rollouts, newest first: what triggered each, its job, and how it ended."""
    with client_from_options(url, api_key, tenant, database_url) as client:
        answer = client.request("GET", f"/v1/adapters/{segment(name)}/rollouts")
    if as_json:
        print_json(answer)
        return
    rows = [
        {
            **r,
            "started": when(r["created_at"]),
            "trigger": r["trigger"].get("kind", "-"),
            "job": r["job_id"] or "-",
            "outcome": r["outcome"] or "-",
        }
        for r in answer["data"]
    ]
    columns = {"id": "id", "started": "started", "alias": "alias", "trigger": "trigger", "state": "state"}
    print_table(
        rows,
        {**columns, "job": "job", "outcome": "outcome"},
        empty=f"no rollout of {name} yet: set a policy with lorafleet adapters policy {name} --file P",
    )


def _figure(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
