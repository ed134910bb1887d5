"""The canary's verdict on crafted windows: a failing or worse canary is rolled back, a good one promoted
once it has enough requests, an undecided one rolled back at the deadline; the test keeps its level."""

from __future__ import annotations

import random

import pytest
from scipy.stats import mannwhitneyu

from lorafleet.errors import DataError
from lorafleet.rollout import CanaryPlan, Window, decide

PLAN = CanaryPlan(percent=10, min_requests=50, max_minutes=30, alpha=0.05, max_error_rate=0.02)


def scores(n: int, p: float, seed: int) -> list[float]:
    """`n` pass/fail scores (1.0 with probability `p`)."""
    rng = random.Random(seed)
    return [float(rng.random() < p) for _ in range(n)]


def test_a_good_canary_is_promoted_once_it_has_enough_scored_requests() -> None:
    production = Window(scores(400, 0.6, 0), requests=400)

    early = decide(Window(scores(30, 0.9, 1), requests=30), production, PLAN, minutes=5)
    done = decide(Window(scores(60, 0.9, 1), requests=60), production, PLAN, minutes=10)

    assert early.decision == "wait" and "30 of 50" in early.reason
    assert done.decision == "promote", done
    assert done.canary_mean == pytest.approx(sum(scores(60, 0.9, 1)) / 60)


def test_a_worse_canary_is_rolled_back_before_its_window_ends() -> None:
    production = Window(scores(400, 0.9, 0), requests=400)
    canary = Window(scores(30, 0.3, 1), requests=30)

    verdict = decide(canary, production, PLAN, minutes=2)

    assert verdict.decision == "rollback" and "worse" in verdict.reason
    expected = mannwhitneyu(production.scores, canary.scores, alternative="greater").pvalue
    assert verdict.p_value == pytest.approx(expected)


def test_a_spike_of_errors_rolls_back_at_once() -> None:
    production = Window(scores(400, 0.6, 0), requests=400, errors=1)
    canary = Window(scores(10, 1.0, 1), requests=12, errors=2)  # perfect answers, but 2 of 12 failed

    verdict = decide(canary, production, PLAN, minutes=1)

    assert verdict.decision == "rollback" and "2 of 12" in verdict.reason


def test_an_undecided_canary_is_rolled_back_at_the_deadline() -> None:
    production = Window(scores(400, 0.6, 0), requests=400)
    canary = Window(scores(10, 0.6, 1), requests=10)

    assert decide(canary, production, PLAN, minutes=29).decision == "wait"
    late = decide(canary, production, PLAN, minutes=30)
    assert late.decision == "rollback" and "undecided" in late.reason


def test_a_canary_as_good_as_production_is_rarely_rolled_back() -> None:
    # 400 seeded canaries from production's own distribution, each judged once at min_requests.
    rollbacks = sum(
        decide(
            Window(scores(50, 0.7, 1000 + seed), requests=50),
            Window(scores(200, 0.7, seed), requests=200),
            PLAN,
            minutes=10,
        ).decision
        == "rollback"
        for seed in range(400)
    )
    assert rollbacks / 400 <= 0.08  # the test's level is 0.05; binomial slack for 400 draws


def test_a_margin_lets_a_slightly_worse_canary_through() -> None:
    production = Window([1.0] * 50 + [0.0] * 50, requests=100)
    canary = Window([1.0] * 24 + [0.0] * 26, requests=50)  # mean 0.48 against 0.50

    assert decide(canary, production, PLAN, minutes=5).decision == "wait"
    loose = PLAN.model_copy(update={"margin": 0.05})
    assert decide(canary, production, loose, minutes=5).decision == "promote"


@pytest.mark.parametrize(
    ("window", "field"),
    [
        (lambda: Window([0.5], requests=1, errors=2), "errors"),
        (lambda: Window([1.5], requests=1), "scores"),
        (lambda: Window([float("nan")], requests=1), "scores"),
    ],
)
def test_bad_windows_are_refused_naming_the_field(window: object, field: str) -> None:
    with pytest.raises(DataError) as err:
        window()  # type: ignore[operator]
    assert err.value.field == field
