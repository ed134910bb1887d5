"""`lorafleet feedback`: score, label or correct a completion by its id; list feedback; export corrections."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from lorafleet.cli.platform import (
    ApiKeyOption,
    DatabaseOption,
    JsonOption,
    TenantOption,
    UrlOption,
    client_from_options,
    print_json,
    print_table,
    when,
)

app = typer.Typer(
    help="Feedback on served completions (by the response's id), and corrections as training files.",
    no_args_is_help=True,
)

FEEDBACK = "/v1/feedback"


@app.command("send")
def send(
    completion_id: Annotated[str, typer.Argument(help="The completion's id (its response's `id`).")],
    score: Annotated[float | None, typer.Option("--score", help="How good the answer was, 0 to 1.")] = None,
    label: Annotated[
        str | None, typer.Option("--label", help="A category of your own: wrong_field, …")
    ] = None,
    correction: Annotated[
        str | None, typer.Option("--correction", help="The answer it should have given (a training row).")
    ] = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Send feedback on one completion: at least one of --score, --label and --correction."""
    body = {"completion_id": completion_id, "score": score, "label": label, "correction": correction}
    with client_from_options(url, api_key, tenant, database_url) as client:
        feedback = client.request("POST", FEEDBACK, json=body)
    if as_json:
        print_json(feedback)
        return
    typer.echo(f"recorded feedback {feedback['id']} on {feedback['completion_id']}")


@app.command("list")
def list_feedback(
    completion_id: Annotated[
        str | None, typer.Option("--completion", help="Only the feedback on this completion.")
    ] = None,
    after: Annotated[str | None, typer.Option("--after", help="Feedback id the page starts after.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="Most feedback shown.")] = 100,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """The tenant's feedback, oldest first."""
    params: dict[str, Any] = {"completion_id": completion_id, "after": after, "limit": limit}
    with client_from_options(url, api_key, tenant, database_url) as client:
        answer = client.request("GET", FEEDBACK, params={k: v for k, v in params.items() if v is not None})
    if as_json:
        print_json(answer)
        return
    rows = [{**f, "created": when(f["created_at"])} for f in answer["data"]]
    columns = {
        "id": "id",
        "completion_id": "completion",
        "score": "score",
        "label": "label",
        "correction": "correction",
        "created": "created",
    }
    print_table(rows, columns, empty="no feedback yet: lorafleet feedback send COMPLETION_ID --score 1")
    if answer.get("has_more"):
        typer.echo(f"more: lorafleet feedback list --after {answer['data'][-1]['id']}")


@app.command("corrections")
def corrections(
    adapter: Annotated[
        str | None, typer.Option("--adapter", "-a", help="Only completions served by this adapter.")
    ] = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Store the corrections as a fine-tune file (each row: the prompt, then the correction as the answer)."""
    with client_from_options(url, api_key, tenant, database_url) as client:
        file = client.request("POST", f"{FEEDBACK}/corrections/export", json={"adapter": adapter})
    if as_json:
        print_json(file)
        return
    rows, tokens = file["rows"], file["tokens"]
    typer.echo(f"stored {rows} corrections as file {file['id']} ({file['filename']}, {tokens} tokens)")
    for skipped in file["skipped"]:
        typer.echo(f"left out {skipped['completion_id']}: {skipped['reason']}", err=True)
    typer.echo(f"train on it: lorafleet jobs create --file-id {file['id']} --adapter NAME")
