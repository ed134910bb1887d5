"""`lorafleet train`, `lorafleet eval` and `lorafleet chat`: fine-tune, score, and talk to an adapter."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated, Any

import typer

from lorafleet.cli import plain_console
from lorafleet.cli.platform import ApiKeyOption, DatabaseOption, TenantOption, UrlOption


def train(
    config: Annotated[
        Path | None, typer.Argument(help="A YAML recipe (see configs/); flags and --set override it.")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="Override any recipe field: --set training.learning_rate=1e-4 (repeatable)."
        ),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Base model: 'default', a HF dir, a .gguf.")] = None,
    data: Annotated[
        str | None, typer.Option(help="Training rows (.jsonl, .csv, .parquet, datasets dir).")
    ] = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Name of the adapter to save.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many optimizer steps.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Passes over the training rows.")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Examples per micro-batch.")] = None,
    parent: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Start from this adapter's weights (a name or directory of the same base); "
            "the recipe's continual: section picks the strategy against forgetting.",
        ),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the run's last checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing adapter and checkpoints.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Fine-tune a LoRA/QLoRA adapter from a recipe; prints a before/after table and where outputs went."""
    from lorafleet.training import load_config
    from lorafleet.training import train as run_training
    from lorafleet.training.report import record_data_scrub

    flags = {
        "model.name": model,
        "model.parent": parent,
        "data.path": data,
        "output.name": output,
        "training.max_steps": max_steps,
        "training.epochs": epochs,
        "training.learning_rate": learning_rate,
        "training.batch_size": batch_size,
        "output.overwrite": True if overwrite else None,
    }
    # JSON-quoted (JSON is YAML) so flags are taken literally: `--output 2025` names an adapter "2025".
    typed = [
        f"{key}={json.dumps(value, ensure_ascii=False)}" for key, value in flags.items() if value is not None
    ]
    recipe = load_config(config, [*typed, *(overrides or [])])
    console = plain_console()

    def say(line: str) -> None:
        console.print(line, soft_wrap=True)  # paths and commands stay whole at any terminal width

    result = run_training(recipe, resume=resume, show_progress=progress, log=say)
    scrubbed = record_data_scrub(result.adapter_dir, recipe.data)
    evaluation = result.summary["evaluation"]
    console.print(comparison_table(evaluation))
    say(f"adapter:    {result.adapter_dir}")
    say(f"loss curve: {result.summary.get('loss_curve', '-')}")
    say(f"summary:    {result.run_dir / 'summary.json'}")
    if scrubbed is not None:
        found = ", ".join(f"{kind} {n}" for kind, n in scrubbed["found"].items()) or "nothing"
        rows, head = scrubbed["rows"], scrubbed["head"]
        say(f"scrubbed:   {rows} rows ({found}); audit head {head} (in lorafleet.json)")
    say(
        f"trained {result.summary['steps']} steps in {result.summary['train_seconds']:.0f} s "
        f"({result.summary['tokens_per_second']:.0f} tokens/s, peak memory "
        f"{result.summary['peak_memory_mb']:.0f} MB)"
    )
    system = f" --system {shlex.quote(recipe.data.system_prompt)}" if recipe.data.system_prompt else ""
    say(f"chat with it: lorafleet chat --model {recipe.model.name} --adapter {recipe.output.name}{system}")


def evaluate(
    adapter: Annotated[str, typer.Option("--adapter", "-a", help="Adapter name or directory.")],
    data: Annotated[
        str | None, typer.Option(help="Held-out rows (.jsonl, .csv, .parquet, datasets dir) to score on now.")
    ] = None,
    suite: Annotated[
        Path | None,
        typer.Option(
            "--suite",
            help="Instead of scoring now: register these held-out rows as an eval suite of the registry "
            "adapter --adapter (with --metric json_fields, exact_match or perplexity); "
            "same as `lorafleet adapters suites add`.",
        ),
    ] = None,
    model: Annotated[
        str, typer.Option("--model", "-m", help="Base model the adapter was trained on.")
    ] = "default",
    metric: Annotated[
        str,
        typer.Option(
            help="Task metric by generation: json_fields, exact_match or none "
            "(a --suite: json_fields, exact_match or perplexity)."
        ),
    ] = "none",
    rows: Annotated[int, typer.Option(help="Most rows to score.")] = 200,
    max_length: Annotated[int, typer.Option(help="Tokens per example for the loss.")] = 1024,
    max_new_tokens: Annotated[int, typer.Option(help="Longest generated answer.")] = 128,
    batch_size: Annotated[int, typer.Option(help="Rows scored together.")] = 32,
    system_prompt: Annotated[
        str | None, typer.Option(help="System message used in training, if any.")
    ] = None,
    base: Annotated[bool, typer.Option(help="Score the base model too, side by side.")] = True,
    json_output: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Loss, perplexity and a task metric of an adapter on held-out rows (--data), beside its base model;
    or, with --suite, register held-out rows as an eval suite scoring every new version in the registry."""
    import json

    from lorafleet.errors import ConfigError

    if suite is not None:
        from lorafleet.cli.evaluation import add_suite

        add_suite(adapter, suite, metric, url, api_key, tenant, database_url, json_output)
        return
    if data is None:
        raise ConfigError("--data: give held-out rows to score on (or --suite FILE to register a suite)")

    from lorafleet.adapters import load_adapter
    from lorafleet.adapters.storage import adapter_path
    from lorafleet.data import DataConfig, read_examples, tokenize_example, with_system_prompt
    from lorafleet.models import load_base
    from lorafleet.training.evaluate import evaluate_model
    from lorafleet.training.metrics import TASK_METRICS

    if metric not in ("none", *TASK_METRICS):
        raise ConfigError(f"--metric {metric!r}: choose none or {', '.join(TASK_METRICS)}")
    settings = DataConfig.parse(path=data, max_length=max_length, max_rows=rows, system_prompt=system_prompt)
    base_model, tokenizer = load_base(model)
    read = read_examples(settings.path, max_rows=settings.max_rows)
    examples = [with_system_prompt(e, settings.system_prompt) for e in read.examples]
    tokenized = [tokenize_example(e, tokenizer, max_length=settings.max_length) for e in examples]
    scored = [e for e in examples if e.reference is not None]

    def score(runnable: Any) -> dict[str, Any]:
        return evaluate_model(
            runnable,
            tokenizer,
            validation=tokenized,
            examples=scored,
            metric=metric,
            max_length=settings.max_length,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        ).as_dict()

    results = {"base": score(base_model)} if base else {}
    results["adapter"] = score(load_adapter(base_model, adapter_path(adapter)))
    if json_output:
        typer.echo(json.dumps(results, indent=2))
    else:
        plain_console().print(comparison_table(results))


def chat(
    adapter: Annotated[str | None, typer.Option("--adapter", "-a", help="Adapter name or directory.")] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="Base model.")] = "default",
    system: Annotated[str | None, typer.Option(help="A system message for the conversation.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Most tokens per answer.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy; higher = more random.")] = 0.0,
) -> None:
    """Talk to a model (with an adapter) turn by turn, answers streamed; an empty line or Ctrl-D ends it."""
    from lorafleet.adapters import load_adapter
    from lorafleet.adapters.storage import adapter_path
    from lorafleet.errors import validated
    from lorafleet.models import load_base
    from lorafleet.serving import SamplingSettings, stream_generate

    sampling = validated(SamplingSettings, "", max_tokens=max_tokens, temperature=temperature, chat=False)
    base_model, tokenizer = load_base(model)
    runnable = load_adapter(base_model, adapter_path(adapter)) if adapter else base_model
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    typer.echo("chat: type a message; an empty line or Ctrl-D ends the conversation.")
    while True:
        try:
            message = input("> ")
        except EOFError:
            break
        if not message.strip():
            break
        history.append({"role": "user", "content": message})
        prompt = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
        answer = ""
        for piece in stream_generate(runnable, tokenizer, str(prompt), sampling):
            typer.echo(piece, nl=False)
            answer += piece
        typer.echo()
        history.append({"role": "assistant", "content": answer})


def comparison_table(results: dict[str, dict[str, Any]]) -> Any:
    """A rich table with one column per model (base, adapter) and one row per measure."""
    from rich.table import Table

    table = Table(title="held-out evaluation")
    table.add_column("measure")
    for name in results:
        table.add_column(name, justify="right")
    measures = [("validation loss", "loss", "{:.3f}"), ("perplexity", "perplexity", "{:.2f}")]
    task_keys = [key for key in next(iter(results.values()), {}).get("task", {}) if key != "per_field"]
    for key in task_keys:
        measures.append((key.replace("_", " "), key, "{:.3f}" if key != "rows" else "{}"))
    for label, key, fmt in measures:
        values = [result.get(key, result.get("task", {}).get(key)) for result in results.values()]
        if all(value is None for value in values):
            continue
        table.add_row(label, *("-" if value is None else fmt.format(value) for value in values))
    fields = next(iter(results.values()), {}).get("task", {}).get("per_field", {})
    for field in fields:
        values = [result.get("task", {}).get("per_field", {}).get(field) for result in results.values()]
        table.add_row(f"  {field}", *("-" if value is None else f"{value:.3f}" for value in values))
    return table
