"""The OpenAPI document tells the truth: schemathesis fuzzes a real server from its own /openapi.json.

A bounded run (a fixed seed, a few examples per operation) of the schemathesis CLI against `create_app` on
the tiny model, served by uvicorn on 127.0.0.1, once with a tenant's key (every route, admin ones answer
403) and once with the admin key acting for that tenant. It fails on any 5xx and on any status, content
type, header or body the document does not declare. The tenant owns a file and an adapter with a
`production` alias first, so the fuzzer's requests also reach the paths where things exist.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from lorafleet.api.auth import TENANT_HEADER
from tests.helpers import save_random_adapter, write_jsonl
from tests.support.platform import ADMIN_KEY, QA_ROWS, Platform, upload

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    ]
)
EXAMPLES_PER_OPERATION = 12


def fuzz(platform: Platform, headers: dict[str, str], report: Path) -> subprocess.CompletedProcess[str]:
    """One schemathesis run over every operation of the server's document, with `headers` on each request."""
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{platform.url}/openapi.json",
        f"--checks={CHECKS}",
        f"--max-examples={EXAMPLES_PER_OPERATION}",
        "--seed=20261206",
        "--phases=examples,coverage,fuzzing",
        "--workers=1",
        "--request-timeout=60",
        "--no-shrink",
        "--suppress-health-check=filter_too_much",  # the generator's own check, not about the server
        f"--report-dir={report}",
        "--report=junit",
        *(f"--header={name}: {value}" for name, value in headers.items()),
    ]
    # in the report's folder: schemathesis keeps a cache of crashes in its working directory
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, cwd=report)


@pytest.mark.integration
@pytest.mark.slow  # a few minutes: `make test` runs it, `make test-fast` does not
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_server_answers_as_its_document_declares(
    make_platform: Callable[..., Platform], tiny_dir: Path, tmp_path: Path
) -> None:
    from lorafleet.models import load_base

    platform = make_platform(max_batch=4)
    tenant = platform.tenant("fuzzed")
    assert upload(tenant.client, write_jsonl(tmp_path / "train.jsonl", QA_ROWS)).status_code == 201
    base, _ = load_base(str(tiny_dir), device="cpu")
    adapter = save_random_adapter(base, tmp_path / "adapter", seed=1)
    platform.registry.adapters.register(tenant.id, "support", adapter, base_model=str(tiny_dir))
    assert tenant.client.post("/v1/adapters/support/aliases/production", json={"version": 1}).is_success

    runs = {
        "tenant key": {"Authorization": f"Bearer {tenant.key}"},
        "admin key": {"Authorization": f"Bearer {ADMIN_KEY}", TENANT_HEADER: tenant.id},
    }
    for who, headers in runs.items():
        report = tmp_path / who.replace(" ", "-")
        report.mkdir()
        result = fuzz(platform, headers, report)
        output = result.stdout + result.stderr
        assert result.returncode == 0, (
            f"schemathesis with the {who} found undeclared answers:\n{output[-8000:]}"
        )
        assert "passed" in output.lower(), output[-2000:]  # it ran test cases, not nothing


def test_the_document_declares_openai_errors_the_bearer_scheme_and_content_types(tmp_path: Path) -> None:
    from lorafleet.api.app import create_app
    from lorafleet.api.settings import ServerSettings

    settings = ServerSettings(
        database_url=f"sqlite:///{tmp_path / 'registry.db'}",
        artifacts_url=str(tmp_path / "artifacts"),
        serve_models=False,
        workers=0,
    )
    app = create_app(settings)
    try:
        doc = app.openapi()
    finally:
        app.state.registry.close()
    schemes = doc["components"]["securitySchemes"]
    assert [s["scheme"] for s in schemes.values()] == ["bearer"]
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    error_body = {"$ref": "#/components/schemas/ErrorBody"}
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            declared = {
                status: r.get("content", {}).get("application/json", {}) for status, r in responses.items()
            }
            assert declared["500"]["schema"] == error_body, (method, path)
            if path.startswith("/v1/"):
                assert operation["security"], (method, path)
                for status in ("401", "403", "404", "429"):
                    assert declared[status]["schema"] == error_body, (method, path, status)
                assert "Retry-After" in responses["429"]["headers"]
            if "422" in responses:  # only where an adapter cannot be served, in OpenAI's shape
                assert declared["422"]["schema"] == error_body, (method, path)
    assert list(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    assert "413" in doc["paths"]["/v1/files"]["post"]["responses"]
    assert "text/event-stream" in doc["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
