"""`lorafleet generate`: one prompt through a base model, optionally with an adapter, streamed."""

from __future__ import annotations

from typing import Annotated

import typer


def generate(
    prompt: Annotated[str, typer.Argument(help="The prompt (a user message for chat models).")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="Base model: 'default', a HF dir, a .gguf.")
    ] = "default",
    adapter: Annotated[str | None, typer.Option("--adapter", "-a", help="Adapter directory or name.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 128,
    temperature: Annotated[float, typer.Option(help="0 = greedy; higher = more random.")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 1.0,
    top_k: Annotated[int, typer.Option(help="Sample among the k likeliest tokens (0 = all).")] = 0,
    seed: Annotated[int | None, typer.Option(help="Seed for reproducible sampling.")] = None,
    chat: Annotated[bool, typer.Option(help="Apply the model's chat template.")] = True,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, mps (default: best present).")] = None,
    dtype: Annotated[
        str | None, typer.Option(help="float32, bfloat16, float16 (default: per device).")
    ] = None,
) -> None:
    """Generate a completion, streamed to the terminal (greedy by default, sampled with --temperature)."""

    from lorafleet.adapters import load_adapter
    from lorafleet.adapters.storage import adapter_path
    from lorafleet.errors import ConfigError, describe_validation_error
    from lorafleet.models import load_base
    from lorafleet.serving import SamplingSettings, stream_generate

    try:
        settings = SamplingSettings(
            max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, chat=chat
        )
    except ValueError as err:
        raise ConfigError(describe_validation_error(err, "")) from err
    base, tokenizer = load_base(model, device=device, dtype=dtype)
    runnable = load_adapter(base, adapter_path(adapter)) if adapter else base
    for piece in stream_generate(runnable, tokenizer, prompt, settings):
        typer.echo(piece, nl=False)
    typer.echo()
