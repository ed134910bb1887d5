"""A model card per adapter version: what a reviewer reads before the version ships, as Markdown.

    base and version     the base model, digest, size, aliases, when it was made
    data lineage         the training file (rows, tokens, digest, its scrubbing report), job, parent chain
    training             the recipe fields the job set, steps, tokens, final loss
    evaluation           each suite's score, forgetting and backward transfer along the lineage, drift
    fairness             per-group scores and the significant gaps of `lorafleet fairness`
    gate                 every check of the adapter's promotion gate, pass or fail and why
    exports              each edge export: format, variants, size, status

Only facts the registry holds are written; a section with nothing to show says so ("not measured"), so
a missing check is visible rather than silently absent. No torch import: the API renders it.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CardFacts:
    """Everything a card shows, as the API's own answers (plain dicts)."""

    version: dict[str, Any]  # `VersionPublic`
    lineage: dict[str, Any] | None  # `lineage_evaluation`: forgetting matrix, BWT, drift
    gate: dict[str, Any]  # the gate report (`policy` None: no gate)
    dataset: dict[str, Any] | None = None  # the training file's record (and its scrubbing report)
    job: dict[str, Any] | None = None  # the job's recipe and status
    exports: Sequence[dict[str, Any]] = field(default_factory=list)


def render_card(facts: CardFacts) -> str:
    """The Markdown model card of one version."""
    v = facts.version
    sections = [
        f"# Model card: {v['model']}",
        _table(
            [
                ("base model", f"`{v['base_model']}`"),
                ("created", _when(v["created_at"])),
                ("aliases", ", ".join(v["aliases"]) or "none"),
                ("adapter digest (SHA-256)", f"`{v['sha256']}`"),
                ("adapter size", f"{v['bytes'] / 1e6:.2f} MB"),
            ]
        ),
        "## Data lineage",
        *_lineage(facts),
        "## Training",
        *_training(facts),
        "## Evaluation",
        *_evaluation(facts),
        "## Fairness",
        *_fairness(v["metrics"].get("fairness")),
        "## Promotion gate",
        *_gate(facts.gate),
        "## Exports",
        *_exports(facts.exports),
    ]
    return "\n\n".join(sections) + "\n"


def _lineage(facts: CardFacts) -> list[str]:
    v, dataset = facts.version, facts.dataset
    rows = [("training file", f"`{v['training_file']}`" if v["training_file"] else "not recorded")]
    if dataset is not None:
        rows += [
            ("file name", dataset.get("filename", "?")),
            ("rows, tokens", f"{dataset.get('rows', '?')}, {dataset.get('tokens', '?')}"),
            ("file digest (SHA-256)", f"`{dataset.get('sha256', '?')}`"),
        ]
    chain = (facts.lineage or {}).get("matrix", {}).get("versions") or [v["model"]]
    rows += [
        ("job", f"`{v['job_id']}`" if v["job_id"] else "none (registered directly)"),
        ("lineage (oldest first)", " → ".join(chain)),
    ]
    parts = [_table(rows)]
    scrub = (dataset or {}).get("scrub")
    if scrub:
        parts += ["### Scrubbing of the training file", *_scrub(scrub)]
    else:
        parts.append("Scrubbing: no scrubbing report is stored with the training file.")
    return parts


def _scrub(report: dict[str, Any]) -> list[str]:
    """The scrubbing report's summary (`privacy.audit`): kinds found, recognizers, skipped-field findings."""
    found = report.get("found") or {}
    lines = [f"{report.get('rows', '?')} rows scrubbed; audit chain head `{report.get('head', '?')}`."]
    if found:
        lines.append(_table(sorted((str(k), str(n)) for k, n in found.items()), ("kind", "found")))
    unscrubbed = report.get("unscrubbed") or {}
    if unscrubbed:
        listed = ", ".join(f"{where} ×{n}" for where, n in sorted(unscrubbed.items()))
        lines.append(f"**PHI left in fields told to be skipped**: {listed}.")
    return lines


def _training(facts: CardFacts) -> list[str]:
    metrics = facts.version["metrics"]
    rows = [
        (key, _number(metrics[key]))
        for key in ("steps", "tokens", "final_train_loss", "train_seconds")
        if key in metrics
    ]
    parts = [_table(rows) if rows else "No training figures recorded."]
    recipe = (facts.job or {}).get("recipe")
    if recipe:
        parts.append(
            "Recipe fields the job set:\n\n```json\n" + json.dumps(recipe, indent=2, sort_keys=True) + "\n```"
        )
    return parts


def _evaluation(facts: CardFacts) -> list[str]:
    metrics = facts.version["metrics"]
    suites = (metrics.get("evaluation") or {}).get("suites") or {}
    lineage = facts.lineage or {}
    forgot = lineage.get("forgetting") or {}
    if not suites:
        return ["No eval suite was scored (not measured)."]
    rows = [
        (
            suite,
            entry.get("adapter", "?"),
            entry.get("metric", "?"),
            _number(entry.get("score")),
            _number(forgot.get(suite)),
        )
        for suite, entry in sorted(suites.items())
    ]
    parts = [_table(rows, ("suite", "adapter", "metric", "score", "forgetting"))]
    parts.append(
        f"Backward transfer: {_number(lineage.get('backward_transfer'))}; "
        f"general drift (perplexity ratio − 1): {_number(lineage.get('general_drift'))}."
    )
    return parts


def _fairness(report: dict[str, Any] | None) -> list[str]:
    if not report:
        return ["No fairness report (not measured): `lorafleet fairness NAME@V --suite FILE`."]
    groups = [
        (g, _number(e["mean"]), f"[{e['low']:.3f}, {e['high']:.3f}]") for g, e in report["groups"].items()
    ]
    significant = [p for p in report["pairs"] if p["significant"]]
    lines = [
        f"{report['rows']} rows of `{report.get('suite', 'the suite')}` rewritten per group "
        f"(two people each), metric {report['metric']}, {report['interval']:.0%} bootstrap intervals.",
        _table(groups, ("group", "score", "interval")),
        f"Largest gap {report['max_gap']:.3f}; same-group noise {report['baseline_gap']:.3f}; "
        f"largest significant gap **{report['max_significant_gap']:.3f}**.",
    ]
    if significant:
        rows = [
            (
                f"{p['a']} − {p['b']}",
                _number(p["gap"]["mean"]),
                f"[{p['gap']['low']:.3f}, {p['gap']['high']:.3f}]",
            )
            for p in significant
        ]
        lines.append(_table(rows, ("significant pair", "gap", "interval")))
    else:
        lines.append("No gap between groups is significant.")
    return lines


def _gate(report: dict[str, Any]) -> list[str]:
    if report.get("policy") is None:
        return ["The adapter has no promotion gate: every promotion is accepted."]
    verdict = "**passes**" if report["passed"] else "**fails**"
    rows = [
        (
            c["check"],
            c["suite"] or "",
            _number(c["value"]),
            _number(c["limit"]),
            "pass" if c["passed"] else "FAIL",
            c["why"],
        )
        for c in report["checks"]
    ]
    return [
        f"{report['version']} {verdict} its gate.",
        _table(rows, ("check", "suite", "value", "limit", "", "why")),
    ]


def _exports(exports: Iterable[dict[str, Any]]) -> list[str]:
    rows = [
        (
            e["format"],
            e.get("quant") or "",
            e.get("target") or "",
            e["status"],
            f"{e.get('bytes', 0) / 1e6:.1f} MB",
        )
        for e in exports
    ]
    return [_table(rows, ("format", "quant", "target", "status", "size"))] if rows else ["No exports."]


def _table(rows: Sequence[Sequence[str]], header: Sequence[str] = ("", "")) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: str) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _number(value: Any) -> str:
    if value is None:
        return "not measured"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _when(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
