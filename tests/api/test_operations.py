"""What operators use, on a real server: liveness, readiness (503 while the database is unreachable),
Prometheus metrics labelled by route template, and the OpenAPI schema and docs page describing every route.
None of this is database logic, so it runs on SQLite only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine

from tests.helpers import declared_routes
from tests.support.platform import Platform, upload

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]


def test_health_and_readiness(
    make_platform: Callable[..., Platform], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    platform = make_platform()
    anyone = platform.client()  # no key: probes are not authenticated
    assert anyone.get("/healthz").json() == {"status": "ok"}
    ready = anyone.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready", "database": "ok", "engine": "ok"}

    # The database goes away: an engine whose file cannot be opened stands in for a server that is down.
    with monkeypatch.context() as patch:
        patch.setattr(platform.registry.db, "engine", create_engine(f"sqlite:///{tmp_path}/missing/dir/x.db"))
        down = anyone.get("/readyz")
        assert anyone.get("/healthz").status_code == 200  # alive, though not ready
    assert down.status_code == 503, down.text
    assert down.json()["status"] == "not ready" and down.json()["database"].startswith("error")
    assert anyone.get("/readyz").status_code == 200


def test_metrics_count_requests_by_route_and_tokens(
    make_platform: Callable[..., Platform], qa_rows_file: Path
) -> None:
    platform = make_platform()
    client = platform.tenant("acme").client
    file = upload(client, qa_rows_file).json()
    for _ in range(2):
        assert client.get(f"/v1/files/{file['id']}").status_code == 200
    assert client.get("/v1/files/file-nope").status_code == 404
    assert client.get("/no/such/route").status_code == 404
    chat = {"model": platform.app.state.settings.base_model, "messages": [{"role": "user", "content": "hi"}]}
    usage = client.post("/v1/chat/completions", json={**chat, "max_tokens": 3}).json()["usage"]

    answer = platform.client().get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, tuple(sorted(labels.items()))))

    requests = "lorafleet_http_requests_total"
    assert (
        value(requests, method="GET", route="/v1/files/{file_id}", status="200") == 2
    )  # the template, not ids
    assert value(requests, method="GET", route="/v1/files/{file_id}", status="404") == 1
    assert value(requests, method="POST", route="/v1/files", status="201") == 1
    assert value(requests, method="POST", route="/v1/chat/completions", status="200") == 1
    assert value(requests, method="GET", route="unmatched", status="404") == 1
    assert not [labels for name, labels in samples if name == requests and file["id"] in str(labels)]
    assert value("lorafleet_tokens_total", kind="prompt") == usage["prompt_tokens"]
    assert value("lorafleet_tokens_total", kind="completion") == usage["completion_tokens"]
    assert value("lorafleet_jobs_active") == 0
    assert value("lorafleet_http_request_seconds_count", route="/v1/files/{file_id}") == 3


def test_openapi_describes_every_route_and_docs_load(make_platform: Callable[..., Platform]) -> None:
    platform = make_platform(serve_models=False)
    anyone = platform.client()
    schema = anyone.get("/openapi.json").json()
    documented = {(method.upper(), path) for path, item in schema["paths"].items() for method in item}
    routes = declared_routes(platform.app, "/") - declared_routes(platform.app, "/ui")  # pages, not API
    assert routes <= documented, f"routes missing from the schema: {routes - documented}"
    undescribed = [
        f"{method.upper()} {path}"
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if not operation.get("summary") or not operation.get("description")
    ]
    assert not undescribed, f"operations without a summary or description: {undescribed}"
    assert schema["info"]["title"] == "lorafleet" and "Bearer" in schema["info"]["description"]

    docs = anyone.get("/docs")
    assert docs.status_code == 200
    assert docs.headers["content-type"].startswith("text/html")
    assert "swagger" in docs.text.lower() and "/openapi.json" in docs.text
