"""`lorafleet generate`: one prompt streamed to the terminal, or a JSONL file of prompts for many adapters
run as mixed batches by the serving engine, with one JSONL result per row."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from lorafleet.serving.cache import AdapterSource
    from lorafleet.serving.generate import SamplingSettings
    from lorafleet.serving.requests import Request

ROW_FIELDS = ("prompt", "adapter")


def generate(
    prompt: Annotated[
        str | None, typer.Argument(help="The prompt (a user message for chat models); omit with --input.")
    ] = None,
    model: Annotated[
        str, typer.Option("--model", "-m", help="Base model: 'default', a HF dir, a .gguf.")
    ] = "default",
    adapter: Annotated[
        list[str] | None,
        typer.Option(
            "--adapter",
            "-a",
            help="Adapter directory or name; NAME=PATH names it for --input rows (repeatable).",
        ),
    ] = None,
    input_file: Annotated[
        Path | None,
        typer.Option(
            "--input", "-i", help="JSONL rows {prompt, adapter, sampling fields...} to run as mixed batches."
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write --input results here as JSONL (default: stdout)."),
    ] = None,
    max_batch: Annotated[int, typer.Option(help="Requests decoded together (--input).")] = 32,
    max_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 128,
    temperature: Annotated[float, typer.Option(help="0 = greedy; higher = more random.")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 1.0,
    top_k: Annotated[int, typer.Option(help="Sample among the k likeliest tokens (0 = all).")] = 0,
    seed: Annotated[int | None, typer.Option(help="Seed for reproducible sampling.")] = None,
    stop: Annotated[
        list[str] | None, typer.Option(help="End the completion at this string (repeatable).")
    ] = None,
    repetition_penalty: Annotated[
        float, typer.Option(help="Penalty on tokens already seen (1 = off).")
    ] = 1.0,
    chat: Annotated[bool, typer.Option(help="Apply the model's chat template.")] = True,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, mps (default: best present).")] = None,
    dtype: Annotated[
        str | None, typer.Option(help="float32, bfloat16, float16 (default: per device).")
    ] = None,
) -> None:
    """Generate a completion, streamed to the terminal (greedy by default, sampled with --temperature).

    With --input FILE.jsonl, every row ({"prompt": ..., "adapter": NAME or null, optional sampling
    fields such as "max_tokens"}) runs through the serving engine in mixed batches, and one JSON
    result per row is written in input order.
    """
    from lorafleet.adapters import load_adapter
    from lorafleet.adapters.storage import adapter_path
    from lorafleet.errors import ConfigError, validated
    from lorafleet.models import load_base
    from lorafleet.serving import SamplingSettings, stream_generate

    settings = validated(
        SamplingSettings,
        "",
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        chat=chat,
        stop=stop or [],
        repetition_penalty=repetition_penalty,
    )
    adapters = adapter or []
    if input_file is not None:
        if prompt is not None:
            raise ConfigError("give a PROMPT or --input FILE.jsonl, not both")
        run_batch(
            input_file, output, adapters, settings, model=model, device=device, dtype=dtype, batch=max_batch
        )
        return
    if prompt is None:
        raise ConfigError("give a PROMPT, or --input FILE.jsonl for a batch")
    if len(adapters) > 1:
        raise ConfigError(
            f"--adapter is given {len(adapters)} times; one prompt takes one (use --input for more)"
        )
    base, tokenizer = load_base(model, device=device, dtype=dtype)
    runnable = load_adapter(base, adapter_path(adapters[0].split("=", 1)[-1])) if adapters else base
    for piece in stream_generate(runnable, tokenizer, prompt, settings):
        typer.echo(piece, nl=False)
    typer.echo()


def run_batch(
    input_file: Path,
    output: Path | None,
    adapters: list[str],
    settings: SamplingSettings,
    *,
    model: str,
    device: str | None,
    dtype: str | None,
    batch: int,
) -> None:
    """Check every row of `input_file`, then run them all through the engine and write the results."""
    from lorafleet.models import load_base
    from lorafleet.serving.cache import DirectorySource
    from lorafleet.serving.engine import Engine

    source = DirectorySource(parse_adapters(adapters))
    requests = read_requests(input_file, settings, source)
    base, tokenizer = load_base(model, device=device, dtype=dtype)
    engine = Engine.for_model(
        base, tokenizer, source=source, max_batch=batch, queue_size=max(len(requests), 1)
    )
    completions = engine.generate(requests)
    lines = [
        json.dumps(
            {
                "prompt": request.prompt,
                "adapter": request.adapter,
                **completion.model_dump(
                    include={"text", "prompt_tokens", "completion_tokens", "finish_reason", "error"}
                ),
            },
            ensure_ascii=False,
        )
        for request, completion in zip(requests, completions, strict=True)
    ]
    text = "".join(f"{line}\n" for line in lines)
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)
    failed = sum(1 for completion in completions if completion.error)
    where = output if output is not None else "stdout"
    typer.echo(f"wrote {len(lines)} results to {where} ({failed} failed)", err=True)


def parse_adapters(values: list[str]) -> dict[str, str]:
    """`NAME=PATH` (or a bare adapter name or directory, named as given) → {name: path}."""
    from lorafleet.adapters.storage import adapter_path
    from lorafleet.errors import ConfigError

    mapping: dict[str, str] = {}
    for value in values:
        name, _, path = value.partition("=")
        if not name or (value.count("=") and not path):
            raise ConfigError(f"--adapter {value!r}: give NAME=PATH, or a name or directory")
        mapping[name] = path or str(adapter_path(value))
    return mapping


def read_requests(path: Path, defaults: SamplingSettings, source: AdapterSource) -> list[Request]:
    """The engine requests of a JSONL file, every row checked; `ConfigError` naming `FILE:LINE` otherwise."""
    from pydantic import ValidationError

    from lorafleet.errors import ConfigError, LorafleetError, describe_validation_error
    from lorafleet.serving.requests import Request

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the input file ({err})") from err
    requests: list[Request] = []
    checked: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from err
        if not isinstance(row, dict):
            raise ConfigError(f'{where}: a row must be a JSON object like {{"prompt": ..., "adapter": ...}}')
        if not isinstance(row.get("prompt"), str):
            raise ConfigError(f"{where}: 'prompt' must be a string (got {row.get('prompt')!r})")
        adapter = row.get("adapter")
        if adapter is not None and not isinstance(adapter, str):
            raise ConfigError(f"{where}: 'adapter' must be a name or null (got {adapter!r})")
        fields = {key: value for key, value in row.items() if key not in ROW_FIELDS}
        try:
            sampling = defaults.model_validate({**defaults.model_dump(), **fields})
        except ValidationError as err:
            raise ConfigError(f"{where}: {describe_validation_error(err, '')}") from err
        if adapter is not None and adapter not in checked:
            try:
                source.locate(adapter)
            except LorafleetError as err:
                raise ConfigError(f"{where}: {err}; name it with --adapter {adapter}=PATH") from err
            checked.add(adapter)
        requests.append(Request(prompt=row["prompt"], adapter=adapter, sampling=sampling))
    if not requests:
        raise ConfigError(f"{path}: no rows; give one JSON object per line")
    return requests
