"""`lorafleet jobs`: queue fine-tuning jobs, follow their events, cancel them, wait for them to finish."""

from __future__ import annotations

import time
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
    print_record,
    print_table,
    segment,
    show,
    when,
)
from lorafleet.errors import ConfigError, DataError, LorafleetError

app = typer.Typer(help="Fine-tuning jobs: create, list, show, follow, cancel, wait.", no_args_is_help=True)

JOBS = "/v1/fine_tuning/jobs"
FINISHED = ("succeeded", "failed", "cancelled")
JobArg = Annotated[str, typer.Argument(help="The job's id (ftjob-…).")]
PollOption = Annotated[float, typer.Option("--poll-seconds", min=0.05, help="Seconds between checks.")]
TimeoutOption = Annotated[
    float | None, typer.Option("--timeout", min=0, help="Give up after this many seconds (default: never).")
]


@app.command("create")
def create(
    adapter: Annotated[
        str,
        typer.Option("--adapter", "-a", help="Register the trained adapter as a new version of this name."),
    ],
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help="Training rows to upload (.jsonl, .json, .csv, .parquet)."),
    ] = None,
    file_id: Annotated[
        str | None, typer.Option("--file-id", help="An uploaded file's id instead of --file.")
    ] = None,
    validation_file: Annotated[
        Path | None, typer.Option("--validation-file", help="Held-out rows to upload and evaluate on.")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Base model; must be the server's (default: the server's)."),
    ] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Passes over the training rows.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Examples per micro-batch.")] = None,
    learning_rate_multiplier: Annotated[
        float | None,
        typer.Option("--learning-rate-multiplier", help="Multiplies the recipe's learning rate."),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the run.")] = None,
    parent: Annotated[
        str | None,
        typer.Option(
            "--parent",
            help="Continue this version (NAME@V, NAME:ALIAS or NAME); pick the strategy with "
            "--set continual.strategy=replay|ewc|orthogonal.",
        ),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Set a recipe field: --set lora.r=16 (repeatable; values are YAML)."),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job's events until it finishes.")] = False,
    poll_seconds: PollOption = 2.0,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Queue a fine-tuning job on a training file (uploaded with --file, or --file-id); a worker runs it."""
    from lorafleet.training.config import apply_override

    if (file is None) == (file_id is None):
        raise ConfigError("give the training rows as --file PATH or as --file-id ID (one of the two)")
    recipe: dict[str, Any] = {}
    for override in overrides or []:
        apply_override(recipe, override)
    hyperparameters = {
        key: value
        for key, value in {
            "n_epochs": epochs,
            "batch_size": batch_size,
            "learning_rate_multiplier": learning_rate_multiplier,
        }.items()
        if value is not None
    }
    with client_from_options(url, api_key, tenant, database_url, base_model=model) as client:
        training_file = file_id or _upload(client, file, quiet=as_json)  # type: ignore[arg-type]
        validation = _upload(client, validation_file, quiet=as_json) if validation_file is not None else None
        body = {
            "model": model or client.base_model(),
            "training_file": training_file,
            "validation_file": validation,
            "adapter": adapter,
            "hyperparameters": hyperparameters,
            "seed": seed,
            "recipe": recipe,
            "parent": parent,
        }
        job = client.request("POST", JOBS, json=body)
        if not as_json:
            typer.echo(
                f"queued job {job['id']}: adapter {job['adapter']} on {job['model']}, "
                f"file {job['training_file']}"
            )
            if client.direct:
                typer.echo("it runs when a worker takes it: `lorafleet worker` (same --database-url)")
        if wait:  # with --json the events go to stderr and the finished job to stdout
            job = _follow(client, job["id"], poll_seconds=poll_seconds, timeout=None, to_stderr=as_json)
    if as_json:
        print_json(job)
    if wait:
        _conclude(job, quiet=as_json)


@app.command("list")
def list_jobs(
    limit: Annotated[int, typer.Option("--limit", min=1, max=100, help="Most jobs to show.")] = 20,
    after: Annotated[str | None, typer.Option("--after", help="Show jobs older than this job id.")] = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """The tenant's jobs, newest first."""
    params: dict[str, Any] = {"limit": limit, **({"after": after} if after else {})}
    with client_from_options(url, api_key, tenant, database_url) as client:
        answer = client.request("GET", JOBS, params=params)
    if as_json:
        print_json(answer)
        return
    rows = [
        {
            "id": j["id"],
            "status": j["status"] if j["status"] != "running" else f"running {_progress(j)}",
            "adapter": j["fine_tuned_model"] or j["adapter"],
        }
        for j in answer["data"]
    ]
    columns = {"id": "id", "status": "status", "adapter": "adapter"}
    print_table(
        rows,
        columns,
        empty="no jobs yet: lorafleet jobs create --file rows.jsonl --adapter NAME",
    )
    if answer.get("has_more"):
        typer.echo(f"more: lorafleet jobs list --after {answer['data'][-1]['id']}")


@app.command("show")
def show_job(
    job_id: JobArg,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """One job: status, progress, metrics, the adapter version it made or its error."""
    with client_from_options(url, api_key, tenant, database_url) as client:
        job = client.request("GET", f"{JOBS}/{segment(job_id)}")
    if as_json:
        print_json(job)
        return
    print_record(
        {
            "id": job["id"],
            "status": job["status"],
            "adapter": job["adapter"],
            "model": job["model"],
            "result": job["fine_tuned_model"],
            "training file": job["training_file"],
            "validation file": job["validation_file"],
            "hyperparameters": {k: v for k, v in job["hyperparameters"].items() if v != "auto"},
            "steps": _progress(job),
            "attempts": job["attempts"],
            "metrics": job["metrics"],
            "trained tokens": job["trained_tokens"],
            "created": when(job["created_at"]),
            "finished": when(job["finished_at"]),
            "error": (job["error"] or {}).get("message"),
        }
    )


@app.command("events")
def events(
    job_id: JobArg,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="Most recent events to show.")] = 100,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """The job's latest events, oldest first: status changes, training logs, step metrics."""
    with client_from_options(url, api_key, tenant, database_url) as client:
        answer = client.request("GET", f"{JOBS}/{segment(job_id)}/events", params={"limit": limit})
    if as_json:
        print_json(answer)
        return
    for event in reversed(answer["data"]):
        _print_event(event)


@app.command("cancel")
def cancel(
    job_id: JobArg,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Cancel a queued or running job; it is cancelled at once (a running job's worker then stops its run,
    which saves a checkpoint, and registers nothing)."""
    with client_from_options(url, api_key, tenant, database_url) as client:
        job = client.request("POST", f"{JOBS}/{segment(job_id)}/cancel")
    if as_json:
        print_json(job)
    else:
        typer.echo(f"cancelled job {job['id']}")


@app.command("wait")
def wait(
    job_id: JobArg,
    poll_seconds: PollOption = 2.0,
    timeout: TimeoutOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Print the job's events until it finishes; exit 0 if it succeeded, 1 if it failed or was cancelled."""
    with client_from_options(url, api_key, tenant, database_url) as client:
        job = _follow(client, job_id, poll_seconds=poll_seconds, timeout=timeout)
    _conclude(job)


def _follow(
    client: PlatformClient,
    job_id: str,
    *,
    poll_seconds: float,
    timeout: float | None,
    to_stderr: bool = False,
) -> dict[str, Any]:
    """Print new events each poll until the job finishes; the finished job."""
    path = f"{JOBS}/{segment(job_id)}"
    deadline = None if timeout is None else time.monotonic() + timeout
    seen = 0  # the newest event number printed
    while True:
        job = client.request("GET", path)  # status first: events up to the end are read after it
        page = client.request("GET", f"{path}/events", params={"limit": 1000})["data"]
        for event in reversed(page):
            number = _event_number(event)
            if number > seen:
                _print_event(event, to_stderr=to_stderr)
                seen = number
        if job["status"] in FINISHED:
            break
        if deadline is not None and time.monotonic() > deadline:
            raise LorafleetError(
                f"job {job_id} is still {job['status']} after {timeout:g} s; wait again with "
                f"`lorafleet jobs wait {job_id}`"
            )
        time.sleep(poll_seconds)
    return job


def _conclude(job: dict[str, Any], *, quiet: bool = False) -> None:
    """Say how a finished job ended; exit 1 unless it succeeded."""
    if job["status"] == "succeeded":
        if not quiet:
            typer.echo(f"job {job['id']} succeeded: {job['fine_tuned_model']}")
        return
    reason = (job["error"] or {}).get("message") or "no error message"
    message = f"job {job['id']} {job['status']}" + (f": {reason}" if job["status"] == "failed" else "")
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _upload(client: PlatformClient, path: Path, *, quiet: bool = False) -> str:
    """Upload a training file; its id."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with path.open("rb") as handle:
        answer = client.request(
            "POST", "/v1/files", files={"file": (path.name, handle)}, data={"purpose": "fine-tune"}
        )
    if not quiet:
        typer.echo(
            f"uploaded {path.name} as {answer['id']} ({answer['rows']} rows, {answer['tokens']} tokens)"
        )
    return str(answer["id"])


def _event_number(event: dict[str, Any]) -> int:
    digits = str(event["id"]).removeprefix("ftevent-")
    return int(digits) if digits.isdigit() else 0


def _print_event(event: dict[str, Any], *, to_stderr: bool = False) -> None:
    """`time  [level: ]message  {data}` on one line."""
    level = "" if event["level"] == "info" else f"{event['level']}: "
    data = f"  {show(event['data'])}" if event.get("data") else ""
    typer.echo(f"{when(event['created_at'])}  {level}{event['message']}{data}", err=to_stderr)


def _progress(job: dict[str, Any]) -> str:
    if job["total_steps"]:
        return f"{job['step']}/{job['total_steps']}"
    return str(job["step"]) if job["step"] else "-"
