"""`lorafleet data`: check a data file and show its statistics; write a bundled example task."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lorafleet.cli import plain_console

app = typer.Typer(help="Check training data and show its statistics.", no_args_is_help=True)


@app.command("stats")
def stats(
    file: Annotated[
        Path, typer.Argument(help="A .jsonl/.json, .csv or .parquet file, or a datasets directory.")
    ],
    format: Annotated[
        str, typer.Option(help="Row format: auto, text, prompt_completion, alpaca or chat.")
    ] = "auto",
    model: Annotated[
        str,
        typer.Option(
            "--model", "-m", help="Whose tokenizer counts tokens: 'default', a HF directory, a .gguf."
        ),
    ] = "default",
    max_length: Annotated[
        int, typer.Option(help="Tokens per example; longer rows count as truncated.")
    ] = 512,
    skip_bad_rows: Annotated[
        bool, typer.Option("--skip-bad-rows", help="Drop and count malformed rows instead of failing.")
    ] = False,
    train_on_inputs: Annotated[
        bool, typer.Option("--train-on-inputs", help="Count prompt tokens as labelled too.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Read every row, tokenize it as training would, and print counts and token-length percentiles."""
    from lorafleet.data import DataConfig, prepare_data
    from lorafleet.models import load_tokenizer

    config = DataConfig.parse(
        path=str(file),
        format=format,
        max_length=max_length,
        skip_bad_rows=skip_bad_rows,
        train_on_inputs=train_on_inputs,
        validation_fraction=0.0,
    )
    prepared = prepare_data(config, load_tokenizer(model))
    numbers = prepared.train_stats.as_dict()
    if as_json:
        typer.echo(json.dumps({"path": str(file), "format": prepared.format, **numbers}, indent=2))
        return
    for note in prepared.notes:
        typer.echo(f"note: {note}", err=True)
    table = Table(show_header=False)
    table.add_column()
    table.add_column(justify="right")
    table.add_row("format", prepared.format)
    for key, value in numbers.items():
        table.add_row(key.replace("_", " "), f"{value:,}")
    plain_console().print(table)


@app.command("example")
def example(
    directory: Annotated[Path, typer.Argument(help="Directory to write train.jsonl and test.jsonl into.")],
    task: Annotated[
        str,
        typer.Option(
            help="Which task: support_tickets (tickets → type, customer, order_id, amount, date), "
            "invoices (→ vendor, total, currency, due_date), meeting_notes (→ owner, action, deadline), "
            "healthcare (clinical notes with synthetic PHI → patient, dob, mrn, diagnosis, medication, "
            "follow_up), legal (contract clauses → clause_type, parties, obligation, deadline) or finance "
            "(bank messages → category, amount, risk_flag)."
        ),
    ] = "support_tickets",
    train_rows: Annotated[int, typer.Option(min=1, help="Rows in train.jsonl.")] = 1000,
    test_rows: Annotated[int, typer.Option(min=1, help="Rows in test.jsonl.")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the generated rows; same seed, same files.")] = 0,
    federated: Annotated[
        int | None,
        typer.Option(
            "--federated",
            min=1,
            help="Split the support tickets non-IID across N clients (DIR/client-00/train.jsonl, ...; each "
            "sees a few ticket types and its own date style) with a common DIR/test.jsonl.",
        ),
    ] = None,
) -> None:
    """Write a bundled example task (generated texts → JSON fields) as prompt/completion JSONL files."""
    from lorafleet.data.example_tasks import example_task

    if federated is not None:
        from lorafleet.data.federated_split import CLIENT_PATTERN, write_federated_split
        from lorafleet.errors import ConfigError

        if task != "support_tickets":
            raise ConfigError(f"--task {task}: --federated splits the support_tickets task only")
        write_federated_split(
            directory, clients=federated, train_rows=train_rows, test_rows=test_rows, seed=seed
        )
        typer.echo(
            f"wrote {federated} clients' rows ({directory / CLIENT_PATTERN}, {train_rows} rows in all), "
            f"{directory / 'test.jsonl'} ({test_rows} rows) and {directory / 'clients.json'}"
        )
        return
    train, test = example_task(task).write(directory, train_rows=train_rows, test_rows=test_rows, seed=seed)
    typer.echo(f"wrote {train} ({train_rows} rows) and {test} ({test_rows} rows)")


@app.command("scrub")
def scrub(
    source: Annotated[Path, typer.Argument(help="A .jsonl file of rows to scrub.")],
    target: Annotated[
        Path, typer.Argument(help="Where to write the scrubbed .jsonl (audit report beside it).")
    ],
    fields: Annotated[
        list[str] | None,
        typer.Option(
            "--fields", help="Scrub only these top-level fields (repeatable; default: every field)."
        ),
    ] = None,
    skip_fields: Annotated[
        list[str] | None,
        typer.Option(
            "--skip-fields",
            help="Leave these fields as they are (repeatable); PHI found in them is reported, "
            "not passed silently.",
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output and report.")] = False,
) -> None:
    """Replace names, dates, record numbers, phones, e-mails and addresses with consistent pseudonyms
    (same patient, same fake name within a row) and write an audit report (counts only, hash-chained).

    Set LORAFLEET_SCRUB_SECRET for the same pseudonyms on every run; without it a random secret is used.
    """
    from lorafleet.privacy.scrub import FieldChoice, report_path, scrub_jsonl

    report = scrub_jsonl(source, target, choice=FieldChoice.parse(fields, skip_fields), overwrite=overwrite)
    found = ", ".join(f"{kind} {n}" for kind, n in report["found"].items()) or "nothing"
    typer.echo(f"scrubbed {report['rows']} rows into {target}: {found}")
    typer.echo(f"audit report: {report_path(target)} (head {report['head'][:16]}…)")
    for where, count in report["unscrubbed"].items():
        field, kind = where.split(":", 1)
        typer.echo(f"warning: {count} {kind} left in skipped field {field!r} (not scrubbed)", err=True)
