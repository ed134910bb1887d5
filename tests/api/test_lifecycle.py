"""The whole life of an adapter through a real server, on SQLite and on PostgreSQL.

tenant → upload → job → worker trains → version registered → alias promoted → chat through the alias
→ usage shows the tokens → rollback → the previous version answers.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import write_jsonl
from tests.support.platform import QUICK_RECIPE, Platform, start_job, upload, wait_for_job

pytestmark = pytest.mark.integration

QUESTION = [{"role": "user", "content": "q1"}]


def chat(client: httpx.Client, model: str) -> dict[str, Any]:
    body = {"model": model, "messages": QUESTION, "max_tokens": 8, "temperature": 0}
    answer = client.post("/v1/chat/completions", json=body)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def text_of(answer: dict[str, Any]) -> str:
    content: str = answer["choices"][0]["message"]["content"]
    return content


# the route-level path; each registry step runs on PostgreSQL in tests/registry and tests/jobs
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_adapter_life_from_upload_to_rollback(
    make_platform: Callable[..., Platform], qa_rows_file: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    platform = make_platform(workers=1)
    tenant = platform.tenant("acme")
    client = tenant.client

    uploaded = upload(client, qa_rows_file)
    assert uploaded.status_code == 201, uploaded.text
    file = uploaded.json()
    assert (file["rows"], file["format"]) == (16, "prompt_completion")
    assert file["tokens"] > 16 * 5

    model = str(tiny_dir)
    first = start_job(client, file["id"], "support", model)
    done = wait_for_job(client, first["id"])
    assert done["status"] == "succeeded", done
    assert done["fine_tuned_model"] == "support@1"
    assert done["trained_tokens"] > 0 and done["step"] == 6
    # A second version, trained longer on other answers, so the two versions answer differently.
    other = upload(
        client,
        write_jsonl(tmp_path / "yes.jsonl", [{"prompt": f"q{i}", "completion": "yes"} for i in range(16)]),
    )
    second = start_job(
        client, other.json()["id"], "support", model, training={**_training(), "max_steps": 30}
    )
    assert wait_for_job(client, second["id"])["fine_tuned_model"] == "support@2"

    adapter = client.get("/v1/adapters/support").json()
    assert [v["version"] for v in adapter["versions"]] == [1, 2]
    assert adapter["versions"][0]["job_id"] == first["id"]
    assert adapter["versions"][0]["training_file"] == file["id"]
    assert adapter["versions"][1]["training_file"] == other.json()["id"]
    assert len(adapter["versions"][0]["sha256"]) == 64
    events = client.get(f"/v1/fine_tuning/jobs/{first['id']}/events", params={"limit": 100}).json()["data"]
    assert any(e["type"] == "metrics" for e in events)
    assert events[0]["message"] == "job succeeded"  # newest first

    base = text_of(chat(client, model))
    v1, v2 = text_of(chat(client, "support@1")), text_of(chat(client, "support@2"))
    assert len({base, v1, v2}) == 3, (base, v1, v2)

    promoted = client.post("/v1/adapters/support/aliases/production", json={"version": 1})
    assert promoted.status_code == 200, promoted.text
    client.post("/v1/adapters/support/aliases/production", json={"version": 2})
    through_alias = chat(client, "support:production")
    assert text_of(through_alias) == v2
    assert text_of(chat(client, "support")) == v2  # a bare name means its production alias

    usage = client.get("/v1/usage").json()
    today = datetime.now(UTC).date().isoformat()
    day = next(d for d in usage["data"] if d["date"] == today)
    assert day["completion_tokens"] >= through_alias["usage"]["completion_tokens"] > 0
    assert day["prompt_tokens"] == 5 * through_alias["usage"]["prompt_tokens"]  # five chats so far
    assert (
        day["trained_tokens"] == done["trained_tokens"] + wait_for_job(client, second["id"])["trained_tokens"]
    )
    assert day["requests"] == 5 and usage["total_cost"] > 0

    rolled = client.post("/v1/adapters/support/aliases/production/rollback")
    assert rolled.json()["version"] == 1
    assert text_of(chat(client, "support:production")) == v1
    history = client.get("/v1/adapters/support/history").json()["data"]
    assert [(m["action"], m["from_version"], m["to_version"]) for m in history] == [
        ("promote", None, 1),
        ("promote", 1, 2),
        ("rollback", 2, 1),
    ]
    assert all(m["actor"].startswith("key:") for m in history)


def _training() -> dict[str, Any]:
    return dict(QUICK_RECIPE["training"])
