"""Forgetting matrix, references, BWT and drift on hand-made metrics, missing scores included."""

from __future__ import annotations

from typing import Any

import pytest

from lorafleet.evaluation.forgetting import (
    ScoredVersion,
    backward_transfer,
    forgetting,
    forgetting_matrix,
    general_drift,
    lineage_evaluation,
    references,
)


def scored(label: str, scores: dict[str, float], drift: float | None = None) -> ScoredVersion:
    evaluation: dict[str, Any] = {
        "suites": {s: {"adapter": "t", "metric": "exact_match", "score": v} for s, v in scores.items()}
    }
    if drift is not None:
        evaluation["general"] = {"perplexity": 10 * (1 + drift), "base_perplexity": 10.0, "drift": drift}
    return ScoredVersion(label, {"final_train_loss": 0.5, "evaluation": evaluation})


# v1 learned A; v2 learned B and kept most of A; v3 forgot A badly, kept B and learned C
CHAIN = [
    scored("t@1", {"suite-a": 0.9}),
    scored("t@2", {"suite-a": 0.85, "suite-b": 0.8}),
    scored("t@3", {"suite-a": 0.5, "suite-b": 0.8, "suite-c": 0.7}, drift=0.12),
]


def test_references_are_the_oldest_scores() -> None:
    assert references(CHAIN) == {"suite-a": (0, 0.9), "suite-b": (1, 0.8), "suite-c": (2, 0.7)}


def test_forgetting_of_the_newest_version_covers_only_ancestor_suites() -> None:
    assert forgetting(CHAIN) == pytest.approx({"suite-a": 0.4, "suite-b": 0.0})
    assert forgetting(CHAIN[:2]) == pytest.approx({"suite-a": 0.05})
    assert forgetting(CHAIN[:1]) == {}


def test_backward_transfer_is_the_mean_score_change_on_ancestor_suites() -> None:
    assert backward_transfer(CHAIN) == pytest.approx(-(0.4 + 0.0) / 2)
    assert backward_transfer(CHAIN[:1]) is None


def test_a_missing_score_is_unknown_forgetting_and_left_out_of_bwt() -> None:
    chain = [*CHAIN[:2], scored("t@3", {"suite-b": 0.9})]  # not scored on A
    assert forgetting(chain) == pytest.approx({"suite-a": None, "suite-b": -0.1})
    assert backward_transfer(chain) == pytest.approx(0.1)


def test_matrix_has_a_row_per_version_and_none_where_unscored() -> None:
    matrix = forgetting_matrix(CHAIN)
    assert matrix["versions"] == ["t@1", "t@2", "t@3"]
    assert matrix["suites"] == ["suite-a", "suite-b", "suite-c"]
    assert matrix["scores"] == [[0.9, None, None], [0.85, 0.8, None], [0.5, 0.8, 0.7]]


def test_drift_and_versions_without_evaluation() -> None:
    assert general_drift(CHAIN[2].metrics) == pytest.approx(0.12)
    assert general_drift({}) is None
    bare = [ScoredVersion("t@1", {}), ScoredVersion("t@2", {"evaluation": None})]
    assert lineage_evaluation(bare) == {
        "matrix": {"versions": ["t@1", "t@2"], "suites": [], "scores": [[], []]},
        "forgetting": {},
        "backward_transfer": None,
        "general_drift": None,
    }
