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

pytestmark = [pytest.mark.integration, pytest.mark.slow]

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
