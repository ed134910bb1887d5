"""The `lorafleet` command: sub-commands, `--version`, and one-line errors instead of tracebacks."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from lorafleet import __version__
from lorafleet.cli import (
    adapters,
    data,
    estimate,
    evaluation,
    export,
    fairness,
    federated,
    feedback,
    generate,
    jobs,
    models,
    routing,
    serve,
    tenants,
    train,
)
from lorafleet.cli.quiet import quiet_third_party_output
from lorafleet.errors import LorafleetError


class _FriendlyErrors(TyperGroup):
    """Print a `LorafleetError` as `error: ...` on stderr and exit 2, without a traceback."""

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except LorafleetError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None


app = typer.Typer(
    cls=_FriendlyErrors,
    help="lorafleet: fine-tune, version, serve and keep improving LoRA adapters on one shared base model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(models.app, name="models")
app.add_typer(adapters.app, name="adapters")
app.add_typer(data.app, name="data")
app.command("generate")(generate.generate)
app.command("train")(train.train)
app.command("eval")(train.evaluate)
app.command("gate")(evaluation.gate)
app.command("fairness")(fairness.fairness)
app.command("chat")(train.chat)
app.command("estimate")(estimate.estimate)
app.command("export")(export.export)
app.command("serve")(serve.serve)
app.command("federate")(federated.federate)
app.add_typer(federated.app, name="fl")
app.command("worker")(serve.worker)
app.add_typer(tenants.app, name="tenants")
app.add_typer(jobs.app, name="jobs")
app.add_typer(feedback.app, name="feedback")
app.add_typer(routing.experiments_app, name="experiments")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"lorafleet {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", callback=_print_version, is_eager=True),
    ] = False,
) -> None:
    """lorafleet: fine-tune, version, serve and keep improving LoRA adapters on one shared base model.

    Models and adapters live under $LORAFLEET_HOME (default ~/.lorafleet).
    """


def main() -> None:
    """Console entry point."""
    quiet_third_party_output()  # before any command imports torch, PEFT or bitsandbytes
    sys.exit(app())
