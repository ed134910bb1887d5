"""Two `lorafleet serve` replicas (separate processes, each with its own job worker) on one PostgreSQL
database and one S3 object store (moto's server), as behind a load balancer: a job submitted through
either runs exactly once on some worker; an artifact one writes (an uploaded file, a trained adapter) the
other reads; a promotion through one is served by the other on its very next request; a key's rate limit
and the tenant's concurrent-jobs quota hold across both; a dashboard session signed by one is good on the
other. Each replica has a $LORAFLEET_HOME of its own,
so nothing passes between them but the database and the object store."""

from __future__ import annotations

import os
import sys
import tarfile
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from lorafleet.registry import Registry
from tests.support.platform import ADMIN_KEY, QA_ROWS, QUICK_RECIPE, start_job, wait_for_job
from tests.support.postgres import drop_database, fresh_database
from tests.support.s3 import S3_CREDENTIALS
from tests.support.server import ServerCommand, free_port, run_server_processes
from tests.ui.conftest import sign_in

pytestmark = pytest.mark.integration
UI_SECRET = "replica-ui-secret-0123456789"
BUCKET = "lorafleet-replicas"


@dataclass
class Replicas:
    """The two replicas' addresses and process ids, the shared database's URL and the object store."""

    urls: tuple[str, str]
    pids: tuple[int, int]
    database_url: str
    artifacts_url: str
    s3: Any  # a boto3 S3 client on the test server
    base_model: str

    def client(self, index: int, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.urls[index], headers={"Authorization": f"Bearer {key}"}, timeout=60)

    def tenant(self, name: str, **quotas: Any) -> tuple[str, str]:
        """A tenant created through replica 0; its id and an API key."""
        with self.client(0, ADMIN_KEY) as admin:
            answer = admin.post("/v1/tenants", json={"name": name, "quotas": quotas})
            assert answer.status_code == 201, answer.text
            tenant_id = answer.json()["id"]
            key = admin.post(f"/v1/tenants/{tenant_id}/keys", json={"name": "test"}).json()["key"]
        return tenant_id, key

    def stored_keys(self) -> list[str]:
        listing = self.s3.list_objects_v2(Bucket=BUCKET)
        return [item["Key"] for item in listing.get("Contents", [])]


def replica_argv(model: Path, port: int) -> list[str]:
    return [
        *(sys.executable, "-m", "lorafleet", "serve", "--model", str(model), "--port", str(port)),
        *("--workers", "1", "--max-batch", "4", "--log-level", "warning"),
    ]


@pytest.fixture(scope="module")
def replicas(
    tiny_dir: Path, postgres_server: str, s3_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Replicas]:
    """Two replicas on one fresh PostgreSQL database and one fresh bucket, every setting through the
    environment as an operator would give it (the S3 endpoint and keys in botocore's own variables)."""
    s3 = boto3.client("s3", endpoint_url=s3_server, **_boto_credentials())
    s3.create_bucket(Bucket=BUCKET)
    database_url = fresh_database(postgres_server, "replicas")
    shared = {
        **S3_CREDENTIALS,
        "AWS_ENDPOINT_URL": s3_server,
        "LORAFLEET_DATABASE_URL": database_url,
        "LORAFLEET_ARTIFACTS_URL": f"s3://{BUCKET}/artifacts",
        "LORAFLEET_ADMIN_KEY": ADMIN_KEY,
        "LORAFLEET_UI_SECRET": UI_SECRET,
        "LORAFLEET_WORKER__POLL_SECONDS": "0.2",
        "LORAFLEET_WORKER__HEARTBEAT_SECONDS": "0.3",
        "LORAFLEET_ADAPTATION": "false",
    }
    ports = (free_port(), free_port())
    urls = (f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}")
    commands = [
        ServerCommand(
            replica_argv(tiny_dir, port),
            _replica_env(shared, tmp_path_factory.mktemp(f"replica-{i}")),
            f"{url}/readyz",
        )
        for i, (port, url) in enumerate(zip(ports, urls, strict=True))
    ]
    try:
        # started at once on the empty database, as a deployment's replicas are: they migrate it in turn
        with run_server_processes(commands, timeout=180) as processes:
            pids = (processes[0].pid, processes[1].pid)
            yield Replicas(urls, pids, database_url, shared["LORAFLEET_ARTIFACTS_URL"], s3, str(tiny_dir))
    finally:
        drop_database(postgres_server, "replicas")


def _replica_env(shared: dict[str, str], home: Path) -> dict[str, str]:
    """This environment without any LORAFLEET_ or AWS_ variable of the test's own, plus `shared`, with the
    replica's own $LORAFLEET_HOME (its model conversions, artifact cache and work folders)."""
    own = {k: v for k, v in os.environ.items() if not k.startswith(("LORAFLEET_", "AWS_"))}
    return {**own, **shared, "LORAFLEET_HOME": str(home)}


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_CREDENTIALS["AWS_DEFAULT_REGION"],
    }


def upload_rows(client: httpx.Client, rows: bytes) -> dict[str, Any]:
    answer = client.post("/v1/files", files={"file": ("train.jsonl", rows)}, data={"purpose": "fine-tune"})
    assert answer.status_code == 201, answer.text
    result: dict[str, Any] = answer.json()
    return result


def qa_rows() -> bytes:
    import json

    return "".join(json.dumps(row) + "\n" for row in QA_ROWS).encode()


@dataclass
class Trained:
    """Jobs submitted through both replicas, finished, and their tenant."""

    key: str
    tenant_id: str
    jobs: list[dict[str, Any]]


@pytest.fixture(scope="module")
def trained(replicas: Replicas) -> Trained:
    """Two jobs of adapter `qa`, one submitted through each replica, on a file uploaded through replica 0."""
    tenant_id, key = replicas.tenant("trainer")
    with replicas.client(0, key) as first, replicas.client(1, key) as second:
        file_id = upload_rows(first, qa_rows())["id"]
        clients = (first, second)
        submitted = [start_job(client, file_id, "qa", replicas.base_model) for client in clients]
        jobs = [
            wait_for_job(client, job["id"], timeout=300)
            for client, job in zip(clients, submitted, strict=True)
        ]
    return Trained(key, tenant_id, jobs)


def test_a_file_uploaded_through_one_replica_is_read_through_the_other(replicas: Replicas) -> None:
    _, key = replicas.tenant("uploader")
    rows = qa_rows()
    with replicas.client(0, key) as first, replicas.client(1, key) as second:
        uploaded = upload_rows(first, rows)
        content = second.get(f"/v1/files/{uploaded['id']}/content")
        assert content.status_code == 200, content.text
        assert content.content == rows
        assert second.get(f"/v1/files/{uploaded['id']}").json()["bytes"] == len(rows)
    assert [k for k in replicas.stored_keys() if uploaded["id"] in k] != []  # in the bucket, not on a disk


def test_each_job_runs_exactly_once_on_some_replicas_worker(replicas: Replicas, trained: Trained) -> None:
    assert [job["status"] for job in trained.jobs] == ["succeeded"] * 2, [
        job["error"] for job in trained.jobs
    ]
    registry = Registry(replicas.database_url, artifacts_url=replicas.artifacts_url)
    try:
        for job in trained.jobs:
            stored = registry.jobs.get(trained.tenant_id, job["id"])
            assert stored.attempts == 1
            messages = [
                event.message for event in registry.jobs.events(trained.tenant_id, job["id"], limit=1000)
            ]
            assert messages.count("job started (attempt 1)") == 1, messages
            assert any(f"-{pid}-" in (stored.worker_id or "") for pid in replicas.pids), stored.worker_id
        versions = registry.adapters.versions(trained.tenant_id, "qa")
    finally:
        registry.close()
    assert sorted(version.number for version in versions) == [1, 2]
    assert sorted(str(version.job_id) for version in versions) == sorted(job["id"] for job in trained.jobs)
    assert all(version.artifact.startswith(replicas.artifacts_url) for version in versions)


def test_a_trained_adapter_is_read_and_served_by_both_replicas(replicas: Replicas, trained: Trained) -> None:
    for index in (0, 1):
        with replicas.client(index, trained.key) as client:
            download = client.get("/v1/adapters/qa/versions/2/download")
            assert download.status_code == 200, download.text
            with tarfile.open(fileobj=BytesIO(download.content)) as archive:
                assert "qa-v2/adapter_model.safetensors" in archive.getnames()
            assert served(client, "qa@2") == "qa@2"


def test_a_promotion_through_one_replica_is_served_by_the_other_on_its_next_request(
    replicas: Replicas, trained: Trained
) -> None:
    with replicas.client(0, trained.key) as first, replicas.client(1, trained.key) as second:
        promote(first, 1)
        assert served(second, "qa") == "qa@1"
        assert served(first, "qa") == "qa@1"
        promote(first, 2)
        assert served(second, "qa") == "qa@2"  # replica 1 cached nothing of the alias
        promote(second, 1)
        assert served(first, "qa") == "qa@1"
        rolled = second.post("/v1/adapters/qa/aliases/production/rollback")
        assert rolled.status_code == 200, rolled.text
        assert served(first, "qa") == "qa@2"


def test_a_keys_rate_limit_holds_across_replicas(replicas: Replicas) -> None:
    """Four requests a minute for the key, whichever replica takes them."""
    _, key = replicas.tenant("limited", requests_per_minute=4)
    with replicas.client(0, key) as first, replicas.client(1, key) as second:
        codes = [client.get("/v1/files").status_code for client in (first, second) * 3]
    assert codes == [200, 200, 200, 200, 429, 429]


def test_the_concurrent_jobs_quota_holds_across_replicas(replicas: Replicas) -> None:
    _, key = replicas.tenant("one-at-a-time", max_concurrent_jobs=1)
    with replicas.client(0, key) as first, replicas.client(1, key) as second:
        file_id = upload_rows(first, qa_rows())["id"]
        job = start_job(
            first, file_id, "qa", replicas.base_model, training={**QUICK_RECIPE["training"], "max_steps": 400}
        )
        body = {"model": replicas.base_model, "training_file": file_id, "adapter": "other"}
        refused = second.post("/v1/fine_tuning/jobs", json=body)
        assert refused.status_code == 429, refused.text
        assert "its quota is 1" in refused.json()["error"]["message"]
        assert second.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
        accepted = second.post("/v1/fine_tuning/jobs", json=body)
        assert accepted.status_code == 200, accepted.text
        second.post(f"/v1/fine_tuning/jobs/{accepted.json()['id']}/cancel")


def test_a_dashboard_session_from_one_replica_is_good_on_the_other(replicas: Replicas) -> None:
    """The replicas share `LORAFLEET_UI_SECRET`: a browser signed in on one is signed in on the other."""
    _, key = replicas.tenant("browser")
    with (
        closing(sign_in(replicas.urls[0], key)) as first,
        httpx.Client(base_url=replicas.urls[1], cookies=first.cookies, timeout=60) as second,
    ):
        page = second.get("/ui/files")
    assert page.status_code == 200, page.text
    assert "tenant <strong>browser</strong>" in page.text


def promote(client: httpx.Client, version: int) -> None:
    answer = client.post("/v1/adapters/qa/aliases/production", json={"version": version})
    assert answer.status_code == 200, answer.text


def served(client: httpx.Client, model: str) -> str:
    """The version that served one completion of `model`, as the response's header names it."""
    answer = client.post("/v1/completions", json={"model": model, "prompt": "q1", "max_tokens": 1})
    assert answer.status_code == 200, answer.text
    version: str = answer.headers["X-Lorafleet-Version"]
    return version
