"""A real platform server for tests: `create_app` on the tiny model, served by uvicorn on 127.0.0.1.

`make_platform(**settings)` starts one (SQLite or PostgreSQL, by the `database_url` fixture's
parameter) and returns a `Platform` with the admin's and tenants' real HTTP clients.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import write_jsonl
from tests.support.server import run_server

ADMIN_KEY = "test-admin-key-0123456789"
QA_ROWS = [{"prompt": f"q{i % 4}", "completion": f"answer {i % 4}"} for i in range(16)]
# A job quick enough for tests that still changes the tiny model's greedy answers.
QUICK_RECIPE: dict[str, Any] = {
    "data": {"max_length": 64},
    "lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]},
    "training": {"batch_size": 4, "max_steps": 6, "learning_rate": 2e-2, "warmup_ratio": 0},
}


@dataclass
class Tenant:
    """A tenant created through the admin API, with an HTTP client that holds its key."""

    id: str
    name: str
    key: str
    client: httpx.Client


@dataclass
class Platform:
    url: str
    app: Any
    admin: httpx.Client
    clients: list[httpx.Client] = field(default_factory=list)

    @property
    def registry(self) -> Any:
        return self.app.state.registry

    def client(self, key: str | None = None, **headers: str) -> httpx.Client:
        auth = {"Authorization": f"Bearer {key}"} if key else {}
        client = httpx.Client(base_url=self.url, headers={**auth, **headers}, timeout=60)
        self.clients.append(client)
        return client

    def tenant(self, name: str, **quotas: Any) -> Tenant:
        answer = self.admin.post("/v1/tenants", json={"name": name, "quotas": quotas})
        assert answer.status_code == 201, answer.text
        tenant_id = answer.json()["id"]
        key = self.admin.post(f"/v1/tenants/{tenant_id}/keys", json={"name": "test"}).json()["key"]
        return Tenant(tenant_id, name, key, self.client(key))


def upload(
    client: httpx.Client, path: Path, *, purpose: str = "fine-tune", scrub: bool = False
) -> httpx.Response:
    form = {"purpose": purpose, "scrub": str(scrub).lower()}
    with path.open("rb") as handle:
        return client.post("/v1/files", files={"file": (path.name, handle)}, data=form)


def start_job(client: httpx.Client, file_id: str, adapter: str, model: str, **recipe: Any) -> dict[str, Any]:
    body = {
        "model": model,
        "training_file": file_id,
        "adapter": adapter,
        "recipe": {**QUICK_RECIPE, **recipe},
    }
    answer = client.post("/v1/fine_tuning/jobs", json=body)
    assert answer.status_code == 200, answer.text
    job: dict[str, Any] = answer.json()
    return job


def wait_for_job(client: httpx.Client, job_id: str, *, timeout: float = 180.0) -> dict[str, Any]:
    """Poll a job until it is finished; its last state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {job}")


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh registry database: a SQLite file, or a database in the test PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def qa_rows_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "train.jsonl", QA_ROWS)


@pytest.fixture
def make_platform(tiny_dir: Path, database_url: str, tmp_path: Path) -> Iterator[Callable[..., Platform]]:
    """`make_platform(workers=1, **settings)`: a running server on the tiny model; stopped after the test."""
    from lorafleet.api.app import create_app
    from lorafleet.api.settings import ServerSettings
    from lorafleet.jobs.worker import WorkerSettings

    stack = ExitStack()

    def make(**overrides: Any) -> Platform:
        settings = ServerSettings(
            **{
                "database_url": database_url,
                "artifacts_url": str(tmp_path / "artifacts"),
                "admin_key": ADMIN_KEY,
                "base_model": str(tiny_dir),
                "workers": 0,
                "max_batch": 8,
                "max_slots": 8,
                "worker": WorkerSettings(poll_seconds=0.1, heartbeat_seconds=0.2, lease_seconds=30),
                **overrides,
            }
        )
        app = create_app(settings)
        url = stack.enter_context(run_server(app))
        admin = stack.enter_context(
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        )
        platform = Platform(url=url, app=app, admin=admin)
        stack.callback(lambda: [client.close() for client in platform.clients])
        return platform

    with stack:
        yield make
