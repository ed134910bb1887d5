"""`json_fields`: valid JSON, per-field accuracy and exact match of generated records, on hand-scored rows."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lorafleet.training import json_field_scores
from lorafleet.training.metrics import could_be_record, exact_match_scores, parse_record, same_value

TICKET = json.dumps(
    {"type": "refund", "customer": "Ana Kim", "order_id": "QX-48213", "amount": 45.1, "date": "2024-03-05"}
)
NO_ORDER = json.dumps(
    {"type": "account", "customer": "Leo Berg", "order_id": None, "amount": None, "date": "2023-12-31"}
)
# (prediction, reference, fields right out of 5), scored by hand.
ROWS = [
    # Case and spaces in strings do not matter; "45.10" is the number 45.1.
    (
        '{"type": "Refund ", "customer": "ana kim", "order_id": "QX-48213", "amount": "45.10", '
        '"date": "2024-03-05"}',
        TICKET,
        5,
    ),
    # A ```json fence is allowed; null matches null.
    (f"```json\n{NO_ORDER}\n```", NO_ORDER, 5),
    ("Sure! The ticket is about a refund.", TICKET, 0),  # not JSON: every field wrong
    # The string "null" is not null, and 0 is not null.
    (
        '{"type": "account", "customer": "Leo Berg", "order_id": "null", "amount": 0, "date": "2023-12-31"}',
        NO_ORDER,
        3,
    ),
    # The number 45.10 is right; the date is a day off.
    (
        '{"type": "refund", "customer": "Ana Kim", "order_id": "QX-48213", "amount": 45.10, '
        '"date": "2024-03-06"}',
        TICKET,
        4,
    ),
    ('["refund", "Ana Kim"]', TICKET, 0),  # JSON, but not an object
    # A missing key is wrong even where the reference is null; extra keys are ignored.
    (
        '{"type": "account", "customer": "Leo Berg", "amount": null, "date": "2023-12-31", "x": 1}',
        NO_ORDER,
        4,
    ),
]


def test_scores_of_hand_checked_rows() -> None:
    predictions = [row[0] for row in ROWS]
    references = [row[1] for row in ROWS]

    scores = json_field_scores(predictions, references)

    assert scores.rows == 7
    assert scores.valid_json == pytest.approx(5 / 7)
    assert scores.field_accuracy == pytest.approx(sum(row[2] for row in ROWS) / 35)
    assert scores.field_accuracy == pytest.approx(21 / 35)
    assert scores.exact_match == pytest.approx(2 / 7)
    assert scores.per_field == pytest.approx(
        {"type": 5 / 7, "customer": 5 / 7, "order_id": 3 / 7, "amount": 4 / 7, "date": 4 / 7}
    )
    assert scores.as_dict()["per_field"] == scores.per_field


@pytest.mark.parametrize(("prediction", "reference", "right"), ROWS)
def test_each_row_alone(prediction: str, reference: str, right: int) -> None:
    scores = json_field_scores([prediction], [reference])

    assert scores.field_accuracy == pytest.approx(right / 5)
    assert scores.exact_match == (1.0 if right == 5 else 0.0)


def test_all_right_scores_one() -> None:
    scores = json_field_scores([TICKET, NO_ORDER], [TICKET, NO_ORDER])

    assert (scores.valid_json, scores.field_accuracy, scores.exact_match) == (1.0, 1.0, 1.0)


def test_no_rows_scores_zero() -> None:
    scores = json_field_scores([], [])

    assert (scores.rows, scores.valid_json, scores.field_accuracy, scores.exact_match) == (0, 0.0, 0.0, 0.0)
    assert scores.per_field == {}


def test_a_reference_that_is_not_json_is_an_error() -> None:
    with pytest.raises(ValueError, match="reference is not a JSON object"):
        json_field_scores(["{}"], ["refund, Ana Kim"])


def test_predictions_and_references_must_pair_up() -> None:
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        json_field_scores(["{}", "{}"], [TICKET])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}', {"a": 1}),
        ('  \n{"a": 1}\n ', {"a": 1}),
        ('```json\n{"a": 1}\n```', {"a": 1}),
        ('```\n{"a": 1}\n```', {"a": 1}),
        ('```json\n{"a": 1}', {"a": 1}),  # an answer cut before its closing fence
        ('{"a": 1} and more', None),
        ("{'a': 1}", None),  # Python, not JSON
        ("[1, 2]", None),
        ("42", None),
        ("", None),
    ],
)
def test_parse_record(text: str, expected: dict[str, Any] | None) -> None:
    assert parse_record(text) == expected


@pytest.mark.parametrize(
    ("predicted", "expected", "right"),
    [
        (45.1, 45.1, True),
        (45.10, 45.1, True),
        ("45.10", 45.1, True),
        ("$1,234.50", 1234.5, True),
        (3, 3.0, True),
        (45.11, 45.1, False),
        ("forty-five", 45.1, False),
        ("45.1", "45.10", False),  # strings compare as text
        (45.1, "45.1", False),
        (None, None, True),
        ("null", None, False),
        (0, None, False),
        (None, "x", False),
        (True, True, True),
        (1, True, False),
        (True, 1, False),
        (" Refund\n", "refund", True),
        ("refunds", "refund", False),
        (["a", "b"], ["a", "b"], True),
        (["b", "a"], ["a", "b"], False),
    ],
)
def test_same_value(predicted: Any, expected: Any, right: bool) -> None:
    assert same_value(predicted, expected) is right


def test_exact_match_compares_whole_answers_with_whitespace_normalised_and_case_kept() -> None:
    predictions = ["Paris", "  two  words\n", "paris", "42"]
    references = ["Paris", "two words", "Paris", "42.0"]

    scores = exact_match_scores(predictions, references)

    assert scores.as_dict() == {"rows": 4, "exact_match": 0.5}
    with pytest.raises(ValueError, match="3 predictions for 4 references"):
        exact_match_scores(predictions[:3], references)


@pytest.mark.parametrize(
    ("text", "possible"),
    [
        ("", True),
        ("  {", True),
        ('{"a": 1}', True),
        ("`", True),
        ("```js", True),
        ("```json\n{", True),
        ("Here is", False),
        ("JSON:", False),
        ("1", False),
    ],
)
def test_could_be_record(text: str, possible: bool) -> None:
    assert could_be_record(text) is possible
