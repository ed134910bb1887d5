"""Task metrics computed from generated text: how well generated answers match the references.

`json_fields` scores structured extraction: the share of predictions that parse as a JSON object
(valid JSON), the share of reference fields whose value the prediction gets right (per-field
accuracy, over all fields of all rows), and the share of rows with every field right (exact match).
Strings compare after trimming and case-folding, numbers by value (45.1 == 45.10), null only with
null. A prediction that is not a JSON object gets every field wrong.

`exact_match` scores short answers (a label, a number, a name): the share of rows whose answer is the
reference, compared after trimming and collapsing runs of whitespace; case counts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

TASK_METRICS = ("json_fields", "exact_match")


@dataclass(frozen=True)
class JsonFieldScores:
    """Scores of predicted JSON records against reference records."""

    rows: int
    valid_json: float
    field_accuracy: float
    exact_match: float
    per_field: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_record(text: str) -> dict[str, Any] | None:
    """The JSON object in `text` (a ```json fence around it is allowed), or None."""
    body = text.strip()
    if body.startswith("```"):
        body = body.removeprefix("```json").removeprefix("```").removesuffix("```").strip()
    try:
        value = json.loads(body)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def could_be_record(text: str) -> bool:
    """Whether `text` (an answer being generated) can still grow into something `parse_record` accepts."""
    body = text.lstrip()
    return not body or body.startswith(("{", "```")) or "```json".startswith(body)


def same_value(predicted: Any, expected: Any) -> bool:
    """Whether a predicted field value counts as right."""
    if expected is None or predicted is None:
        return predicted is None and expected is None
    if isinstance(expected, bool) or isinstance(predicted, bool):
        return predicted is expected
    if isinstance(expected, int | float):
        if isinstance(predicted, str):
            try:
                predicted = float(predicted.replace(",", "").lstrip("$"))
            except ValueError:
                return False
        return isinstance(predicted, int | float) and math.isclose(predicted, expected, abs_tol=1e-6)
    if isinstance(expected, str):
        return isinstance(predicted, str) and predicted.strip().casefold() == expected.strip().casefold()
    return bool(predicted == expected)


def json_field_scores(predictions: Sequence[str], references: Sequence[str]) -> JsonFieldScores:
    """Score generated JSON `predictions` against reference JSON strings, row by row."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    valid = exact = 0
    right: dict[str, int] = {}
    seen: dict[str, int] = {}
    for predicted_text, reference_text in zip(predictions, references, strict=True):
        reference = parse_record(reference_text)
        if reference is None:
            raise ValueError(f"reference is not a JSON object: {reference_text[:80]!r}")
        predicted = parse_record(predicted_text)
        valid += predicted is not None
        all_right = predicted is not None
        for key, expected in reference.items():
            seen[key] = seen.get(key, 0) + 1
            ok = predicted is not None and key in predicted and same_value(predicted[key], expected)
            right[key] = right.get(key, 0) + ok
            all_right = all_right and ok
        exact += all_right
    rows = len(references)
    total = sum(seen.values())
    return JsonFieldScores(
        rows=rows,
        valid_json=valid / rows if rows else 0.0,
        field_accuracy=sum(right.values()) / total if total else 0.0,
        exact_match=exact / rows if rows else 0.0,
        per_field={key: right[key] / seen[key] for key in seen},
    )


@dataclass(frozen=True)
class ExactMatchScores:
    """The share of generated answers equal to their reference answers."""

    rows: int
    exact_match: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def exact_match_scores(predictions: Sequence[str], references: Sequence[str]) -> ExactMatchScores:
    """Score `predictions` against `references` as whole answers (whitespace-normalised, case kept)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    right = sum(
        " ".join(predicted.split()) == " ".join(reference.split())
        for predicted, reference in zip(predictions, references, strict=True)
    )
    rows = len(references)
    return ExactMatchScores(rows=rows, exact_match=right / rows if rows else 0.0)
