"""`lorafleet estimate`: the memory to fine-tune a model fully, with LoRA and with QLoRA, as a table."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from rich.table import Table

    from lorafleet.training.estimate import MemoryEstimate, ModelShape

ROWS = ("weights", "adapter", "gradients", "optimizer", "activations", "total")
# CLI option → ModelShape field, for a model given as numbers (or numbers changing a named model).
SHAPE_OPTIONS = {
    "--vocab-size": "vocab_size",
    "--hidden-size": "hidden_size",
    "--intermediate-size": "intermediate_size",
    "--layers": "num_layers",
    "--heads": "num_heads",
    "--kv-heads": "num_kv_heads",
}


def estimate(
    model: Annotated[
        str | None,
        typer.Argument(
            help="'default' (the bundled SmolLM2-135M), a known name such as llama-2-7b or its hub id, or a "
            "HF model directory; omit it to give the shape with --hidden-size, --layers, ..."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Sequences per optimizer step (per device).")] = 1,
    seq_length: Annotated[int, typer.Option(help="Tokens per sequence.")] = 2048,
    r: Annotated[int, typer.Option("--r", "-r", help="LoRA rank.")] = 16,
    target: Annotated[
        list[str] | None,
        typer.Option(
            help="LoRA target module, repeatable, or 'all-linear' (default: q_proj k_proj v_proj o_proj)."
        ),
    ] = None,
    dtype: Annotated[
        str, typer.Option(help="Weights and compute dtype: bfloat16, float16, float32.")
    ] = "bfloat16",
    optimizer: Annotated[str, typer.Option(help="adamw (fp32 moments), adamw-8bit, or sgd.")] = "adamw",
    attention: Annotated[
        str, typer.Option(help="sdpa (flash / memory-efficient) or eager (keeps scores).")
    ] = "sdpa",
    double_quant: Annotated[bool, typer.Option(help="QLoRA quantizes the NF4 block constants too.")] = True,
    gradient_checkpointing: Annotated[
        bool | None,
        typer.Option(
            "--gradient-checkpointing/--no-gradient-checkpointing",
            help="Show only with, or only without (default: both).",
        ),
    ] = None,
    vocab_size: Annotated[int | None, typer.Option(help="Shape: vocabulary size.")] = None,
    hidden_size: Annotated[int | None, typer.Option(help="Shape: hidden size.")] = None,
    intermediate_size: Annotated[int | None, typer.Option(help="Shape: MLP intermediate size.")] = None,
    layers: Annotated[int | None, typer.Option(help="Shape: decoder layers.")] = None,
    heads: Annotated[int | None, typer.Option(help="Shape: attention heads.")] = None,
    kv_heads: Annotated[int | None, typer.Option(help="Shape: key/value heads (default: --heads).")] = None,
    tie_embeddings: Annotated[
        bool | None,
        typer.Option("--tie-embeddings/--no-tie-embeddings", help="Shape: head shares the embedding."),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print JSON (bytes) instead of the table.")
    ] = False,
) -> None:
    """Estimate the memory of full fine-tuning, LoRA and QLoRA, with and without gradient checkpointing."""
    from lorafleet.training.estimate import METHODS, estimate_memory

    numbers = dict(
        zip(SHAPE_OPTIONS, [vocab_size, hidden_size, intermediate_size, layers, heads, kv_heads], strict=True)
    )
    shape = _resolve_shape(model, numbers, tie_embeddings)
    checkpointing = (False, True) if gradient_checkpointing is None else (gradient_checkpointing,)
    estimates = [
        estimate_memory(
            shape,
            method=method,
            batch_size=batch_size,
            seq_length=seq_length,
            lora_r=r,
            lora_targets=_targets(target),
            dtype=dtype,  # type: ignore[arg-type]  # checked by estimate_memory
            optimizer=optimizer,  # type: ignore[arg-type]
            attention=attention,  # type: ignore[arg-type]
            gradient_checkpointing=checkpointed,
            double_quant=double_quant,
        )
        for method in METHODS
        for checkpointed in checkpointing
    ]
    label = model or ("custom shape" if any(v is not None for v in numbers.values()) else "default")
    if json_output:
        document = {
            "model": label,
            "shape": shape.model_dump(),
            "parameters": shape.num_parameters(),
            "dtype": dtype,
            "optimizer": optimizer,
            "units": "bytes",
            "estimates": [e.model_dump() for e in estimates],
        }
        typer.echo(json.dumps(document, indent=2))
        return
    from lorafleet.cli import plain_console

    console = plain_console()
    console.print(
        f"{label}: {_count(shape.num_parameters())} parameters; batch {batch_size} × {seq_length} tokens, "
        f"{dtype}, {optimizer}, LoRA r={r}"
    )
    console.print(_table(estimates))
    quantization = "NF4 base, double quant" if double_quant else "NF4 base"
    console.print(f"GB = 10⁹ bytes. ckpt: gradient checkpointing. QLoRA: {quantization}.")
    console.print("Estimate ±20%; leaves out the CUDA context (≈0.5 GB) and allocator overhead.")


def _resolve_shape(model: str | None, numbers: dict[str, int | None], tied: bool | None) -> ModelShape:
    """The named model's shape, changed by any shape numbers; or a shape made from the numbers alone."""
    from lorafleet.errors import ConfigError
    from lorafleet.training.estimate import ModelShape, model_shape

    given = {SHAPE_OPTIONS[option]: value for option, value in numbers.items() if value is not None}
    if tied is not None:
        given["tie_word_embeddings"] = tied
    if model is None and given:
        missing = [o for o, v in numbers.items() if v is None and o != "--kv-heads"]
        if missing:
            raise ConfigError(f"a model given as numbers needs {', '.join(missing)} too (or name a MODEL)")
        return ModelShape.parse(**given)
    shape = model_shape(model or "default")
    return ModelShape.parse(**{**shape.model_dump(), **given}) if given else shape


def _targets(target: list[str] | None) -> list[str] | str:
    from lorafleet.training.estimate import DEFAULT_TARGETS

    if not target:
        return list(DEFAULT_TARGETS)
    return "all-linear" if target == ["all-linear"] else target


def _table(estimates: list[MemoryEstimate]) -> Table:
    from rich.table import Table

    table = Table()
    table.add_column("GB", justify="left", no_wrap=True)
    for e in estimates:
        table.add_column(e.method + (" ckpt" if e.gradient_checkpointing else ""), justify="right")
    table.add_row("trainable", *[_count(e.trainable_params) for e in estimates])
    for row in ROWS:
        table.add_row(
            row, *[f"{getattr(e, row) / 1e9:,.3f}" for e in estimates], end_section=row == "activations"
        )
    return table


def _count(n: int) -> str:
    """1234567 → 1.23M."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)
