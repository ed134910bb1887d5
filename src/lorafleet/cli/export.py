"""`lorafleet export`: an adapter merged into its base as GGUF or ONNX, checked, fit to a device."""

from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from lorafleet.cli import plain_console
from lorafleet.cli.platform import (
    ApiKeyOption,
    DatabaseOption,
    JsonOption,
    TenantOption,
    UrlOption,
    client_from_options,
    fetch_version,
    print_json,
)
from lorafleet.export.plan import DEFAULT_CHECK_TOKENS
from lorafleet.home import lorafleet_home

if TYPE_CHECKING:
    from lorafleet.export.exporter import ExportReport


def export(
    adapter: Annotated[
        str,
        typer.Argument(
            help="What to export: an adapter directory, a name in $LORAFLEET_HOME/adapters, or a registry "
            "version as NAME@V (tickets@3) or NAME:ALIAS (tickets:production)."
        ),
    ],
    format: Annotated[
        str, typer.Option("--format", "-f", help="gguf (llama.cpp, ollama) or onnx (ONNX Runtime).")
    ],
    quant: Annotated[
        str | None,
        typer.Option(
            "--quant",
            "-q",
            help="Variants to write, comma-separated, or all. gguf: f16, q8_0, q4_0, q4_mix (the merged "
            "model; q4_mix: Q4_1 where the adapter left the base alone, Q5_0 where it changed it) and lora "
            "(the adapter alone, for llama.cpp --lora); onnx: fp32, int8. Default: q8_0 / int8, or with "
            "--target every merged variant, of which the one that fits is kept.",
        ),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(
            "--target",
            "-t",
            help="A device profile (mobile_cpu, embedded_npu, raspberry_pi, or one of yours): keep the "
            "most faithful variant within its size and speed budgets; fail, saying what it would take, if "
            "none fits.",
        ),
    ] = None,
    profiles: Annotated[
        Path | None,
        typer.Option(
            "--profiles", help="A YAML file of more device profiles (name: {size_mb, ms_per_token})."
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Folder to write; default $LORAFLEET_HOME/exports/NAME-FORMAT."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Base model the adapter was trained on (default: 'default', or the version's).",
        ),
    ] = None,
    check_tokens: Annotated[
        int,
        typer.Option(
            "--check-tokens",
            min=0,
            max=4096,
            help="PyTorch's greedy answer tokens each variant must agree with before it is kept "
            "(0: no check).",
        ),
    ] = DEFAULT_CHECK_TOKENS,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="Threads of the runtimes.")] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the output folder if it exists.")
    ] = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Export an adapter merged into its base for edge devices: GGUF (llama.cpp) or ONNX, each variant run in
    its real runtime and checked against the PyTorch model before it is written, with its size and speed."""
    from lorafleet.adapters.storage import adapter_path
    from lorafleet.export.exporter import export_adapter
    from lorafleet.export.plan import ExportPlan

    plan = ExportPlan.parse(
        format, quant, target, profiles_file=profiles, check_tokens=check_tokens, threads=threads
    )
    say = (lambda _: None) if as_json else typer.echo
    with tempfile.TemporaryDirectory(prefix="lorafleet-export-") as scratch:
        if "@" in adapter or ":" in adapter:
            with client_from_options(url, api_key, tenant, database_url) as client:
                stored = fetch_version(client, adapter, Path(scratch))
            folder, base = stored.folder, stored.base_model
            name = adapter.replace("@", "-v").replace(":", "-")
        else:
            folder, base, name = adapter_path(adapter), "default", Path(adapter).name
        destination = output or lorafleet_home() / "exports" / f"{name}-{format}"
        report = export_adapter(folder, destination, plan, base=model or base, overwrite=overwrite, say=say)
    if as_json:
        print_json({"output": str(destination), **asdict(report)})
        return
    table = Table(title=f"{report.adapter} → {destination}")
    for column in ("variant", "file", "MB", "tokens/s", "max |Δlogit|", "top-1", "KL"):
        table.add_column(column, justify="left" if column in ("variant", "file") else "right")
    for v in report.variants:
        checked = v.checked_tokens > 0
        table.add_row(
            v.name,
            v.file,
            f"{v.size_bytes / 1e6:.1f}",
            f"{v.tokens_per_s:.1f}",
            f"{v.max_abs_logit_diff:.2e}" if checked else "-",
            f"{v.top1_agreement:.1%}" if checked else "-",
            f"{v.mean_kl:.2e}" if checked else "-",
        )
    plain_console().print(table)
    for line in verdict_lines(report):
        typer.echo(line)


def verdict_lines(report: ExportReport) -> list[str]:
    """One line per profile: how each variant fares against its budgets, and the one kept for the target."""
    from lorafleet.export.profiles import verdict_word

    lines = []
    by_profile: dict[str, list[str]] = {}
    for v in report.verdicts:
        by_profile.setdefault(str(v["profile"]), []).append(f"{v['export']} {verdict_word(v)}")
    for profile, marks in by_profile.items():
        lines.append(f"{profile}: " + ", ".join(marks))
    if report.chosen:
        lines.append(
            f"target {report.target}: kept {report.chosen} (timed on this machine; the device may be slower)"
        )
    return lines
