"""The platform commands (tenants, jobs, registry adapters, serve, worker) through Typer's `CliRunner`.

Direct mode runs on the SQLite registry in the test's $LORAFLEET_HOME; URL mode against a real uvicorn
server on the same registry. Both speak the same HTTP API, so both give the server's messages.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lorafleet.api.app import create_app
from lorafleet.api.settings import ServerSettings
from lorafleet.errors import AuthenticationError
from lorafleet.registry import Registry
from tests.helpers import assert_friendly_error, invoke, write_jsonl
from tests.support.server import free_port, run_server

ADMIN_KEY = "admin-key-for-the-cli-tests"
ROWS = [{"prompt": f"What is {i} + {i}?", "completion": f"{2 * i}"} for i in range(4)]


def ok(*args: str) -> str:
    """Run `lorafleet ARGS`, check it exited 0, and return its stdout."""
    result = invoke(*args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def ok_json(*args: str) -> Any:
    return json.loads(ok(*args, "--json"))


def new_tenant(name: str) -> tuple[str, str]:
    """Create a tenant through the CLI; its id and first API key."""
    answer = ok_json("tenants", "create", name)
    return answer["tenant"]["id"], answer["key"]["key"]


@pytest.fixture
def registry() -> Iterator[Registry]:
    """The registry the direct-mode commands use (the default SQLite file in $LORAFLEET_HOME)."""
    opened = Registry()
    yield opened
    opened.close()


@pytest.fixture
def rows_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "rows.jsonl", ROWS)


def fake_adapter(folder: Path, seed: int) -> Path:
    """A directory with the two PEFT files (the registry stores files; it does not load them)."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "peft_type": "LORA", "seed": seed}))
    (folder / "adapter_model.safetensors").write_bytes(bytes([seed]) * 64)
    return folder


def create_job(tenant: str, rows_file: Path, tiny_dir: Path, *extra: str) -> dict[str, Any]:
    args = ["jobs", "create", "--tenant", tenant, "--file", str(rows_file), "--adapter", "bot"]
    return ok_json(*args, "--model", str(tiny_dir), *extra)


# --- tenants and keys -----------------------------------------------------------------------------------


def test_tenant_create_prints_a_working_key_once(registry: Registry) -> None:
    result = invoke("tenants", "create", "acme", "--max-adapters", "3")

    assert result.exit_code == 0, result.output
    assert "created tenant acme (tn-" in result.stdout
    secret = next(line.strip() for line in result.stdout.splitlines() if line.strip().startswith("lf-"))
    assert "will not be shown again" in result.stderr
    key = registry.tenants.authenticate(secret)
    assert key.tenant_id == registry.tenants.get("acme").id
    assert registry.tenants.get("acme").max_adapters == 3
    listed = ok("tenants", "keys", "acme")
    assert key.id in listed and secret not in listed


def test_tenant_without_key_list_show_and_quotas() -> None:
    created = ok_json("tenants", "create", "acme", "--no-key", "--requests-per-minute", "60")
    ok("tenants", "create", "globex", "--no-key")

    assert created["key"] is None
    listed = ok("tenants", "list")
    assert "acme" in listed and "globex" in listed and "requests/min=60" in listed
    changed = ok_json("tenants", "quotas", "acme", "--max-adapters", "5", "--requests-per-minute", "none")
    assert changed["quotas"]["max_adapters"] == 5
    assert changed["quotas"]["requests_per_minute"] is None
    assert ok_json("tenants", "quotas", "acme")["quotas"] == changed["quotas"]  # no option: show them
    shown = ok("tenants", "show", created["tenant"]["id"])
    assert "acme" in shown and "unlimited" in shown


def test_bad_quotas_are_one_line_errors_naming_them() -> None:
    ok("tenants", "create", "acme", "--no-key")

    assert_friendly_error(
        invoke("tenants", "quotas", "acme", "--max-adapters", "lots"), "--max-adapters", "'lots'"
    )
    assert_friendly_error(
        invoke("tenants", "quotas", "acme", "--max-adapters", "-1"), "max_adapters", "HTTP 400"
    )
    assert_friendly_error(invoke("tenants", "create", "acme"), "already exists", "HTTP 409")
    assert_friendly_error(invoke("tenants", "create", "../evil"), "tenant name")


def test_key_create_and_revoke(registry: Registry) -> None:
    ok("tenants", "create", "acme", "--no-key")
    key = ok_json("tenants", "key-create", "acme", "--name", "ci")
    assert registry.tenants.authenticate(key["key"]).name == "ci"

    revoked = ok("tenants", "key-revoke", "acme", key["id"])

    assert f"revoked key {key['id']} (ci" in revoked
    with pytest.raises(AuthenticationError, match="revoked"):
        registry.tenants.authenticate(key["key"])
    assert "revoked" in ok("tenants", "keys", "acme")
    assert_friendly_error(invoke("tenants", "key-revoke", "acme", "key-nope"), "no API key 'key-nope'", "404")


def test_unknown_or_missing_tenant_is_a_one_line_error() -> None:
    assert_friendly_error(invoke("tenants", "show", "nope"), "no tenant 'nope'", "HTTP 404")
    assert_friendly_error(invoke("jobs", "list", "--tenant", "nope"), "no tenant 'nope'")
    assert_friendly_error(invoke("adapters", "list"), "--tenant")


# --- registry adapters: list, versions, promote, rollback, history ----------------------------------------


@pytest.fixture
def two_versions(registry: Registry, tmp_path: Path) -> str:
    """Tenant acme with adapter `bot` at versions 1 and 2; the tenant's id."""
    tenant = registry.tenants.create("acme").id
    for seed in (1, 2):
        registry.adapters.register(
            tenant, "bot", fake_adapter(tmp_path / f"v{seed}", seed), base_model="tiny"
        )
    return tenant


def test_adapters_promote_rollback_and_history(two_versions: str) -> None:
    listed = ok("adapters", "list", "--tenant", "acme")
    assert "bot" in listed and "v2" in listed

    assert "bot:production → v1" in ok("adapters", "promote", "bot", "1", "--tenant", "acme")
    assert "bot:production → v2" in ok("adapters", "promote", "bot", "v2", "--tenant", "acme")
    assert "bot:staging → v1" in ok(
        "adapters", "promote", "bot", "1", "--alias", "staging", "--tenant", "acme"
    )
    assert "rolled back to v1" in ok("adapters", "rollback", "bot", "--tenant", "acme")

    adapters = ok_json("adapters", "list", "--tenant", "acme")["data"]
    assert adapters[0]["aliases"] == {"production": 1, "staging": 1}
    assert "production → v1" in ok("adapters", "list", "--tenant", two_versions)
    moves = ok_json("adapters", "history", "bot", "--tenant", "acme")["data"]
    assert [(m["alias"], m["from_version"], m["to_version"]) for m in moves] == [
        ("production", None, 1),
        ("production", 1, 2),
        ("staging", None, 1),
        ("production", 2, 1),
    ]
    assert "admin" in ok("adapters", "history", "bot", "--tenant", "acme")
    versions = ok("adapters", "versions", "bot", "--tenant", "acme")
    assert "v1" in versions and "v2" in versions and "production" in versions


def test_adapter_errors_are_one_line(two_versions: str) -> None:
    assert_friendly_error(invoke("adapters", "promote", "bot", "7", "--tenant", "acme"), "7", "HTTP 404")
    assert_friendly_error(invoke("adapters", "promote", "bot", "latest", "--tenant", "acme"), "'latest'")
    assert_friendly_error(invoke("adapters", "versions", "nope", "--tenant", "acme"), "nope", "HTTP 404")
    assert_friendly_error(invoke("adapters", "rollback", "bot", "--tenant", "acme"), "HTTP 4")


# --- jobs -------------------------------------------------------------------------------------------------


def test_job_create_list_show_events_cancel(rows_file: Path, tiny_dir: Path) -> None:
    new_tenant("acme")
    result = invoke(
        "jobs", "create", "--tenant", "acme", "--file", str(rows_file), "--adapter", "bot",
        "--model", str(tiny_dir), "--epochs", "2", "--set", "lora.r=4", "--set", "training.max_steps=3",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert "uploaded rows.jsonl as file-" in result.stdout and "(4 rows" in result.stdout
    job_id = result.stdout.split("queued job ")[1].split(":")[0]
    assert job_id in ok("jobs", "list", "--tenant", "acme")
    job = ok_json("jobs", "show", job_id, "--tenant", "acme")
    assert (job["status"], job["adapter"], job["hyperparameters"]["n_epochs"]) == ("queued", "bot", 2)
    assert "queued" in ok("jobs", "show", job_id, "--tenant", "acme")
    assert "job created for adapter 'bot'" in ok("jobs", "events", job_id, "--tenant", "acme")

    assert f"cancelled job {job_id}" in ok("jobs", "cancel", job_id, "--tenant", "acme")
    assert_friendly_error(invoke("jobs", "cancel", job_id, "--tenant", "acme"), "already cancelled", "409")
    waited = invoke("jobs", "wait", job_id, "--tenant", "acme")
    assert waited.exit_code == 1 and f"error: job {job_id} cancelled" in waited.stderr


def test_job_create_continues_a_parent_version(
    registry: Registry, rows_file: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    tenant = registry.tenants.create("acme").id
    parent = registry.adapters.register(
        tenant, "bot", fake_adapter(tmp_path / "v1", 1), base_model=str(tiny_dir)
    )

    job = create_job("acme", rows_file, tiny_dir, "--parent", "bot@1", "--set", "continual.strategy=replay")

    assert (job["parent"], job["parent_version_id"]) == ("bot@1", parent.id)
    unknown = invoke(
        "jobs", "create", "--tenant", "acme", "--file", str(rows_file), "--adapter", "bot",
        "--model", str(tiny_dir), "--parent", "bot@7",
    )  # fmt: skip
    assert_friendly_error(unknown, "parent", "bot@7")


def test_job_create_with_a_file_id_and_bad_inputs(rows_file: Path, tiny_dir: Path, tmp_path: Path) -> None:
    new_tenant("acme")
    first = create_job("acme", rows_file, tiny_dir)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    args = ["jobs", "create", "--tenant", "acme", "--adapter", "bot", "--model", str(tiny_dir)]

    again = ok_json(*args, "--file-id", first["training_file"], "--batch-size", "2")
    assert again["training_file"] == first["training_file"] and again["hyperparameters"]["batch_size"] == 2
    assert_friendly_error(invoke(*args, "--file", str(broken)), "broken.jsonl:2", "invalid JSON")
    assert_friendly_error(invoke(*args, "--file", str(rows_file), "--set", "lora.bogus=1"), "lora.bogus")
    assert_friendly_error(invoke(*args, "--file-id", "file-nope"), "no file 'file-nope'", "404")
    assert_friendly_error(invoke(*args), "--file")
    assert_friendly_error(invoke(*args, "--file", str(tmp_path / "missing.jsonl")), "missing.jsonl")
    assert_friendly_error(invoke("jobs", "show", "ftjob-nope", "--tenant", "acme"), "ftjob-nope", "404")


def test_jobs_wait_exit_code_follows_the_result(
    registry: Registry, rows_file: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    new_tenant("acme")
    done, broken = create_job("acme", rows_file, tiny_dir), create_job("acme", rows_file, tiny_dir)
    finished = registry.jobs.claim("test-worker")
    assert finished is not None and finished.id == done["id"]
    registry.jobs.heartbeat(done["id"], "test-worker", step=1, total_steps=1, metrics={}, events=[])
    registry.complete_job(
        finished,
        "test-worker",
        fake_adapter(tmp_path / "out", 1),
        metrics={},
        trained_tokens=10,
        compute_seconds=1,
    )
    failing = registry.jobs.claim("test-worker")
    assert failing is not None
    registry.jobs.finish(failing.id, "test-worker", "failed", error="out of memory at step 3")

    succeeded = invoke("jobs", "wait", done["id"], "--tenant", "acme", "--poll-seconds", "0.05")
    failed = invoke("jobs", "wait", broken["id"], "--tenant", "acme", "--poll-seconds", "0.05")

    assert succeeded.exit_code == 0, succeeded.output
    assert "job created" in succeeded.stdout and f"job {done['id']} succeeded: bot@1" in succeeded.stdout
    assert failed.exit_code == 1
    assert f"error: job {broken['id']} failed: out of memory at step 3" in failed.stderr
    assert "bot@1" in ok("jobs", "list", "--tenant", "acme")


# --- URL mode: the same commands against a real server ----------------------------------------------------


@pytest.fixture
def server(lorafleet_home: Path, tiny_dir: Path) -> Iterator[str]:
    settings = ServerSettings(
        serve_models=False,
        workers=0,
        admin_key=ADMIN_KEY,
        database_url=f"sqlite:///{lorafleet_home / 'registry.db'}",
        base_model=str(tiny_dir),
    )
    with run_server(create_app(settings)) as url:
        yield url


def test_url_mode_with_a_tenant_key_and_the_admin_key(server: str, rows_file: Path) -> None:
    acme, acme_key = new_tenant("acme")
    _, globex_key = new_tenant("globex")
    as_acme = ["--url", server, "--api-key", acme_key]
    as_admin = ["--url", server, "--api-key", ADMIN_KEY]

    job = ok_json(
        "jobs", "create", "--file", str(rows_file), "--adapter", "bot", *as_acme
    )  # model: the server's
    assert job["status"] == "queued" and job["organization_id"] == acme
    assert job["id"] in ok("jobs", "list", *as_acme)
    assert job["id"] in ok("jobs", "list", *as_admin, "--tenant", "acme")
    assert "acme" in ok("tenants", "list", *as_admin)
    assert "no adapters" in ok("adapters", "list", *as_acme)

    stranger = invoke("jobs", "show", job["id"], "--url", server, "--api-key", globex_key)
    assert_friendly_error(stranger, "HTTP 404 Not Found", job["id"])
    assert_friendly_error(invoke("tenants", "list", *as_acme), "admin key", "HTTP 403")
    assert_friendly_error(invoke("jobs", "list", *as_admin), "X-Lorafleet-Tenant", "HTTP 403")
    assert_friendly_error(
        invoke("jobs", "list", "--url", server, "--api-key", "lf-wrong"), "unknown API key", "401"
    )
    assert_friendly_error(invoke("jobs", "list", "--url", server), "--api-key")
    assert_friendly_error(
        invoke("jobs", "list", "--url", f"{server}/api", "--api-key", acme_key),
        "/api/v1/fine_tuning/jobs: Not Found",
    )


def test_url_mode_names_a_server_it_cannot_reach() -> None:
    url = f"http://127.0.0.1:{free_port()}"

    assert_friendly_error(invoke("jobs", "list", "--url", url, "--api-key", "lf-x"), "cannot reach", url)


# --- serve and worker -------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["serve", "worker", "tenants", "jobs"])
def test_platform_commands_have_help(command: str) -> None:
    result = invoke(command, "--help")

    assert result.exit_code == 0, result.output
    assert f"Usage: lorafleet {command}" in result.stdout


def test_serve_builds_settings_from_options(monkeypatch: pytest.MonkeyPatch, tiny_dir: Path) -> None:
    started: dict[str, Any] = {}
    monkeypatch.setattr("uvicorn.run", lambda app, **options: started.update(app=app, **options))

    output = ok(
        "serve", "--port", "8123", "--no-models", "--workers", "0", "--model", str(tiny_dir),
        "--max-batch", "4", "--admin-key", ADMIN_KEY, "--executor", "local", "--log-level", "warning",
    )  # fmt: skip

    settings = started["app"].state.settings
    started["app"].state.registry.close()
    assert (started["host"], started["port"], started["log_level"]) == ("127.0.0.1", 8123, "warning")
    assert (settings.serve_models, settings.workers, settings.max_batch) == (False, 0, 4)
    assert (settings.base_model, settings.admin_key, settings.worker.executor) == (
        str(tiny_dir),
        ADMIN_KEY,
        "local",
    )
    assert "http://127.0.0.1:8123/docs" in output


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--max-batch", "0"], "--max-batch"),
        (["--workers", "-1"], "--workers"),
        (["--admin-key", "short"], "--admin-key"),
        (["--executor", "slurm"], "--executor"),
        (["--log-level", "loud"], "--log-level"),
        (["--database-url", "mysql://x/y"], "mysql://x/y"),
    ],
)
def test_serve_bad_option_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, options: list[str], named: str
) -> None:
    monkeypatch.setattr("uvicorn.run", lambda *args, **kwargs: pytest.fail("uvicorn started"))

    message = assert_friendly_error(invoke("serve", *options), named)

    assert "short" not in message  # an admin key is never echoed


def test_worker_bad_option_is_a_one_line_error() -> None:
    assert_friendly_error(invoke("worker", "--poll-seconds", "0"), "--poll-seconds")
    assert_friendly_error(invoke("worker", "--executor", "slurm"), "--executor")


def test_worker_takes_jobs_and_stops_on_sigterm(registry: Registry, rows_file: Path, tiny_dir: Path) -> None:
    tenant, _ = new_tenant("acme")
    job = create_job("acme", rows_file, tiny_dir)
    # Without its training file the job fails as soon as a worker takes it, before any training starts.
    registry.datasets.local_path(registry.datasets.get(tenant, job["training_file"])).unlink()

    def stop_when_done() -> None:
        deadline = time.monotonic() + 30
        while registry.jobs.get(tenant, job["id"]).status != "failed" and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    stopper = threading.Thread(target=stop_when_done, daemon=True)
    stopper.start()
    result = invoke("worker", "--poll-seconds", "0.05", "--workers", "2")
    stopper.join()

    assert result.exit_code == 0, result.output
    assert "waiting for jobs" in result.stdout
    assert f"{job['id']}: started (tenant {tenant}, adapter bot" in result.stdout
    assert f"{job['id']}: failed" in result.stdout
    assert result.stdout.rstrip().endswith("stopped")
    assert "missing" in registry.jobs.get(tenant, job["id"]).error  # type: ignore[operator]


def test_the_cli_names_the_tenant_in_the_header_the_api_reads() -> None:
    from lorafleet.api.auth import TENANT_HEADER
    from lorafleet.cli import platform

    assert platform.TENANT_HEADER == TENANT_HEADER
