"""`lorafleet gate`, `lorafleet adapters suites …` and `lorafleet adapters gate-policy`: an adapter's eval
suites and promotion gate in the registry (through the platform API, see `cli.platform`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from lorafleet.cli.platform import (
    ApiKeyOption,
    DatabaseOption,
    JsonOption,
    PlatformClient,
    TenantOption,
    UrlOption,
    client_from_options,
    print_json,
    print_table,
    segment,
    when,
)
from lorafleet.errors import ConfigError

suites_app = typer.Typer(
    help="Eval suites of a registry adapter: held-out rows every new version is scored on.",
    no_args_is_help=True,
)
NameArg = Annotated[str, typer.Argument(help="The adapter's name in the registry.")]
MetricOpt = Annotated[
    str, typer.Option("--metric", help="json_fields, exact_match, or perplexity (scored as 1/perplexity).")
]


def register_suite(client: PlatformClient, name: str, path: Path, metric: str) -> dict[str, Any]:
    """Upload `path` (purpose eval; a malformed row is named by file:line) and register it for `name`."""
    with path.open("rb") as handle:
        file = client.request(
            "POST", "/v1/files", files={"file": (path.name, handle)}, data={"purpose": "eval"}
        )
    suite: dict[str, Any] = client.request(
        "POST", f"/v1/adapters/{segment(name)}/suites", json={"file": file["id"], "metric": metric}
    )
    return suite


@suites_app.command("add")
def add_suite(
    name: NameArg,
    path: Annotated[Path, typer.Argument(help="Held-out rows (.jsonl, .json, .csv, .parquet).", exists=True)],
    metric: MetricOpt = "exact_match",
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Register held-out rows as an eval suite of an adapter (and of every adapter trained from it)."""
    with client_from_options(url, api_key, tenant, database_url) as client:
        suite = register_suite(client, name, path, metric)
    if as_json:
        print_json(suite)
        return
    typer.echo(f"{suite['id']}: {path.name} ({metric}) is an eval suite of {name}")


@suites_app.command("list")
def list_suites(
    name: NameArg,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """The eval suites registered for an adapter."""
    with client_from_options(url, api_key, tenant, database_url) as client:
        answer = client.request("GET", f"/v1/adapters/{segment(name)}/suites")
    if as_json:
        print_json(answer)
        return
    rows = [{**s, "created": when(s["created_at"])} for s in answer["data"]]
    columns = {"id": "id", "file": "file", "metric": "metric", "created": "created"}
    print_table(rows, columns, empty=f"{name} has no eval suites: lorafleet adapters suites add {name} FILE")


@suites_app.command("delete")
def delete_suite(
    name: NameArg,
    suite: Annotated[str, typer.Argument(help="The suite's id (suite-…).")],
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Unregister an eval suite (its file and the scores already stored stay)."""
    with client_from_options(url, api_key, tenant, database_url) as client:
        client.request("DELETE", f"/v1/adapters/{segment(name)}/suites/{segment(suite)}")
    typer.echo(f"deleted {suite}")


def _limits(values: list[str], option: str) -> dict[str, float]:
    """`["own=0.8", "suite-…=0.5"]` → `{"own": 0.8, …}`; `ConfigError` naming a malformed one."""
    limits = {}
    for value in values:
        key, sep, number = value.partition("=")
        try:
            limits[key.strip()] = float(number)
        except ValueError:
            sep = ""
        if not sep:
            raise ConfigError(f"{option} {value!r}: write SUITE=LIMIT (or own=LIMIT), e.g. own=0.8")
    return limits


def gate_policy(
    name: NameArg,
    min_score: Annotated[
        list[str] | None,
        typer.Option("--min-score", help="SUITE=MIN or own=MIN (each suite of the adapter); repeatable."),
    ] = None,
    max_forgetting: Annotated[
        list[str] | None,
        typer.Option(
            "--max-forgetting",
            help="Most forgetting on every ancestor suite (0.1), or SUITE=MAX; repeatable.",
        ),
    ] = None,
    max_drift: Annotated[
        float | None, typer.Option("--max-drift", help="Most general drift (perplexity ratio − 1).")
    ] = None,
    max_fairness_gap: Annotated[
        float | None,
        typer.Option(
            "--max-fairness-gap",
            help="Most significant gap in the task metric between two groups of people (0-1), as the "
            "version's `lorafleet fairness` report measured it.",
        ),
    ] = None,
    clear: Annotated[
        bool, typer.Option("--clear", help="Remove the gate: promotions are not checked.")
    ] = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Set (or with no rule, show) the promotion gate of an adapter: what a version must score."""
    forgetting: float | dict[str, float] | None = None
    if max_forgetting:
        plain = [v for v in max_forgetting if "=" not in v]
        if plain and len(max_forgetting) > 1:
            raise ConfigError("--max-forgetting: give one limit for every suite, or SUITE=MAX ones, not both")
        forgetting = float(plain[0]) if plain else _limits(max_forgetting, "--max-forgetting")
    rules = {
        "min_scores": _limits(min_score or [], "--min-score"),
        "max_forgetting": forgetting,
        "max_general_drift": max_drift,
        "max_fairness_gap": max_fairness_gap,
    }
    path = f"/v1/adapters/{segment(name)}/gate"
    with client_from_options(url, api_key, tenant, database_url) as client:
        if clear:
            answer = client.request("PUT", path, json={"policy": None})
        elif any(value not in (None, {}) for value in rules.values()):
            answer = client.request("PUT", path, json={"policy": rules})
        else:
            answer = client.request("GET", path)
    if as_json:
        print_json(answer)
        return
    policy = answer["policy"]
    if policy is None:
        typer.echo(f"{name} has no promotion gate: every promote is accepted")
        return
    rows = [{"rule": "min_score", "suite": s, "limit": v} for s, v in policy["min_scores"].items()]
    forgot = policy["max_forgetting"]
    if isinstance(forgot, dict):
        rows += [{"rule": "max_forgetting", "suite": s, "limit": v} for s, v in forgot.items()]
    elif forgot is not None:
        rows.append({"rule": "max_forgetting", "suite": "every ancestor suite", "limit": forgot})
    for rule in ("max_general_drift", "max_fairness_gap"):
        if policy.get(rule) is not None:
            rows.append({"rule": rule, "suite": None, "limit": policy[rule]})
    print_table(rows, {"rule": "rule", "suite": "suite", "limit": "limit"}, empty="an empty gate: all pass")


def gate(
    reference: Annotated[str, typer.Argument(help="The version to check: NAME@VERSION (tickets@3).")],
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check a version against its adapter's promotion gate: every check, pass or fail, and why.

    Exits 0 when the version passes, 1 when it fails.
    """
    name, _, version = reference.partition("@")
    number = version.strip().lower().removeprefix("v")
    if not name or not number.isdigit():
        raise ConfigError(f"{reference!r}: name a version as NAME@VERSION, e.g. tickets@3")
    with client_from_options(url, api_key, tenant, database_url) as client:
        report = client.request("GET", f"/v1/adapters/{segment(name)}/versions/{number}/gate")
    if as_json:
        print_json(report)
    else:
        rows = [
            {**c, "result": "pass" if c["passed"] else "FAIL", "suite": c["suite"] or "-"}
            for c in report["checks"]
        ]
        columns = {"check": "check", "suite": "suite", "value": "value", "limit": "limit", "result": "result"}
        print_table([*rows], {**columns, "why": "why"}, empty="no gate: every promote is accepted")
        verdict = "passes" if report["passed"] else "FAILS"
        bwt = report["backward_transfer"]
        typer.echo(
            f"{report['version']} {verdict} its promotion gate (BWT {bwt if bwt is None else f'{bwt:.4g}'})"
        )
    raise typer.Exit(0 if report["passed"] else 1)
