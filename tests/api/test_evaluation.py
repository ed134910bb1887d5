"""Eval suites, the promotion gate and job parents through a real server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import save_random_adapter, write_jsonl
from tests.support.platform import QA_ROWS, QUICK_RECIPE, Platform, Tenant, upload

pytestmark = pytest.mark.integration


def scores(values: dict[str, float], drift: float = 0.0) -> dict[str, Any]:
    suites = {s: {"adapter": "tickets", "metric": "exact_match", "score": v} for s, v in values.items()}
    general = {"perplexity": 10.0 * (1 + drift), "base_perplexity": 10.0, "drift": drift}
    return {"evaluation": {"suites": suites, "general": general}}


def tickets_with_a_suite(platform: Platform, tenant: Tenant, tiny_dir: Path, tmp_path: Path) -> str:
    """`tickets` v1 (learned the suite), v2 (forgot it) and v3 (kept it), both from v1; the suite's id."""
    from lorafleet.models import load_base

    held_out = upload(tenant.client, write_jsonl(tmp_path / "held-out.jsonl", QA_ROWS[:4]), purpose="eval")
    assert held_out.status_code == 201 and held_out.json()["purpose"] == "eval", held_out.text
    suite = tenant.client.post(
        "/v1/adapters/tickets/suites", json={"file": held_out.json()["id"], "metric": "exact_match"}
    )
    assert suite.status_code == 201, suite.text
    suite_id: str = suite.json()["id"]
    base, _ = load_base(str(tiny_dir), device="cpu")
    first = None
    for seed, score in ((1, 0.9), (2, 0.4), (3, 0.88)):
        version = platform.registry.adapters.register(
            tenant.id,
            "tickets",
            save_random_adapter(base, tmp_path / f"adapter-{seed}", seed=seed),
            base_model=str(tiny_dir),
            parent_version_id=first.id if first is not None else None,
            metrics=scores({suite_id: score}, drift=0.01),
        )
        first = first or version
    return suite_id


def test_the_gate_refuses_a_version_that_forgot_unless_forced_and_audits_it(
    make_platform: Callable[..., Platform], tiny_dir: Path, tmp_path: Path
) -> None:
    platform = make_platform()
    acme = platform.tenant("acme")
    client = acme.client
    suite = tickets_with_a_suite(platform, acme, tiny_dir, tmp_path)
    policy = {"min_scores": {"own": 0.3}, "max_forgetting": 0.1, "max_general_drift": 0.05}
    answer = client.put("/v1/adapters/tickets/gate", json={"policy": policy})
    assert answer.status_code == 200 and answer.json()["policy"]["max_forgetting"] == 0.1, answer.text
    bad = client.put("/v1/adapters/tickets/gate", json={"policy": {"max_forgetting": 2}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "policy.max_forgetting", bad.text

    report = client.get("/v1/adapters/tickets/versions/2/gate").json()
    assert report["passed"] is False
    failed = [c for c in report["checks"] if not c["passed"]]
    assert [(c["check"], c["suite"]) for c in failed] == [("max_forgetting", suite)]
    assert failed[0]["value"] == pytest.approx(0.5)

    refused = client.post("/v1/adapters/tickets/aliases/production", json={"version": 2})
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert error["code"] == "gate_refused" and "tickets@2 fails its promotion gate" in error["message"]
    assert error["report"]["checks"] == report["checks"]
    assert client.get("/v1/adapters/tickets").json()["aliases"] == {}

    good = client.post("/v1/adapters/tickets/aliases/production", json={"version": 3})
    assert good.status_code == 200, good.text
    forced = client.post("/v1/adapters/tickets/aliases/staging", json={"version": 2, "force": True})
    assert forced.status_code == 200, forced.text
    history = client.get("/v1/adapters/tickets/history").json()["data"]
    assert [(m["alias"], m["to_version"], m["forced"], m["report"]["passed"]) for m in history] == [
        ("production", 3, False, True),
        ("staging", 2, True, False),
    ]
    assert history[1]["actor"].startswith("key:")

    version = client.get("/v1/adapters/tickets/versions/2").json()
    assert version["metrics"]["evaluation"]["suites"][suite]["score"] == 0.4
    lineage = version["lineage_evaluation"]
    assert lineage["matrix"]["versions"] == ["tickets@1", "tickets@2"]
    assert lineage["backward_transfer"] == pytest.approx(-0.5)
    assert client.get("/v1/adapters/tickets/gate").json()["policy"] == {**policy, "max_fairness_gap": None}
    assert client.put("/v1/adapters/tickets/gate", json={"policy": None}).json()["policy"] is None


def test_suites_refuse_malformed_files_and_keep_their_file(
    make_platform: Callable[..., Platform], tiny_dir: Path, tmp_path: Path
) -> None:
    platform = make_platform()
    client = platform.tenant("acme").client
    malformed = tmp_path / "held-out.jsonl"
    malformed.write_text('{"prompt": "q1", "completion": "a1"}\n{"prompt": "q2", "completion": \n')
    answer = upload(client, malformed, purpose="eval")
    assert answer.status_code == 400, answer.text
    assert "held-out.jsonl:2" in answer.json()["error"]["message"]
    assert client.get("/v1/files").json()["data"] == []  # nothing stored
    wrong = upload(client, write_jsonl(tmp_path / "x.jsonl", QA_ROWS), purpose="evaluation")
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "purpose", wrong.text

    training = upload(client, write_jsonl(tmp_path / "train.jsonl", QA_ROWS)).json()
    refused = client.post(
        "/v1/adapters/tickets/suites", json={"file": training["id"], "metric": "exact_match"}
    )
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "file", refused.text
    held_out = upload(client, write_jsonl(tmp_path / "held.jsonl", QA_ROWS[:4]), purpose="eval").json()
    metric = client.post("/v1/adapters/tickets/suites", json={"file": held_out["id"], "metric": "bleu"})
    assert metric.status_code == 400 and metric.json()["error"]["param"] == "metric", metric.text
    assert client.get("/v1/adapters/tickets/suites").status_code == 404  # nothing registered

    suite = client.post("/v1/adapters/tickets/suites", json={"file": held_out["id"], "metric": "json_fields"})
    assert suite.status_code == 201, suite.text
    listed = client.get("/v1/adapters/tickets/suites").json()["data"]
    assert [(s["id"], s["file"], s["metric"]) for s in listed] == [
        (suite.json()["id"], held_out["id"], "json_fields")
    ]
    kept = client.delete(f"/v1/files/{held_out['id']}")
    assert kept.status_code == 409 and suite.json()["id"] in kept.json()["error"]["message"], kept.text
    assert client.delete(f"/v1/adapters/tickets/suites/{suite.json()['id']}").status_code == 200
    assert client.delete(f"/v1/files/{held_out['id']}").status_code == 200


def test_a_job_names_its_parent(
    make_platform: Callable[..., Platform], tiny_dir: Path, tmp_path: Path
) -> None:
    from lorafleet.models import load_base

    platform = make_platform()
    acme = platform.tenant("acme")
    file = upload(acme.client, write_jsonl(tmp_path / "train.jsonl", QA_ROWS)).json()
    base, _ = load_base(str(tiny_dir), device="cpu")
    adapter = save_random_adapter(base, tmp_path / "adapter", seed=1)
    platform.registry.adapters.register(acme.id, "tickets", adapter, base_model=str(tiny_dir))
    platform.registry.adapters.register(acme.id, "other-base", adapter, base_model="another/model")
    body = {"model": str(tiny_dir), "training_file": file["id"], "adapter": "tickets", "recipe": QUICK_RECIPE}

    for parent in ("tickets@1", "tickets", "tickets:production"):
        answer = acme.client.post("/v1/fine_tuning/jobs", json={**body, "parent": parent})
        if parent.endswith(":production"):  # no such alias yet
            assert answer.status_code == 404 and answer.json()["error"]["param"] == "parent", answer.text
            continue
        assert answer.status_code == 200, answer.text
        assert answer.json()["parent"] == "tickets@1" and answer.json()["parent_version_id"].startswith("av-")
    for parent, status in (("tickets@7", 404), ("nobody", 404), ("a@b@c", 400), ("other-base@1", 400)):
        answer = acme.client.post("/v1/fine_tuning/jobs", json={**body, "parent": parent})
        assert answer.status_code == status, (parent, answer.text)
        assert answer.json()["error"]["param"] == "parent", answer.text
        assert "parent" in answer.json()["error"]["message"]


def test_a_fairness_report_is_validated_stored_per_tenant_and_gated(
    make_platform: Callable[..., Platform], tiny_dir: Path, tmp_path: Path
) -> None:
    platform = make_platform()
    acme, globex = platform.tenant("acme"), platform.tenant("globex")
    tickets_with_a_suite(platform, acme, tiny_dir, tmp_path)
    interval = {"mean": 0.8, "low": 0.7, "high": 0.9}
    gap = {"mean": 0.2, "low": 0.1, "high": 0.3}
    comparison = {"gap": gap, "similarity": interval}
    report = {
        "metric": "json_fields",
        "rows": 30,
        "skipped_rows": 0,
        "interval": 0.95,
        "groups": {"a": interval, "b": interval},
        "baseline": {"a": comparison, "b": comparison},
        "baseline_gap": 0.01,
        "pairs": [{**comparison, "a": "a", "b": "b", "significant": True}],
        "max_gap": 0.2,
        "max_significant_gap": 0.2,
    }
    path = "/v1/adapters/tickets/versions/3/fairness"
    bad = acme.client.put(path, json={**report, "max_significant_gap": 2.0})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "max_significant_gap", bad.text
    assert globex.client.put(path, json=report).status_code == 404  # another tenant's version
    assert acme.client.put(path, json=report).status_code == 200
    assert acme.client.get("/v1/adapters/tickets/versions/3").json()["metrics"]["fairness"]["max_gap"] == 0.2

    assert acme.client.put(
        "/v1/adapters/tickets/gate", json={"policy": {"max_fairness_gap": 0.05}}
    ).is_success
    checks = acme.client.get("/v1/adapters/tickets/versions/3/gate").json()["checks"]
    assert [(c["check"], c["value"], c["passed"]) for c in checks] == [("max_fairness_gap", 0.2, False)]
    refused = acme.client.post("/v1/adapters/tickets/aliases/production", json={"version": 3})
    assert refused.status_code == 409 and "max_fairness_gap" in refused.json()["error"]["message"]
