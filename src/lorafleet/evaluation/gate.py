"""The promotion gate: a policy per adapter, checked against a version's scores along its lineage.

    min_scores[s] = m         score(v, s) ≥ m   ("own" = every suite registered for v's own adapter)
    max_forgetting = f        forgetting(v, s) ≤ f for every suite s learned by a strict ancestor
    max_forgetting[s] = f     forgetting(v, s) ≤ f for that suite only
    max_general_drift = d     drift(v) ≤ d
    max_fairness_gap = g      the largest significant gap of v's fairness report ≤ g (`evaluation.fairness`)

(scores, forgetting and drift as defined in `evaluation.forgetting`). A score the policy needs and the
version lacks fails its check: a version that was not evaluated cannot pass a gate. The report lists
every check with its value, its limit, pass or fail, and why; the version passes when all checks pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lorafleet.evaluation.forgetting import (
    ScoredVersion,
    backward_transfer,
    forgetting,
    general_drift,
    suite_scores,
)

OWN = "own"  # the key of `min_scores` that means every suite of the version's own adapter


def _check_keys(value: dict[str, float], *, allow_own: bool) -> dict[str, float]:
    for key, limit in value.items():
        if not (key.startswith("suite-") or (allow_own and key == OWN)):
            allowed = "'own' or a suite id (suite-…)" if allow_own else "a suite id (suite-…)"
            raise ValueError(f"key {key!r}: use {allowed}")
        if not 0.0 <= limit <= 1.0:
            raise ValueError(f"{key}: {limit!r} is not a fraction between 0 and 1")
    return value


class GatePolicy(BaseModel):
    """What a version must show before an alias may point at it; an unset rule is not checked."""

    model_config = ConfigDict(extra="forbid")

    min_scores: dict[str, float] = Field(
        default_factory=dict,
        description="Suite id (or 'own': each suite of the adapter itself) → lowest score allowed, 0-1.",
    )
    max_forgetting: float | dict[str, float] | None = Field(
        None,
        description="Most forgetting (reference score − score, 0-1) on every ancestor suite, "
        "or suite id → most forgetting on that suite.",
    )
    max_general_drift: float | None = Field(
        None, ge=0.0, le=100.0, description="Most general drift (perplexity / base perplexity − 1), ≥ 0."
    )
    max_fairness_gap: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Most significant gap in the task metric between two groups of people, 0-1, as the "
        "version's fairness report (`lorafleet fairness`) measured it.",
    )

    @field_validator("min_scores")
    @classmethod
    def _min_scores(cls, value: dict[str, float]) -> dict[str, float]:
        return _check_keys(value, allow_own=True)

    @field_validator("max_forgetting")
    @classmethod
    def _max_forgetting(cls, value: float | dict[str, float] | None) -> float | dict[str, float] | None:
        if isinstance(value, dict):
            return _check_keys(value, allow_own=False)
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"{value!r} is not a fraction between 0 and 1")
        return value

    def suite_ids(self) -> set[str]:
        """The suite ids the policy names."""
        named = {key for key in self.min_scores if key != OWN}
        if isinstance(self.max_forgetting, dict):
            named |= set(self.max_forgetting)
        return named


def _check(
    name: str, suite: str | None, value: float | None, limit: float, passed: bool, why: str
) -> dict[str, Any]:
    return {"check": name, "suite": suite, "value": value, "limit": limit, "passed": passed, "why": why}


def check_gate(
    policy: GatePolicy, chain: Sequence[ScoredVersion], own_suites: Sequence[str]
) -> dict[str, Any]:
    """The gate report of the newest version of `chain` (oldest first) under `policy`.

    `own_suites` are the suite ids registered for the version's own adapter (what `min_scores.own` means).
    Returns `{"version", "passed", "checks": [{check, suite, value, limit, passed, why}], "backward_transfer",
    "general_drift", "policy"}`.
    """
    version = chain[-1]
    scores = suite_scores(version.metrics)
    checks: list[dict[str, Any]] = []

    minimums = {s: limit for s, limit in policy.min_scores.items() if s != OWN}
    if OWN in policy.min_scores:
        if not own_suites:
            checks.append(
                _check(
                    "min_score",
                    None,
                    None,
                    policy.min_scores[OWN],
                    False,
                    "the policy asks for scores on the adapter's own suites and it has none; register one",
                )
            )
        for suite in own_suites:
            minimums.setdefault(suite, policy.min_scores[OWN])
    for suite, limit in minimums.items():
        score = scores.get(suite)
        if score is None:
            checks.append(
                _check("min_score", suite, None, limit, False, f"{version.label} was not scored on it")
            )
        else:
            passed = score >= limit
            why = f"score {score:.4g} {'≥' if passed else '<'} {limit:.4g}"
            checks.append(_check("min_score", suite, score, limit, passed, why))

    if policy.max_forgetting is not None:
        forgot = forgetting(chain)
        limits = (
            policy.max_forgetting
            if isinstance(policy.max_forgetting, dict)
            else dict.fromkeys(forgot, policy.max_forgetting)
        )
        for suite, limit in limits.items():
            if suite not in forgot:
                why = "no strict ancestor of the version was scored on it: nothing to forget"
                checks.append(_check("max_forgetting", suite, None, limit, True, why))
            elif forgot[suite] is None:
                why = f"{version.label} was not scored on this ancestor suite: its forgetting is unknown"
                checks.append(_check("max_forgetting", suite, None, limit, False, why))
            else:
                value = forgot[suite]
                assert value is not None
                passed = value <= limit
                why = f"forgot {value:.4g} {'≤' if passed else '>'} {limit:.4g} of the reference score"
                checks.append(_check("max_forgetting", suite, value, limit, passed, why))

    drift = general_drift(version.metrics)
    if policy.max_general_drift is not None:
        limit = policy.max_general_drift
        if drift is None:
            checks.append(
                _check("max_general_drift", None, None, limit, False, "general drift was not measured")
            )
        else:
            passed = drift <= limit
            why = f"drift {drift:.4g} {'≤' if passed else '>'} {limit:.4g}"
            checks.append(_check("max_general_drift", None, drift, limit, passed, why))

    if policy.max_fairness_gap is not None:
        checks.append(_fairness_check(version, policy.max_fairness_gap))

    return {
        "version": version.label,
        "passed": all(c["passed"] for c in checks),
        "checks": checks,
        "backward_transfer": backward_transfer(chain),
        "general_drift": drift,
        "policy": policy.model_dump(),
    }


def _fairness_check(version: ScoredVersion, limit: float) -> dict[str, Any]:
    gap = (version.metrics.get("fairness") or {}).get("max_significant_gap")
    if not isinstance(gap, int | float):
        why = f"{version.label} has no fairness report; run `lorafleet fairness {version.label} --suite …`"
        return _check("max_fairness_gap", None, None, limit, False, why)
    passed = gap <= limit
    why = f"largest significant gap between groups {gap:.4g} {'≤' if passed else '>'} {limit:.4g}"
    return _check("max_fairness_gap", None, gap, limit, passed, why)


def summary(report: dict[str, Any]) -> str:
    """One line naming each failed check of a report (for error messages and logs)."""
    failed = [c for c in report["checks"] if not c["passed"]]
    if not failed:
        return f"{report['version']} passes its promotion gate"
    parts = [f"{c['check']}{' ' + c['suite'] if c['suite'] else ''}: {c['why']}" for c in failed]
    return f"{report['version']} fails its promotion gate: " + "; ".join(parts)
