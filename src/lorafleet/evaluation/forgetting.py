"""Forgetting along a lineage: the forgetting matrix, backward transfer (BWT) and general drift.

A version's scores live in its `metrics["evaluation"]` (written by the worker):

    {"suites": {suite_id: {"adapter": name, "metric": m, "score": s, "details": {...}}},
     "general": {"perplexity": p, "base_perplexity": p₀, "drift": p / p₀ − 1}}

Every score is "higher is better" in [0, 1] (field accuracy, exact match, 1/perplexity).

The lineage chain of a version v is v₁ … vₙ = v, oldest first (each the parent of the next).
For a suite s, the *reference version* is the oldest vᵢ of the chain with a score on s (the version
that learned the task) and its *reference score* is r(s) = score(vᵢ, s). Then

    forgetting(v, s) = r(s) − score(v, s)              (positive: v forgot; a fraction of 1)
    BWT(v) = mean over suites s whose reference is a strict ancestor of v and that v was scored on
             of (score(v, s) − r(s)) = −mean forgetting             (negative: forgetting; None if no s)
    drift(v) = evaluation.general.drift                 (perplexity of the base model's own answers to
                                                         general prompts, relative to the base; > 0 worse)

The forgetting matrix is score[vᵢ][s] for every version of the chain and every suite any of them was
scored on (None where a version was not scored on a suite).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

# How a suite is scored, each as a "higher is better" fraction: field accuracy, exact match, 1/perplexity.
SuiteMetric = Literal["json_fields", "exact_match", "perplexity"]
SUITE_METRICS: tuple[str, ...] = get_args(SuiteMetric)


@dataclass(frozen=True)
class ScoredVersion:
    """One version of a lineage chain: a label (`tickets@2`) and its `metrics` dict."""

    label: str
    metrics: dict[str, Any]


def suite_scores(metrics: dict[str, Any]) -> dict[str, float]:
    """Suite id → score of one version's metrics (suites without a numeric score are left out)."""
    suites = (metrics.get("evaluation") or {}).get("suites") or {}
    return {
        suite: float(entry["score"])
        for suite, entry in suites.items()
        if isinstance(entry, dict) and isinstance(entry.get("score"), int | float)
    }


def general_drift(metrics: dict[str, Any]) -> float | None:
    """`evaluation.general.drift` of one version's metrics, or None when it was not measured."""
    drift = ((metrics.get("evaluation") or {}).get("general") or {}).get("drift")
    return float(drift) if isinstance(drift, int | float) else None


def references(chain: Sequence[ScoredVersion]) -> dict[str, tuple[int, float]]:
    """Suite → (index in `chain` of its reference version, reference score): the oldest scored version."""
    found: dict[str, tuple[int, float]] = {}
    for index, version in enumerate(chain):
        for suite, score in suite_scores(version.metrics).items():
            found.setdefault(suite, (index, score))
    return found


def forgetting(chain: Sequence[ScoredVersion]) -> dict[str, float | None]:
    """Suite → forgetting of the newest version of `chain`, for every suite learned by a strict ancestor.

    None where the newest version was not scored on that suite (its forgetting is unknown).
    """
    if not chain:
        return {}
    newest = suite_scores(chain[-1].metrics)
    last = len(chain) - 1
    return {
        suite: (reference - newest[suite]) if suite in newest else None
        for suite, (index, reference) in references(chain).items()
        if index < last
    }


def backward_transfer(chain: Sequence[ScoredVersion]) -> float | None:
    """BWT of the newest version of `chain`: the mean of score − reference over the ancestors' suites."""
    known = [value for value in forgetting(chain).values() if value is not None]
    return -sum(known) / len(known) if known else None


def forgetting_matrix(chain: Sequence[ScoredVersion]) -> dict[str, Any]:
    """`{"versions": [labels], "suites": [ids], "scores": [[score or None per suite] per version]}`.

    Suites are ordered by the version that first scored them, then by id.
    """
    order = sorted(references(chain).items(), key=lambda item: (item[1][0], item[0]))
    suites = [suite for suite, _ in order]
    rows = []
    for version in chain:
        scores = suite_scores(version.metrics)
        rows.append([scores.get(suite) for suite in suites])
    return {"versions": [v.label for v in chain], "suites": suites, "scores": rows}


def lineage_evaluation(chain: Sequence[ScoredVersion]) -> dict[str, Any]:
    """Everything above for the newest version of `chain`: matrix, forgetting per suite, BWT, drift."""
    return {
        "matrix": forgetting_matrix(chain),
        "forgetting": forgetting(chain),
        "backward_transfer": backward_transfer(chain),
        "general_drift": general_drift(chain[-1].metrics) if chain else None,
    }
