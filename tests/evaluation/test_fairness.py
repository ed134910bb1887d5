"""Counterfactual fairness (`evaluation.fairness`): rewriting rows, the bootstrap, the report, the gate."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lorafleet.data import Example
from lorafleet.data.formats import Message
from lorafleet.errors import ConfigError, DataError
from lorafleet.evaluation.fairness import (
    GROUPS,
    Outcomes,
    bootstrap_mean,
    build_report,
    counterfactual,
    groups_named,
    make_variants,
    masked,
    rewrite,
    row_person,
)
from lorafleet.evaluation.forgetting import ScoredVersion
from lorafleet.evaluation.gate import GatePolicy, check_gate


def ticket(name: str, body: str) -> Example:
    record = {"type": "refund", "customer": name, "amount": 12.5}
    messages = (
        Message("user", f"Extract this ticket as JSON.\n\n{body}"),
        Message("assistant", json.dumps(record)),
    )
    return Example(source="t.jsonl:1", messages=messages)


def test_rewrite_changes_every_mention_pronoun_and_title() -> None:
    text = "Hi, Mr. Smith here. John Smith ordered it; John says he wants his money back. Thanks, John"
    new = rewrite(text, "John Smith", "Lucia Vargas", "female")
    assert new == (
        "Hi, Ms. Vargas here. Lucia Vargas ordered it; Lucia says she wants her money back. Thanks, Lucia"
    )
    back = rewrite("She said her order to Mrs. Kim was late", "Ana Kim", "Wei Park", "male")
    assert back == "He said his order to Mr. Park was late"


def test_counterfactual_rewrites_the_reference_too() -> None:
    row = ticket("Maria Lopez", "Hello, this is Maria Lopez. I want a refund.")
    assert row_person(row, "customer") == "Maria Lopez"
    variant = counterfactual(row, "Maria Lopez", "Jamal Booker", "male")
    assert "Jamal Booker" in variant.messages[0].content and "Maria" not in variant.messages[0].content
    assert json.loads(variant.reference or "")["customer"] == "Jamal Booker"
    assert json.loads(variant.reference or "")["amount"] == 12.5


def test_variants_use_each_groups_names_two_people_per_row_and_skip_unnamed_rows() -> None:
    rows = [
        ticket("Maria Lopez", "Hello, this is Maria Lopez."),
        ticket("Maria Lopez", "Hello, no name here."),  # the name is not in the prompt: skipped
        ticket("Tom Berg", "Tom Berg writing: the order is late."),
    ]
    chosen = groups_named(["anglo_female", "arab_male"])
    variants = make_variants(rows, chosen, "customer", seed=3)
    assert variants.skipped == 1
    for group in chosen:
        first, second = variants.people[group.name]
        assert len(first) == len(second) == 2
        for a, b in zip(first, second, strict=True):
            assert a != b  # two different people of the group
            for person in (a, b):
                assert person.split()[0] in group.first_names and person.split()[-1] in group.last_names
        assert [
            v.messages[0].content.count(first[i]) for i, v in enumerate(variants.rows[group.name][0])
        ] == [
            1,
            1,
        ]
    assert make_variants(rows, chosen, "customer", seed=3) == variants  # seeded
    with pytest.raises(DataError, match="--name-field"):
        make_variants(rows, chosen, "agent", seed=0)


def test_groups_are_checked() -> None:
    assert len(groups_named(None)) == len(GROUPS) == 12
    with pytest.raises(ConfigError, match="unknown group 'martian'"):
        groups_named(["anglo_male", "martian"])
    with pytest.raises(ConfigError, match="at least two"):
        groups_named(["anglo_male", "anglo_male"])


def test_bootstrap_interval_covers_the_true_gap_in_a_simulated_case() -> None:
    """Paired rows, group A right with p = 0.8 and B with 0.7: the true gap is 0.1. A 95% interval must
    cover it in about 95% of simulated suites (at least 90% of 300 here) and exclude 0 in most."""
    rng = np.random.default_rng(7)
    covered = excluded_zero = 0
    runs = 300
    for run in range(runs):
        a = (rng.random(400) < 0.8).astype(float)
        b = (rng.random(400) < 0.7).astype(float)
        estimate = bootstrap_mean(a - b, resamples=1000, seed=run)
        covered += estimate.low <= 0.1 <= estimate.high
        excluded_zero += estimate.excludes_zero()
    assert covered / runs >= 0.90
    assert excluded_zero / runs >= 0.85


def _outcomes(scores: dict[str, list[list[float]]]) -> Outcomes:
    answers = {
        g: [[f'{{"customer": "P{g}{c}{i}"}}' for i in range(len(s[0]))] for c in (0, 1)]
        for g, s in scores.items()
    }
    people = {g: [[f"P{g}{c}{i} X" for i in range(len(s[0]))] for c in (0, 1)] for g, s in scores.items()}
    return Outcomes(scores=scores, answers=answers, people=people)


def _suite_outcomes(
    rng: np.random.Generator, rows: int, groups: tuple[str, ...]
) -> dict[str, list[list[float]]]:
    """Each row is right or wrong for everyone (its difficulty), and each variant flips with 5%: fair."""
    right = rng.random(rows) < 0.8
    return {g: [[float(x != (rng.random() < 0.05)) for x in right] for _ in (0, 1)] for g in groups}


def test_report_calls_a_real_gap_significant_and_noise_not() -> None:
    rng = np.random.default_rng(0)
    rows = 200
    fair = _suite_outcomes(rng, rows, ("a", "b", "c"))
    report = build_report(_outcomes(fair), metric="json_fields", rows=rows, skipped=0)
    assert report["max_significant_gap"] == 0.0  # three groups alike: nothing is called bias
    assert 0.0 < report["max_gap"] < 0.05

    biased = dict(fair)
    biased["c"] = [[0.0 if i % 2 else x for i, x in enumerate(copy)] for copy in fair["c"]]  # half wrong
    report = build_report(_outcomes(biased), metric="json_fields", rows=rows, skipped=0)
    flagged = {(p["a"], p["b"]) for p in report["pairs"] if p["significant"]}
    assert flagged == {("a", "c"), ("b", "c")}
    assert report["max_significant_gap"] > 0.25
    assert set(report["groups"]) == {"a", "b", "c"} and set(report["baseline"]) == {"a", "b", "c"}


def test_answers_compare_with_the_peoples_names_masked() -> None:
    assert masked('{"customer": "Lucia Vargas"} Lucia', "Lucia Vargas") == '{"customer": "<person>"} <person>'


def test_gate_checks_the_largest_significant_gap() -> None:
    policy = GatePolicy(max_fairness_gap=0.05)
    unmeasured = check_gate(policy, [ScoredVersion("t@1", {})], [])
    assert not unmeasured["passed"] and "no fairness report" in unmeasured["checks"][0]["why"]
    fair = check_gate(policy, [ScoredVersion("t@1", {"fairness": {"max_significant_gap": 0.0}})], [])
    assert fair["passed"]
    biased = check_gate(policy, [ScoredVersion("t@1", {"fairness": {"max_significant_gap": 0.2}})], [])
    assert not biased["passed"] and biased["checks"][0]["value"] == 0.2
    with pytest.raises(ValueError):
        GatePolicy(max_fairness_gap=1.5)


def test_prose_answers_are_compared_by_sentiment_too() -> None:
    from lorafleet.evaluation.fairness import vader_sentiment

    sentiment = vader_sentiment()
    assert (
        sentiment("Thank you, happy to help you with this!") > 0.3 > -0.3 > sentiment("No. Terrible request.")
    )
    rows = 50
    scores = {g: [[1.0] * rows, [1.0] * rows] for g in ("a", "b")}
    outcomes = _outcomes(scores)
    kind = {"a": "Glad to help, wonderful!", "b": "Sorry, this is awful."}
    answers = {g: [[kind[g]] * rows, [kind[g]] * rows] for g in scores}
    report = build_report(
        Outcomes(scores, answers, outcomes.people),
        metric="exact_match",
        rows=rows,
        skipped=0,
        sentiment=sentiment,
    )
    assert report["pairs"][0]["sentiment_gap"]["mean"] > 1.0
    assert report["baseline"]["a"]["sentiment_gap"]["mean"] == 0.0
