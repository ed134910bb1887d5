"""The gate policy's validation and every kind of check, passing and failing, on hand-made chains."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lorafleet.evaluation.forgetting import ScoredVersion
from lorafleet.evaluation.gate import GatePolicy, check_gate, summary
from tests.evaluation.test_forgetting import CHAIN, scored

POLICY = GatePolicy(min_scores={"own": 0.6}, max_forgetting=0.1, max_general_drift=0.2)


def checks(report: dict[str, object]) -> list[tuple[object, ...]]:
    return [(c["check"], c["suite"], c["passed"]) for c in report["checks"]]  # type: ignore[attr-defined]


def test_a_version_that_forgot_fails_and_the_report_says_why() -> None:
    report = check_gate(POLICY, CHAIN, own_suites=["suite-c"])
    assert not report["passed"]
    assert checks(report) == [
        ("min_score", "suite-c", True),
        ("max_forgetting", "suite-a", False),
        ("max_forgetting", "suite-b", True),
        ("max_general_drift", None, True),
    ]
    failed = report["checks"][1]
    assert failed["value"] == pytest.approx(0.4) and failed["limit"] == 0.1
    assert "forgot 0.4 > 0.1" in failed["why"]
    assert summary(report).startswith("t@3 fails its promotion gate: max_forgetting suite-a: forgot 0.4")
    assert report["backward_transfer"] == pytest.approx(-0.2)


def test_a_good_version_passes() -> None:
    good = [*CHAIN[:2], scored("t@3", {"suite-a": 0.88, "suite-b": 0.79, "suite-c": 0.7}, drift=0.05)]
    report = check_gate(POLICY, good, own_suites=["suite-c"])
    assert report["passed"], summary(report)
    assert summary(report) == "t@3 passes its promotion gate"


def test_missing_scores_fail_their_checks() -> None:
    unscored = [*CHAIN[:2], ScoredVersion("t@3", {})]
    report = check_gate(POLICY, unscored, own_suites=["suite-c"])
    assert checks(report) == [
        ("min_score", "suite-c", False),
        ("max_forgetting", "suite-a", False),
        ("max_forgetting", "suite-b", False),
        ("max_general_drift", None, False),
    ]
    assert "was not scored" in report["checks"][0]["why"]
    no_own = check_gate(GatePolicy(min_scores={"own": 0.5}), CHAIN, own_suites=[])
    assert not no_own["passed"] and "has none" in no_own["checks"][0]["why"]


def test_per_suite_forgetting_limits() -> None:
    policy = GatePolicy(max_forgetting={"suite-a": 0.5, "suite-c": 0.0})
    report = check_gate(policy, CHAIN, own_suites=[])
    assert checks(report) == [("max_forgetting", "suite-a", True), ("max_forgetting", "suite-c", True)]
    assert "nothing to forget" in report["checks"][1]["why"]


@pytest.mark.parametrize(
    "fields",
    [
        {"min_scores": {"own": 1.5}},
        {"min_scores": {"tickets": 0.5}},
        {"max_forgetting": -0.1},
        {"max_forgetting": {"own": 0.1}},
        {"max_general_drift": -1},
        {"max_drift": 0.1},
    ],
)
def test_bad_policies_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        GatePolicy.model_validate(fields)
