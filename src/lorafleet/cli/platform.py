"""The platform commands' client: one code path, the HTTP API, to a server by URL or to the local registry.

    --url URL    httpx to that server, authenticated by --api-key (a tenant's key, or the admin key
                 acting for --tenant)
    no URL       the same app in-process (`starlette.testclient.TestClient`, no network, no model loaded)
                 on the registry at --database-url, as the admin (the local user owns the database),
                 acting for --tenant

So validation, tenant scoping and error messages are the server's own in both modes. An error answer
becomes an `ApiError` carrying the server's message and status code.
"""

from __future__ import annotations

import io
import json
import secrets
import tarfile
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.table import Table

from lorafleet.cli import plain_console
from lorafleet.errors import ConfigError, LorafleetError, validated

TENANT_HEADER = "X-Lorafleet-Tenant"  # api.auth's; not imported, so the CLI starts without FastAPI
_LOCAL_ADMIN_KEY = secrets.token_urlsafe(32)  # direct mode's admin key: never leaves this process

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="LORAFLEET_URL",
        help="A lorafleet server (http://host:8000); unset: the local registry directly, no server.",
    ),
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="LORAFLEET_API_KEY",
        help="Key for --url: a tenant's API key, or the admin key (with --tenant for tenant commands).",
    ),
]
TenantOption = Annotated[
    str | None,
    typer.Option(
        "--tenant",
        envvar="LORAFLEET_TENANT",
        help="Tenant id or name to act for (needed without --url, or with the admin key).",
    ),
]
DatabaseOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="LORAFLEET_DATABASE_URL",
        help="Registry used without --url (default: SQLite under $LORAFLEET_HOME).",
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the server's JSON answer instead of a table.")
]


class ApiError(LorafleetError):
    """An error answer of the API (its `error.message` and status code) or a server that cannot be reached."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message if status is None else f"{message} (HTTP {status} {_reason(status)})")
        self.status = status


class PlatformClient(AbstractContextManager["PlatformClient"]):
    """Requests to the platform API, to a server at `url` or to the app run in-process (see the module).

    Use it in a `with` block: in direct mode that opens the registry (migrating it) and closes it after.
    """

    def __init__(
        self,
        *,
        url: str | None = None,
        api_key: str | None = None,
        tenant: str | None = None,
        database_url: str | None = None,
        base_model: str | None = None,
        timeout: float = 120.0,
    ) -> None:
        self.url = url.rstrip("/") if url else None
        self.tenant = tenant
        self._http: Any
        if self.url is not None:
            import httpx

            if not api_key:
                raise ConfigError("--api-key (or LORAFLEET_API_KEY) is needed with --url")
            self._secret = api_key
            self._http = httpx.Client(base_url=self.url, timeout=timeout)
        else:
            from starlette.testclient import TestClient

            from lorafleet.api.app import create_app
            from lorafleet.api.settings import ServerSettings

            options: dict[str, Any] = {"database_url": database_url}
            if base_model is not None:
                options["base_model"] = base_model
            settings = validated(
                ServerSettings, "", serve_models=False, workers=0, admin_key=_LOCAL_ADMIN_KEY, **options
            )
            self._secret = _LOCAL_ADMIN_KEY
            self._http = TestClient(create_app(settings))

    @property
    def direct(self) -> bool:
        """True when talking to the local registry in-process (no --url)."""
        return self.url is None

    def __enter__(self) -> PlatformClient:
        self._http.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._http.__exit__(kind, error, trace)

    def request(self, method: str, path: str, *, scoped: bool = True, **options: Any) -> Any:
        """The decoded JSON answer to `method path` (httpx's `json=`, `params=`, `files=`, `data=`).

        `scoped` routes act for a tenant: without --url that must be named by --tenant.
        """
        answer = self._send(method, path, scoped=scoped, **options)
        try:
            return answer.json()
        except ValueError:
            raise ApiError(
                f"{method} {self.url or ''}{path} did not answer JSON: is that a lorafleet server?"
            ) from None

    def download(self, path: str) -> bytes:
        """The body of `GET path` (a file the API serves, such as a version's .tar.gz)."""
        return bytes(self._send("GET", path, scoped=True).content)

    def _send(self, method: str, path: str, *, scoped: bool, **options: Any) -> Any:
        """The answer to `method path`; an error answer or no answer at all as `ApiError`."""
        import httpx

        if scoped and self.direct and not self.tenant:
            raise ConfigError("--tenant is needed to act for a tenant on the local registry (or use --url)")
        headers = {"Authorization": f"Bearer {self._secret}"}
        if scoped and self.tenant:
            headers[TENANT_HEADER] = self.tenant
        try:
            answer = self._http.request(method, path, headers=headers, **options)
        except (httpx.ConnectError, httpx.UnsupportedProtocol) as err:
            raise ApiError(
                f"cannot reach the lorafleet server at {self.url}: {err or type(err).__name__}; "
                "is `lorafleet serve` running there?"
            ) from None
        except httpx.TransportError as err:
            raise ApiError(
                f"{method} {self.url}{path} failed: {err or type(err).__name__}; try again, "
                "or check the server's log"
            ) from None
        if answer.status_code == 404 and not _is_error_body(answer):
            raise ApiError(f"{self.url or ''} has no route {method} {path}: is --url the server's root?")
        if answer.status_code >= 400:
            retry = answer.headers.get("retry-after")
            hint = f"; retry after {retry} s" if answer.status_code == 429 and retry else ""
            raise ApiError(_error_message(answer) + hint, status=answer.status_code)
        return answer

    def base_model(self) -> str:
        """The base model the server fine-tunes and serves (the first entry of `GET /v1/models`)."""
        models = self.request("GET", "/v1/models")["data"]
        return str(models[0]["id"])


def client_from_options(
    url: str | None,
    api_key: str | None,
    tenant: str | None,
    database_url: str | None,
    *,
    base_model: str | None = None,
) -> PlatformClient:
    """The client for the common options of the platform commands."""
    return PlatformClient(
        url=url, api_key=api_key, tenant=tenant, database_url=database_url, base_model=base_model
    )


@dataclass(frozen=True)
class FetchedVersion:
    """A registry version downloaded by `fetch_version`: its adapter folder, base model, name and number."""

    folder: Path
    base_model: str
    name: str
    version: int


def fetch_version(client: PlatformClient, spec: str, scratch: Path) -> FetchedVersion:
    """Download registry version `spec` (NAME@V or NAME:ALIAS) and unpack it into `scratch`."""
    name, _, version = spec.partition("@") if "@" in spec else spec.partition(":")
    if not name or not version:
        raise ConfigError(
            f"{spec!r}: a registry version is NAME@V (tickets@3) or NAME:ALIAS (tickets:production)"
        )
    if "@" not in spec:  # an alias: the version it points at
        aliases = client.request("GET", f"/v1/adapters/{segment(name)}")["aliases"]
        if version not in aliases:
            known = ", ".join(sorted(aliases)) or "none"
            raise ConfigError(f"adapter {name!r} has no alias {version!r} (aliases: {known})")
        version = str(aliases[version])
    row = client.request("GET", f"/v1/adapters/{segment(name)}/versions/{segment(version)}")
    body = client.download(f"/v1/adapters/{segment(name)}/versions/{row['version']}/download")
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as archive:
        archive.extractall(scratch, filter="data")
    folder = next(p for p in scratch.iterdir() if p.is_dir())
    return FetchedVersion(folder, str(row["base_model"]), name, int(row["version"]))


def segment(value: str) -> str:
    """`value` quoted as one path segment, so a name can never reach another route."""
    return quote(value, safe="")


def _reason(status: int) -> str:
    """`Not Found` for 404: the status code's standard phrase."""
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "error"


def _is_error_body(answer: Any) -> bool:
    """Whether the answer is one of lorafleet's `{"error": {...}}` bodies."""
    try:
        body = answer.json()
    except ValueError:
        return False
    return isinstance(body, dict) and isinstance(body.get("error"), dict)


def _error_message(answer: Any) -> str:
    try:
        error = answer.json().get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    except (ValueError, AttributeError):
        pass
    text = " ".join(answer.text.split())[:300]
    return text or answer.reason_phrase or "error"


# --- output ------------------------------------------------------------------------------------------------


def print_json(data: Any) -> None:
    """The answer as indented JSON on stdout."""
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def print_table(rows: list[dict[str, Any]], columns: dict[str, str], *, empty: str = "nothing yet") -> None:
    """`rows` as a table of `columns` (key → heading); ids and names never wrap, other cells may."""
    if not rows:
        typer.echo(empty)
        return
    table = Table()
    for key, heading in columns.items():
        table.add_column(heading, no_wrap=key in ("id", "name"), overflow="fold")
    for row in rows:
        table.add_row(*(show(row.get(key)) for key in columns))
    plain_console().print(table)


def print_record(record: dict[str, Any]) -> None:
    """One resource as a two-column table of field and value."""
    table = Table(show_header=False)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in record.items():
        table.add_row(key, show(value))
    plain_console().print(table)


def show(value: Any) -> str:
    """A field's value as text: `-` for none, JSON for mappings and lists."""
    if value is None or value == "" or value == {} or value == []:
        return "-"
    if isinstance(value, dict | list):
        return json.dumps(_rounded(value), ensure_ascii=False)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _rounded(value: Any) -> Any:
    """`value` with every float kept to 4 significant digits, for reading (--json keeps them whole)."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_rounded(item) for item in value]
    return value


def when(timestamp: int | float | None) -> str:
    """A Unix time as `YYYY-MM-DD HH:MM:SS` UTC, or `-`."""
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")
