"""`lorafleet tenants`: create tenants, set their quotas and settings, issue and revoke their API keys (admin
routes)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from lorafleet.cli.platform import (
    ApiKeyOption,
    DatabaseOption,
    JsonOption,
    UrlOption,
    client_from_options,
    print_json,
    print_record,
    print_table,
    segment,
    when,
)
from lorafleet.errors import ConfigError

app = typer.Typer(
    help="Tenants, their quotas and API keys. With --url these need the admin key as --api-key.",
    no_args_is_help=True,
)

TenantArg = Annotated[str, typer.Argument(help="Tenant id or name.")]
SHORT_NAMES = {
    "max_concurrent_jobs": "jobs",
    "max_adapters": "adapters",
    "max_storage_bytes": "bytes",
    "max_monthly_tokens": "tokens/month",
    "requests_per_minute": "requests/min",
}
_QUOTA_HELP = "a whole number, or 'none' for unlimited"
ConcurrentJobsOpt = Annotated[
    str | None, typer.Option("--max-concurrent-jobs", help=f"Jobs queued or running at once: {_QUOTA_HELP}.")
]
AdaptersOpt = Annotated[
    str | None, typer.Option("--max-adapters", help=f"Adapter names stored: {_QUOTA_HELP}.")
]
StorageOpt = Annotated[
    str | None,
    typer.Option("--max-storage-bytes", help=f"Bytes of files and adapter versions stored: {_QUOTA_HELP}."),
]
TokensOpt = Annotated[
    str | None,
    typer.Option(
        "--max-monthly-tokens", help=f"Prompt + generated + trained tokens per month: {_QUOTA_HELP}."
    ),
]
RateOpt = Annotated[
    str | None,
    typer.Option(
        "--requests-per-minute", help=f"Requests per minute per API key (every route): {_QUOTA_HELP}."
    ),
]


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Unique tenant name: letters, digits, '.', '_', '-'.")],
    max_concurrent_jobs: ConcurrentJobsOpt = None,
    max_adapters: AdaptersOpt = None,
    max_storage_bytes: StorageOpt = None,
    max_monthly_tokens: TokensOpt = None,
    requests_per_minute: RateOpt = None,
    key: Annotated[
        bool, typer.Option("--key/--no-key", help="Also issue a first API key (printed once).")
    ] = True,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a tenant with optional quotas (unset: unlimited) and, unless --no-key, its first API key."""
    quotas = _quotas(
        max_concurrent_jobs=max_concurrent_jobs,
        max_adapters=max_adapters,
        max_storage_bytes=max_storage_bytes,
        max_monthly_tokens=max_monthly_tokens,
        requests_per_minute=requests_per_minute,
    )
    with client_from_options(url, api_key, None, database_url) as client:
        tenant = client.request("POST", "/v1/tenants", scoped=False, json={"name": name, "quotas": quotas})
        secret = None
        if key:
            path = f"/v1/tenants/{segment(tenant['id'])}/keys"
            secret = client.request("POST", path, scoped=False, json={"name": "default"})
    if as_json:
        print_json({"tenant": tenant, "key": secret})
        return
    typer.echo(f"created tenant {tenant['name']} ({tenant['id']})")
    if secret is not None:
        _print_secret(secret)


@app.command("list")
def list_tenants(
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every tenant with its quotas."""
    with client_from_options(url, api_key, None, database_url) as client:
        tenants = client.request("GET", "/v1/tenants", scoped=False)
    if as_json:
        print_json(tenants)
        return
    rows = [
        {
            "id": t["id"],
            "name": t["name"],
            "created": when(t["created_at"]),
            "quotas": _quota_text(t["quotas"]),
        }
        for t in tenants["data"]
    ]
    columns = {"name": "name", "id": "id", "created": "created", "quotas": "quotas"}
    print_table(rows, columns, empty="no tenants yet: lorafleet tenants create NAME")


@app.command("show")
def show(
    tenant: TenantArg,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """One tenant: id, creation time and quotas (- is unlimited)."""
    with client_from_options(url, api_key, None, database_url) as client:
        answer = client.request("GET", f"/v1/tenants/{segment(tenant)}", scoped=False)
    _print_tenant(answer, as_json)


@app.command("quotas")
def quotas(
    tenant: TenantArg,
    max_concurrent_jobs: ConcurrentJobsOpt = None,
    max_adapters: AdaptersOpt = None,
    max_storage_bytes: StorageOpt = None,
    max_monthly_tokens: TokensOpt = None,
    requests_per_minute: RateOpt = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Change the quotas given (others stay as they are); with none given, show the current ones."""
    changes = _quotas(
        max_concurrent_jobs=max_concurrent_jobs,
        max_adapters=max_adapters,
        max_storage_bytes=max_storage_bytes,
        max_monthly_tokens=max_monthly_tokens,
        requests_per_minute=requests_per_minute,
    )
    with client_from_options(url, api_key, None, database_url) as client:
        path = f"/v1/tenants/{segment(tenant)}"
        if changes:
            answer = client.request("PATCH", f"{path}/quotas", scoped=False, json=changes)
        else:
            answer = client.request("GET", path, scoped=False)
    _print_tenant(answer, as_json)


@app.command("settings")
def settings(
    tenant: TenantArg,
    log_text: Annotated[
        bool | None,
        typer.Option(
            "--log-text/--no-log-text",
            help="Keep the prompt and answer text of the tenant's completions in the request log.",
        ),
    ] = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Change the settings given (others stay as they are); with none given, show the current ones."""
    changes = {} if log_text is None else {"log_text": log_text}
    with client_from_options(url, api_key, None, database_url) as client:
        path = f"/v1/tenants/{segment(tenant)}"
        answer = client.request("PATCH" if changes else "GET", path, scoped=False, json=changes or None)
    _print_tenant(answer, as_json)


@app.command("keys")
def keys(
    tenant: TenantArg,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """A tenant's API keys (their first characters only; secrets are never stored)."""
    with client_from_options(url, api_key, None, database_url) as client:
        answer = client.request("GET", f"/v1/tenants/{segment(tenant)}/keys", scoped=False)
    if as_json:
        print_json(answer)
        return
    rows = [
        {
            **k,
            "prefix": f"{k['prefix']}…",
            "status": "active" if k["revoked_at"] is None else f"revoked {when(k['revoked_at'])[:10]}",
        }
        for k in answer["data"]
    ]
    columns = {"id": "id", "name": "name", "prefix": "prefix", "status": "status"}
    print_table(rows, columns, empty=f"{tenant} has no API keys: lorafleet tenants key-create {tenant}")


@app.command("key-create")
def key_create(
    tenant: TenantArg,
    name: Annotated[str, typer.Option("--name", help="A label to tell keys apart.")] = "default",
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Issue an API key for a tenant; the secret is printed this once."""
    with client_from_options(url, api_key, None, database_url) as client:
        path = f"/v1/tenants/{segment(tenant)}/keys"
        secret = client.request("POST", path, scoped=False, json={"name": name})
    if as_json:
        print_json(secret)
        return
    _print_secret(secret)


@app.command("key-revoke")
def key_revoke(
    tenant: TenantArg,
    key_id: Annotated[str, typer.Argument(help="The key's id (see `lorafleet tenants keys TENANT`).")],
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Revoke an API key: it stops working at once."""
    with client_from_options(url, api_key, None, database_url) as client:
        path = f"/v1/tenants/{segment(tenant)}/keys/{segment(key_id)}"
        answer = client.request("DELETE", path, scoped=False)
    if as_json:
        print_json(answer)
        return
    typer.echo(f"revoked key {answer['id']} ({answer['name']}, {answer['prefix']}…) of {tenant}")


def _quotas(**options: str | None) -> dict[str, int | None]:
    """The quota options given, as numbers (None: unlimited); `ConfigError` naming a bad one."""
    values: dict[str, int | None] = {}
    for field, raw in options.items():
        if raw is None:
            continue
        text = raw.strip().lower()
        if text in ("none", "unlimited"):
            values[field] = None
            continue
        try:
            values[field] = int(text)
        except ValueError:
            flag = "--" + field.replace("_", "-")
            raise ConfigError(f"{flag} {raw!r}: give {_QUOTA_HELP}") from None
    return values


def _quota_text(quotas: dict[str, int | None]) -> str:
    """The limits that are set, as `adapters=3, requests/min=60`; `unlimited` when none is."""
    limits = [
        f"{SHORT_NAMES.get(field, field)}={value}" for field, value in quotas.items() if value is not None
    ]
    return ", ".join(limits) or "unlimited"


def _print_tenant(tenant: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(tenant)
        return
    quotas = {field: value if value is not None else "unlimited" for field, value in tenant["quotas"].items()}
    settings = {field: _on_off(value) for field, value in tenant["settings"].items()}
    print_record(
        {
            "id": tenant["id"],
            "name": tenant["name"],
            "created": when(tenant["created_at"]),
            **quotas,
            **settings,
        }
    )


def _on_off(value: Any) -> Any:
    return ("on" if value else "off") if isinstance(value, bool) else value


def _print_secret(secret: dict[str, Any]) -> None:
    typer.echo(f"API key {secret['id']} ({secret['name']}) for tenant {secret['tenant_id']}:")
    typer.echo(f"  {secret['key']}")
    typer.echo("Store it now: it is not kept and will not be shown again.", err=True)
