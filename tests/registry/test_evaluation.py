"""Eval suites, gate policies and the gate on promote: refused, passed, forced and audited; lineage."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lorafleet.errors import ConfigError, ConflictError, GateRefusedError, NotFoundError, UnknownAdapterError
from lorafleet.evaluation.gate import GatePolicy
from lorafleet.registry import Registry
from lorafleet.registry.tables import AdapterVersion, Dataset, Tenant


def evaluation(scores: dict[str, float], drift: float = 0.0) -> dict[str, Any]:
    """A version's metrics as the worker writes them."""
    return {
        "evaluation": {
            "suites": {
                s: {"adapter": "tickets", "metric": "exact_match", "score": v} for s, v in scores.items()
            },
            "general": {"perplexity": 10 * (1 + drift), "base_perplexity": 10.0, "drift": drift},
        }
    }


@pytest.fixture
def add_eval_file(registry: Registry, make_dataset_file: Callable[..., Path]) -> Callable[..., Dataset]:
    def add(tenant_id: str, name: str = "held-out.jsonl") -> Dataset:
        source = make_dataset_file(name)
        return registry.datasets.add(
            tenant_id, source, filename=name, format="prompt_completion", rows=3, tokens=30, purpose="eval"
        )

    return add


@pytest.fixture
def lineage(
    registry: Registry,
    tenant: Tenant,
    make_adapter_dir: Callable[..., Path],
    add_eval_file: Callable[..., Dataset],
) -> tuple[list[str], list[AdapterVersion]]:
    """Suites A (of `tickets`, learned by v1) and B (learned by v2); v3 forgot A, v4 kept it."""
    registry.adapters.register(tenant.id, "tickets", make_adapter_dir("v0"), base_model="tiny")
    suites = [
        registry.evaluation.add_suite(
            tenant.id, "tickets", dataset_id=add_eval_file(tenant.id, f"{s}.jsonl").id, metric="exact_match"
        ).id
        for s in ("a", "b")
    ]
    a, b = suites
    v1 = registry.adapters.version(tenant.id, "tickets", 1)
    scores = [
        {a: 0.9},  # v2 (parent v1, which has no scores)
        {a: 0.88, b: 0.8},  # v3: learned B
        {a: 0.5, b: 0.8},  # v4: forgot A
        {a: 0.86, b: 0.82},  # v5: a good one
    ]
    versions = [v1]
    parents = [v1, None, None, None]
    for index, metrics in enumerate(scores):
        parent = parents[index] or (versions[2] if index >= 2 else versions[-1])
        versions.append(
            registry.adapters.register(
                tenant.id,
                "tickets",
                make_adapter_dir(f"v{index + 2}", weights=bytes([index]) * 8),
                base_model="tiny",
                parent_version_id=parent.id,
                metrics=evaluation(metrics, drift=0.05),
            )
        )
    return suites, versions


def test_the_gate_refuses_a_version_that_forgot_and_passes_a_good_one(
    registry: Registry, tenant: Tenant, lineage: tuple[list[str], list[AdapterVersion]]
) -> None:
    (a, _b), versions = lineage
    registry.evaluation.set_policy(
        tenant.id, "tickets", GatePolicy(min_scores={"own": 0.45}, max_forgetting=0.1, max_general_drift=0.2)
    )
    with pytest.raises(
        GateRefusedError, match=rf"tickets@4 fails its promotion gate: max_forgetting {a}"
    ) as err:
        registry.adapters.promote(tenant.id, "tickets", "production", 4, actor="key:1")
    assert isinstance(err.value, ConflictError)
    assert not err.value.report["passed"]
    assert registry.adapters.aliases(tenant.id, "tickets") == {}  # nothing moved
    assert registry.adapters.history(tenant.id, "tickets") == []

    registry.adapters.promote(tenant.id, "tickets", "production", 5, actor="key:1")
    [move] = registry.adapters.history(tenant.id, "tickets")
    assert (move.to_version_id, move.forced, move.report["passed"]) == (versions[4].id, False, True)
    assert [c["check"] for c in move.report["checks"]] == ["min_score"] * 2 + ["max_forgetting"] * 2 + [
        "max_general_drift"
    ]


def test_a_forced_promotion_is_audited_with_its_report(
    registry: Registry, tenant: Tenant, lineage: tuple[list[str], list[AdapterVersion]]
) -> None:
    registry.evaluation.set_policy(tenant.id, "tickets", GatePolicy(max_forgetting=0.1))
    registry.adapters.promote(tenant.id, "tickets", "production", 4, actor="key:ops", force=True)
    assert registry.adapters.aliases(tenant.id, "tickets") == {"production": 4}
    [move] = registry.adapters.history(tenant.id, "tickets")
    assert (move.actor, move.forced, move.report["passed"]) == ("key:ops", True, False)
    # forcing a version that passes is no override; rollback is never gated
    registry.adapters.promote(tenant.id, "tickets", "production", 5, actor="key:ops", force=True)
    registry.adapters.rollback(tenant.id, "tickets", "production", actor="key:ops")
    moves = registry.adapters.history(tenant.id, "tickets")
    assert [(m.action, m.forced, m.report is not None) for m in moves] == [
        ("promote", True, True),
        ("promote", False, True),
        ("rollback", False, False),
    ]


def test_without_a_policy_promote_is_not_gated(
    registry: Registry, tenant: Tenant, lineage: tuple[list[str], list[AdapterVersion]]
) -> None:
    registry.adapters.promote(tenant.id, "tickets", "production", 4, actor="admin")
    [move] = registry.adapters.history(tenant.id, "tickets")
    assert (move.forced, move.report) == (False, None)
    report = registry.evaluation.gate_report(tenant.id, "tickets", 4)
    assert (report["passed"], report["checks"], report["policy"]) == (True, [], None)
    registry.evaluation.set_policy(tenant.id, "tickets", GatePolicy(max_forgetting=0.1))
    assert registry.evaluation.policy(tenant.id, "tickets") == GatePolicy(max_forgetting=0.1)
    registry.evaluation.set_policy(tenant.id, "tickets", None)
    assert registry.evaluation.policy(tenant.id, "tickets") is None


def test_lineage_chain_suites_and_forgetting(
    registry: Registry,
    tenant: Tenant,
    lineage: tuple[list[str], list[AdapterVersion]],
    make_adapter_dir: Callable[..., Path],
    add_eval_file: Callable[..., Dataset],
) -> None:
    (a, b), versions = lineage
    chain = registry.adapters.lineage_chain(tenant.id, versions[3].id)
    assert [v.number for v in chain] == [1, 2, 3, 4]
    found = registry.evaluation.lineage_evaluation(tenant.id, versions[3].id)
    assert found["matrix"]["versions"] == ["tickets@1", "tickets@2", "tickets@3", "tickets@4"]
    assert found["matrix"]["scores"][0] == [None, None]
    assert found["forgetting"] == pytest.approx({a: 0.4, b: 0.0})
    assert found["backward_transfer"] == pytest.approx(-0.2)
    # another adapter trained from tickets@5 is scored on its own suites and on tickets' suites
    registry.adapters.register(
        tenant.id, "billing", make_adapter_dir("b1"), base_model="tiny", parent_version_id=versions[4].id
    )
    own = registry.evaluation.add_suite(
        tenant.id, "billing", dataset_id=add_eval_file(tenant.id, "c.jsonl").id, metric="json_fields"
    )
    billing_v1 = registry.adapters.version(tenant.id, "billing", 1)
    assert [s.id for s in registry.evaluation.suites_for_version(tenant.id, billing_v1.id)] == [a, b, own.id]
    expected = [a, b, own.id]
    assert [
        s.id for s in registry.evaluation.suites_to_score(tenant.id, "billing", billing_v1.id)
    ] == expected
    assert [s.id for s in registry.evaluation.suites_to_score(tenant.id, "new-one")] == []
    specs = registry.evaluation.suite_specs(tenant.id, "billing", billing_v1.id)
    assert [(s["id"], s["adapter"], s["metric"]) for s in specs] == [
        (a, "tickets", "exact_match"),
        (b, "tickets", "exact_match"),
        (own.id, "billing", "json_fields"),
    ]
    assert specs[2]["file"] == own.dataset_id
    assert [s.id for s in registry.evaluation.suites(tenant.id, "billing")] == [own.id]


def test_suites_validate_their_file_and_metric_and_keep_their_file(
    registry: Registry,
    tenant: Tenant,
    other_tenant: Tenant,
    add_eval_file: Callable[..., Dataset],
    add_dataset: Callable[..., Dataset],
) -> None:
    held_out = add_eval_file(tenant.id)
    with pytest.raises(
        ConfigError, match="metric 'bleu': choose one of json_fields, exact_match, perplexity"
    ):
        registry.evaluation.add_suite(tenant.id, "tickets", dataset_id=held_out.id, metric="bleu")
    training = add_dataset(tenant.id)
    with pytest.raises(ConfigError, match="purpose 'fine-tune'") as err:
        registry.evaluation.add_suite(tenant.id, "tickets", dataset_id=training.id, metric="exact_match")
    assert err.value.field == "file"
    with pytest.raises(NotFoundError):
        registry.evaluation.add_suite(
            other_tenant.id, "tickets", dataset_id=held_out.id, metric="exact_match"
        )
    assert [a.name for a in registry.adapters.all(tenant.id)] == []  # nothing registered, no adapter made

    suite = registry.evaluation.add_suite(tenant.id, "tickets", dataset_id=held_out.id, metric="exact_match")
    assert suite.id.startswith("suite-")
    assert [a.latest_version for a in registry.adapters.all(tenant.id)] == [
        0
    ]  # made before its first version
    with pytest.raises(ConflictError, match=f"is eval suite {suite.id} of adapter 'tickets'"):
        registry.datasets.delete(tenant.id, held_out.id)
    with pytest.raises(UnknownAdapterError):
        registry.evaluation.suites(other_tenant.id, "tickets")
    with pytest.raises(UnknownAdapterError):
        registry.evaluation.delete_suite(other_tenant.id, "tickets", suite.id)
    theirs = add_eval_file(other_tenant.id)
    registry.evaluation.add_suite(other_tenant.id, "tickets", dataset_id=theirs.id, metric="exact_match")
    with pytest.raises(ConfigError, match=f"{suite.id}: no such eval suite"):  # another tenant's suite
        registry.evaluation.set_policy(other_tenant.id, "tickets", GatePolicy(min_scores={suite.id: 0.5}))
    registry.evaluation.set_policy(tenant.id, "tickets", GatePolicy(min_scores={suite.id: 0.5}))
    with pytest.raises(
        ConflictError, match=f"eval suite {suite.id} is named by the gate policy of adapter 'tickets'"
    ):
        registry.evaluation.delete_suite(tenant.id, "tickets", suite.id)
    registry.evaluation.set_policy(tenant.id, "tickets", None)
    registry.evaluation.delete_suite(tenant.id, "tickets", suite.id)
    registry.datasets.delete(tenant.id, held_out.id)
    assert [d.id for d in registry.datasets.all(tenant.id)] == [training.id]
