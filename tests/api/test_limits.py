"""Quotas and the per-key rate limit through a real server: each refusal is a 429 with an integer
Retry-After ≥ 1, stores nothing, and lifts when the quota is raised (PATCH /v1/tenants/{id}/quotas) or the
work that holds it goes away. Usage is recorded for every inference request that was served, and only those.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from lorafleet.api.auth import TENANT_HEADER
from lorafleet.errors import QuotaExceededError
from tests.support.platform import ADMIN_KEY, QUICK_RECIPE, Platform, Tenant, upload

pytestmark = pytest.mark.integration

CHAT = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4, "temperature": 0}


def assert_too_many(answer: httpx.Response, *, at_most: int | None = None) -> None:
    """A 429 in OpenAI's error shape whose Retry-After is a whole number of seconds ≥ 1 (≤ `at_most`)."""
    assert answer.status_code == 429, answer.text
    assert answer.json()["error"]["type"] == "rate_limit_error", answer.text
    retry = answer.headers["Retry-After"]
    assert retry.isdigit() and int(retry) >= 1, retry
    if at_most is not None:
        assert int(retry) <= at_most, retry


def job_body(platform: Platform, file_id: str, adapter: str = "bot") -> dict[str, Any]:
    model = platform.app.state.settings.base_model
    return {"model": model, "training_file": file_id, "adapter": adapter, "recipe": QUICK_RECIPE}


def chat(platform: Platform, client: httpx.Client, **extra: Any) -> httpx.Response:
    return client.post(
        "/v1/chat/completions", json={"model": platform.app.state.settings.base_model, **CHAT, **extra}
    )


def set_quotas(platform: Platform, tenant: Tenant, **quotas: Any) -> dict[str, Any]:
    answer = platform.admin.patch(f"/v1/tenants/{tenant.id}/quotas", json=quotas)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()["quotas"]
    return result


def usage_totals(client: httpx.Client) -> dict[str, int]:
    days = client.get("/v1/usage").json()["data"]
    return {
        field: sum(day[field] for day in days) for field in ("requests", "prompt_tokens", "completion_tokens")
    }


def stored_files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file()] if root.exists() else []


def test_concurrent_jobs_quota_is_freed_by_cancelling(
    make_platform: Callable[..., Platform], qa_rows_file: Path
) -> None:
    platform = make_platform()  # no workers: jobs stay queued, holding the quota
    tenant = platform.tenant("acme", max_concurrent_jobs=1)
    file = upload(tenant.client, qa_rows_file).json()
    first = tenant.client.post("/v1/fine_tuning/jobs", json=job_body(platform, file["id"]))
    assert first.status_code == 200, first.text

    refused = tenant.client.post("/v1/fine_tuning/jobs", json=job_body(platform, file["id"], "other"))
    assert_too_many(refused)
    assert "its quota is 1" in refused.json()["error"]["message"]
    assert [j["id"] for j in tenant.client.get("/v1/fine_tuning/jobs").json()["data"]] == [first.json()["id"]]

    cancelled = tenant.client.post(f"/v1/fine_tuning/jobs/{first.json()['id']}/cancel")
    assert cancelled.json()["status"] == "cancelled"
    second = tenant.client.post("/v1/fine_tuning/jobs", json=job_body(platform, file["id"], "other"))
    assert second.status_code == 200, second.text


def test_rate_limit_is_per_key(make_platform: Callable[..., Platform]) -> None:
    platform = make_platform()
    tenant = platform.tenant("acme")
    assert set_quotas(platform, tenant, requests_per_minute=2)["requests_per_minute"] == 2
    first_key = tenant.client
    assert [chat(platform, first_key).status_code for _ in range(2)] == [200, 200]
    refused = chat(platform, first_key)
    assert_too_many(refused, at_most=60)
    assert "per minute" in refused.json()["error"]["message"]

    secret = platform.admin.post(f"/v1/tenants/{tenant.id}/keys", json={"name": "second"}).json()["key"]
    assert chat(platform, platform.client(secret)).status_code == 200  # its own bucket

    set_quotas(platform, tenant, requests_per_minute=None)  # null: unlimited again
    assert chat(platform, first_key).status_code == 200
    # Usage counts the four chats served, not the refused one.
    as_admin = platform.client(ADMIN_KEY, **{TENANT_HEADER: tenant.id})
    assert usage_totals(as_admin)["requests"] == 4


def test_monthly_tokens_quota_stops_chats_and_jobs(
    make_platform: Callable[..., Platform], qa_rows_file: Path
) -> None:
    platform = make_platform()
    tenant = platform.tenant("acme", max_monthly_tokens=10)
    file = upload(tenant.client, qa_rows_file).json()  # uploads store bytes, not tokens
    served = chat(platform, tenant.client)
    assert served.status_code == 200, served.text
    used = served.json()["usage"]["total_tokens"]
    assert used > 10
    assert usage_totals(tenant.client) == {
        "requests": 1,
        "prompt_tokens": served.json()["usage"]["prompt_tokens"],
        "completion_tokens": served.json()["usage"]["completion_tokens"],
    }

    assert_too_many(chat(platform, tenant.client))
    assert_too_many(chat(platform, tenant.client, stream=True))
    model = platform.app.state.settings.base_model
    assert_too_many(tenant.client.post("/v1/completions", json={"model": model, "prompt": "hi"}))
    assert_too_many(tenant.client.post("/v1/fine_tuning/jobs", json=job_body(platform, file["id"])))
    assert tenant.client.get("/v1/fine_tuning/jobs").json()["data"] == []
    assert usage_totals(tenant.client)["requests"] == 1  # refusals are not metered

    set_quotas(platform, tenant, max_monthly_tokens=used + 1000)
    assert chat(platform, tenant.client).status_code == 200


def test_storage_quota_refuses_an_upload_and_stores_nothing(
    make_platform: Callable[..., Platform], qa_rows_file: Path, tmp_path: Path
) -> None:
    platform = make_platform(serve_models=False)
    size = qa_rows_file.stat().st_size
    tenant = platform.tenant("acme", max_storage_bytes=size - 1)
    refused = upload(tenant.client, qa_rows_file)
    assert_too_many(refused)
    assert tenant.client.get("/v1/files").json()["data"] == []
    assert platform.registry.datasets.all(tenant.id) == []
    assert stored_files(tmp_path / "artifacts") == []

    set_quotas(platform, tenant, max_storage_bytes=size)
    assert upload(tenant.client, qa_rows_file).status_code == 201
    assert_too_many(upload(tenant.client, qa_rows_file))  # the stored file counts against the quota
    assert len(tenant.client.get("/v1/files").json()["data"]) == 1
    assert len(stored_files(tmp_path / "artifacts")) == 1


def test_adapter_count_quota(make_platform: Callable[..., Platform], tmp_path: Path) -> None:
    """Checked when a version is registered (by a job's worker; here directly): a new name past the
    quota is refused, a new version of a stored adapter is not, and deleting an adapter frees a place."""
    platform = make_platform(serve_models=False)
    tenant = platform.tenant("acme", max_adapters=1)
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(b"0" * 64)
    register = platform.registry.adapters.register
    register(tenant.id, "one", folder, base_model="tiny")
    register(tenant.id, "one", folder, base_model="tiny")
    with pytest.raises(QuotaExceededError) as refused:
        register(tenant.id, "two", folder, base_model="tiny")
    assert refused.value.retry_after >= 1
    adapters = tenant.client.get("/v1/adapters").json()["data"]
    assert [(a["name"], a["latest_version"]) for a in adapters] == [("one", 2)]
    assert len(stored_files(tmp_path / "artifacts")) == 2

    assert tenant.client.delete("/v1/adapters/one").status_code == 200
    register(tenant.id, "two", folder, base_model="tiny")
    assert [a["name"] for a in tenant.client.get("/v1/adapters").json()["data"]] == ["two"]
