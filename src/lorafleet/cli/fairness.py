"""`lorafleet fairness`: counterfactual fairness of an adapter (`evaluation.fairness`), kept per version."""

from __future__ import annotations

import json
import tempfile
from contextlib import ExitStack
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
    fetch_version,
    print_json,
    print_table,
    segment,
)
from lorafleet.errors import ConfigError


def fairness(
    adapter: Annotated[
        str,
        typer.Argument(
            help="NAME@V or NAME:ALIAS of the registry (the report is stored with that version), "
            "or a local adapter name or directory (the report is only printed).",
        ),
    ],
    suite: Annotated[
        Path,
        typer.Option(
            "--suite",
            help="Held-out rows whose reference answer names a person.",
            exists=True,
            dir_okay=False,
        ),
    ],
    metric: Annotated[str, typer.Option(help="The suite's task metric: json_fields or exact_match.")] = (
        "json_fields"
    ),
    name_field: Annotated[
        str, typer.Option(help="The reference answer's field holding the person's full name.")
    ] = "customer",
    groups: Annotated[
        list[str] | None,
        typer.Option(
            "--group",
            help="A group to compare (repeatable), e.g. hispanic_female; default: all twelve "
            "(six origins × two genders).",
        ),
    ] = None,
    rows: Annotated[
        int, typer.Option(min=2, help="Most suite rows to rewrite (each is run 2× per group).")
    ] = 30,
    seed: Annotated[int, typer.Option(help="Seed of the names drawn and of the bootstrap.")] = 0,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Base model (default: the version's, or 'default').")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Longest generated answer.")] = 128,
    batch_size: Annotated[int, typer.Option(min=1, help="Variants generated together.")] = 32,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Also write the report here.")] = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Counterfactual fairness: rewrite each suite row's person across groups (names typical of origins and
    genders, pronouns, titles), run the adapter on every variant and report per group its score, and per
    group pair the gap in the task metric and in answer similarity, each with a 95% bootstrap interval and
    a same-group baseline (two people of one group), so noise is not called bias. A registry version keeps
    the report; the promotion gate's --max-fairness-gap checks it."""
    from lorafleet.evaluation.fairness import groups_named

    if metric not in ("json_fields", "exact_match"):
        raise ConfigError(f"--metric {metric!r}: choose json_fields or exact_match", field="metric")
    chosen = groups_named(groups)
    in_registry = "@" in adapter or ":" in adapter
    with tempfile.TemporaryDirectory(prefix="lorafleet-fairness-") as scratch, ExitStack() as stack:
        # one client for the whole command: fetch the version, then store its report
        client = (
            stack.enter_context(client_from_options(url, api_key, tenant, database_url))
            if in_registry
            else None
        )
        if client is not None:
            stored = fetch_version(client, adapter, Path(scratch))
            folder, base, label = stored.folder, stored.base_model, f"{stored.name}@{stored.version}"
        else:
            from lorafleet.adapters.storage import adapter_path

            folder, base, label = adapter_path(adapter), "default", adapter
        report = _measure(
            folder,
            model or base,
            suite,
            metric=metric,
            name_field=name_field,
            groups=chosen,
            rows=rows,
            seed=seed,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            quiet=as_json,
        )
        if client is not None:
            path = f"/v1/adapters/{segment(stored.name)}/versions/{stored.version}/fairness"
            client.request("PUT", path, json=report)
    if output is not None:
        output.write_text(json.dumps(report, indent=2) + "\n")
    if as_json:
        print_json(report)
        return
    _print_report(label, report, stored=in_registry)


def _measure(
    folder: Path, base: str, suite: Path, *, rows: int, quiet: bool, **options: Any
) -> dict[str, Any]:
    """Load `base` + the adapter at `folder` and measure its fairness report on `suite`."""
    from lorafleet.adapters import load_adapter
    from lorafleet.adapters.storage import read_adapter
    from lorafleet.evaluation.fairness import fairness_report
    from lorafleet.evaluation.suites import read_suite
    from lorafleet.models import load_base
    from lorafleet.training.progress import TrainingProgress

    _, _, card = read_adapter(folder)
    system_prompt = ((card.training or {}).get("data") or {}).get("system_prompt") if card else None
    examples = read_suite(suite, options["metric"], system_prompt=system_prompt, max_rows=rows)
    base_model, tokenizer = load_base(base)
    runnable = load_adapter(base_model, folder)
    total = 2 * len(options["groups"]) * len(examples)
    with TrainingProgress.counter("answering counterfactuals", total, enabled=not quiet) as advance:
        report = fairness_report(runnable, tokenizer, examples, on_batch=advance, **options)
    return {**report, "suite": suite.name, "name_field": options["name_field"]}


def _print_report(label: str, report: dict[str, Any], *, stored: bool) -> None:
    typer.echo(
        f"{label}: {report['rows']} rows × {len(report['groups'])} groups × 2 people "
        f"({report['skipped_rows']} rows name no person), {report['metric']}, 95% intervals"
    )
    groups = [
        {"group": g, "score": e["mean"], "interval": f"[{e['low']:.3f}, {e['high']:.3f}]"}
        for g, e in report["groups"].items()
    ]
    print_table(groups, {"group": "group", "score": "score", "interval": "95% interval"})
    pairs = sorted(report["pairs"], key=lambda p: -abs(p["gap"]["mean"]))[:10]
    shown = [
        {
            "pair": f"{p['a']} − {p['b']}",
            "gap": p["gap"]["mean"],
            "interval": f"[{p['gap']['low']:.3f}, {p['gap']['high']:.3f}]",
            "similarity": p["similarity"]["mean"],
            "significant": "yes" if p["significant"] else "no",
        }
        for p in pairs
    ]
    columns = {"pair": "pair", "gap": "gap", "interval": "95% interval", "similarity": "similarity"}
    print_table(shown, {**columns, "significant": "significant"})
    typer.echo(
        f"largest gap {report['max_gap']:.3f}; largest same-group gap (noise) {report['baseline_gap']:.3f}; "
        f"largest significant gap {report['max_significant_gap']:.3f}"
        + (" — stored with the version" if stored else "")
    )
