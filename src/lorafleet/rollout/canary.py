"""The canary's verdict: promote it, roll it back, or wait for more requests.

Over the same window, the canary version and production each have per-request quality scores in [0, 1]
(a feedback score, or 1/0 for an answer the task validator accepts/refuses), a request count and an
error count (requests that failed). With the canary plan (`rollout.policy.CanaryPlan`):

1. **Errors**: the canary is rolled back at once when its error rate errors/requests exceeds
   `max_error_rate` (a spike of errors needs no test: every failed request is a user who got nothing).
2. **Worse**: it is rolled back as soon as its scores are significantly below production's: the
   one-sided Mann–Whitney U test of "a production score tends to exceed a canary score" has p < `alpha`
   (scipy's `mannwhitneyu`, exact for small samples, tie-corrected normal approximation otherwise).
   Testing at every look makes a rollback more likely than `alpha` under no difference; that errs on
   the safe side, since a rolled-back canary costs a retry, a bad promotion costs users.
3. **Promote** once it has `min_requests` scores, is not significantly worse, and its mean is at least
   production's mean minus `margin`.
4. **Timeout**: still undecided after `max_minutes`, it is rolled back (not enough evidence to promote).
5. Otherwise **wait**.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from lorafleet.errors import DataError
from lorafleet.rollout.policy import CanaryPlan

Decision = Literal["promote", "rollback", "wait"]


@dataclass(frozen=True)
class Window:
    """One arm's requests over the canary window: their quality scores, how many, how many failed."""

    scores: Sequence[float]
    requests: int
    errors: int = 0

    def __post_init__(self) -> None:
        if self.requests < 0 or not 0 <= self.errors <= self.requests:
            raise DataError(
                f"window: need 0 ≤ errors ≤ requests, got {self.errors} errors of {self.requests} requests",
                field="errors",
            )
        bad = [s for s in self.scores if not (math.isfinite(s) and 0.0 <= s <= 1.0)]
        if bad:
            raise DataError(f"window: scores must lie in [0, 1]; got {bad[0]!r}", field="scores")

    @property
    def mean(self) -> float | None:
        return sum(self.scores) / len(self.scores) if self.scores else None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    reason: str
    p_value: float | None  # of "the canary is worse" (None: not tested yet)
    canary_mean: float | None
    production_mean: float | None


def decide(canary: Window, production: Window, plan: CanaryPlan, *, minutes: float) -> Verdict:
    """The verdict on `canary` against `production` after `minutes` of canary (module docstring)."""
    canary_mean, production_mean = canary.mean, production.mean

    def verdict(decision: Decision, reason: str, p_value: float | None = None) -> Verdict:
        return Verdict(decision, reason, p_value, canary_mean, production_mean)

    if canary.requests and canary.error_rate > plan.max_error_rate:
        return verdict(
            "rollback",
            f"{canary.errors} of {canary.requests} canary requests failed "
            f"({canary.error_rate:.1%} > {plan.max_error_rate:.1%})",
        )
    p_value = _worse_p_value(canary.scores, production.scores)
    if p_value is not None and p_value < plan.alpha:
        return verdict(
            "rollback",
            f"the canary scores worse than production: mean {canary_mean:.3f} against "
            f"{production_mean:.3f}, p = {p_value:.3g} < {plan.alpha:g}",
            p_value,
        )
    promote = (
        canary_mean is not None
        and len(canary.scores) >= plan.min_requests
        and (production_mean is None or canary_mean >= production_mean - plan.margin)
    )
    if promote:
        against = "" if production_mean is None else f" against production's {production_mean:.3f}"
        return verdict(
            "promote",
            f"{len(canary.scores)} scored canary requests, mean {canary_mean:.3f}{against}, "
            "not significantly worse",
            p_value,
        )
    if minutes >= plan.max_minutes:
        return verdict(
            "rollback",
            f"undecided after {minutes:.0f} of {plan.max_minutes:g} minutes: {len(canary.scores)} of "
            f"{plan.min_requests} scored canary requests",
            p_value,
        )
    return verdict("wait", f"{len(canary.scores)} of {plan.min_requests} scored canary requests", p_value)


def _worse_p_value(canary: Sequence[float], production: Sequence[float]) -> float | None:
    """One-sided Mann–Whitney p-value of production > canary; None until both have two scores, or when
    every score is the same (nothing to test)."""
    if len(canary) < 2 or len(production) < 2 or len({*canary, *production}) == 1:
        return None
    from scipy.stats import mannwhitneyu

    return float(mannwhitneyu(production, canary, alternative="greater").pvalue)
