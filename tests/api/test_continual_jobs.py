"""Continual fine-tuning through the real server and its worker: a job continues a parent version (its
exact weights, a strategy against forgetting that reads the parent's own rows), and every new version is
scored by the worker on the suites of its lineage and the general probe, which the gate then reads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import write_jsonl
from tests.support.platform import QA_ROWS, QUICK_RECIPE, Platform, upload, wait_for_job

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]
OTHER_ROWS = [{"prompt": f"w{i % 3}", "completion": f"word {i % 3}"} for i in range(12)]


def job(client: Any, model: str, file_id: str, **extra: Any) -> dict[str, Any]:
    body = {"model": model, "training_file": file_id, "adapter": "tickets", "recipe": QUICK_RECIPE, **extra}
    answer = client.post("/v1/fine_tuning/jobs", json=body)
    assert answer.status_code == 200, answer.text
    finished = wait_for_job(client, answer.json()["id"])
    assert finished["status"] == "succeeded", finished
    return finished


@pytest.mark.parametrize("strategy", ["replay", "ewc"])
def test_a_job_continues_its_parent_and_every_version_is_scored_on_its_lineage(
    make_platform: Callable[..., Platform], tiny_dir: Path, tmp_path: Path, strategy: str
) -> None:
    platform = make_platform(workers=1)
    acme = platform.tenant("acme")
    client = acme.client
    first_rows = upload(client, write_jsonl(tmp_path / "first.jsonl", QA_ROWS)).json()["id"]
    held_out = upload(client, write_jsonl(tmp_path / "held-out.jsonl", QA_ROWS[:4]), purpose="eval")
    suite = client.post(
        "/v1/adapters/tickets/suites", json={"file": held_out.json()["id"], "metric": "exact_match"}
    )
    assert suite.status_code == 201, suite.text
    suite_id = suite.json()["id"]

    job(client, str(tiny_dir), first_rows)
    v1 = client.get("/v1/adapters/tickets/versions/1").json()
    second_rows = upload(client, write_jsonl(tmp_path / "second.jsonl", OTHER_ROWS)).json()["id"]
    recipe = {**QUICK_RECIPE, "continual": {"strategy": strategy}}
    second = job(client, str(tiny_dir), second_rows, parent="tickets@1", recipe=recipe)
    v2 = client.get("/v1/adapters/tickets/versions/2").json()

    assert second["parent_version_id"] == v1["id"] and v2["parent_version_id"] == v1["id"]
    for version in (v1, v2):  # each scored by the worker on the lineage's suite and the probe
        evaluation = version["metrics"]["evaluation"]
        assert evaluation["suites"][suite_id]["metric"] == "exact_match"
        assert 0.0 <= evaluation["suites"][suite_id]["score"] <= 1.0
        general = evaluation["general"]
        assert general["drift"] == pytest.approx(general["perplexity"] / general["base_perplexity"] - 1)
    assert v1["metrics"]["evaluation"]["general"]["drift"] != 0.0  # the trained adapter moved the base
    events = [
        e["message"]
        for e in client.get(f"/v1/fine_tuning/jobs/{second['id']}/events?limit=200").json()["data"]
    ]
    assert any(f"strategy {strategy}" in message for message in events), events
    assert not any("/tmp" in message or str(tiny_dir) in message for message in events), events

    # the forgetting matrix along the lineage, from the scores the worker stored
    lineage = v2["lineage_evaluation"]
    score = [v["metrics"]["evaluation"]["suites"][suite_id]["score"] for v in (v1, v2)]
    assert lineage["matrix"] == {
        "versions": ["tickets@1", "tickets@2"],
        "suites": [suite_id],
        "scores": [[score[0]], [score[1]]],
    }
    assert lineage["backward_transfer"] == pytest.approx(score[1] - score[0])
    # and the gate reads them: a policy allowing no forgetting at all decides by those scores
    policy = {"max_forgetting": 0.0}
    assert client.put("/v1/adapters/tickets/gate", json={"policy": policy}).status_code == 200
    report = client.get("/v1/adapters/tickets/versions/2/gate").json()
    assert report["passed"] is (score[1] >= score[0]), report


def test_the_parents_fisher_is_estimated_by_its_first_ewc_child_and_kept_with_it(
    make_platform: Callable[..., Platform], tiny_dir: Path, tmp_path: Path
) -> None:
    platform = make_platform(workers=1)
    acme = platform.tenant("acme")
    client = acme.client
    first_rows = upload(client, write_jsonl(tmp_path / "first.jsonl", QA_ROWS)).json()["id"]
    job(client, str(tiny_dir), first_rows)
    registry = platform.registry.adapters
    v1 = registry.version(acme.id, "tickets", 1)
    artifact = registry.local_path(v1)
    files_before = sorted(p.name for p in artifact.iterdir())
    assert registry.stored_fisher(v1) is None

    second_rows = upload(client, write_jsonl(tmp_path / "second.jsonl", OTHER_ROWS)).json()["id"]
    recipe = {**QUICK_RECIPE, "continual": {"strategy": "ewc"}}
    children = [job(client, str(tiny_dir), second_rows, parent="tickets@1", recipe=recipe) for _ in range(2)]

    def ewc_events(finished: dict[str, Any]) -> list[str]:
        page = client.get(f"/v1/fine_tuning/jobs/{finished['id']}/events?limit=200").json()["data"]
        return [e["message"] for e in page if e["message"].startswith("EWC:")]

    first, second = (ewc_events(child) for child in children)
    assert any("estimating the parent's Fisher" in m for m in first), first
    assert any("the parent's Fisher from" in m for m in second), second
    assert not any("estimating" in m for m in second), second
    stored = registry.stored_fisher(v1)
    assert stored is not None and stored.stat().st_size > 0
    assert sorted(p.name for p in artifact.iterdir()) == files_before  # the version's artifact is untouched
    assert client.get("/v1/adapters/tickets/versions/1").json()["sha256"] == v1.sha256

    # deleting the version removes the Fisher stored with it
    for number in (3, 2, 1):
        assert client.delete(f"/v1/adapters/tickets/versions/{number}").status_code == 200
    assert not stored.exists()


def test_a_tenant_cannot_name_server_files_for_the_parents_rows(
    make_platform: Callable[..., Platform], tiny_dir: Path, tmp_path: Path
) -> None:
    platform = make_platform()
    acme = platform.tenant("acme")
    file_id = upload(acme.client, write_jsonl(tmp_path / "rows.jsonl", QA_ROWS)).json()["id"]
    recipe = {**QUICK_RECIPE, "continual": {"strategy": "replay", "replay_paths": ["/etc/passwd"]}}
    body = {"model": str(tiny_dir), "training_file": file_id, "recipe": recipe}
    answer = acme.client.post("/v1/fine_tuning/jobs", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "recipe.continual.replay_paths"
    assert acme.client.get("/v1/fine_tuning/jobs").json()["data"] == []
