"""The quality monitor: rolling feedback arithmetic and the JSON Schema answer validator."""

from __future__ import annotations

import math

import pytest

from lorafleet.errors import ConfigError
from lorafleet.monitoring.quality import RollingScore, json_schema_validator


def test_rolling_score_keeps_the_last_window() -> None:
    score = RollingScore(window=3)
    assert (score.count, score.mean) == (0, None)
    assert not score.below(0.5)  # no scores, no verdict
    for value in (1.0, 0.0, 1.0):
        score.add(value)
    assert score.count == 3 and score.mean == pytest.approx(2 / 3)
    score.add(0.0)  # the first 1.0 falls out: [0, 1, 0]
    assert score.count == 3 and score.mean == pytest.approx(1 / 3)
    score.add(True)  # labels count as 1 and 0: [1, 0, 1]
    score.add(False)  # [0, 1, 0]
    assert score.mean == pytest.approx(1 / 3)
    score.add(0.25)  # [1, 0, 0.25]
    assert score.mean == pytest.approx(1.25 / 3)


def test_below_waits_for_min_count_and_is_strict() -> None:
    score = RollingScore(window=5)
    score.add(0.0)
    score.add(0.0)
    assert score.below(0.5)  # min_count defaults to 1
    assert not score.below(0.5, min_count=3)
    score.add(0.0)
    assert score.below(0.5, min_count=3)
    for _ in range(5):
        score.add(0.5)  # the window is five 0.5s
    assert not score.below(0.5, min_count=5)  # equal is not below
    assert score.below(0.51, min_count=5)


@pytest.mark.parametrize("bad", [1.5, -0.1, math.nan, "0.5", None])
def test_scores_outside_the_unit_interval_are_refused(bad: object) -> None:
    score = RollingScore(window=2)
    with pytest.raises(ConfigError, match=r"feedback score must lie in \[0, 1\]") as caught:
        score.add(bad)
    assert caught.value.field == "score" and score.count == 0


def test_bad_settings_name_the_field() -> None:
    for window in (0, True, 2.5):
        with pytest.raises(ConfigError, match="window must be an integer") as caught:
            RollingScore(window=window)
        assert caught.value.field == "window"
    score = RollingScore(window=4)
    with pytest.raises(ConfigError, match=r"min_count must be an integer in \[1, window=4\]") as caught:
        score.below(0.5, min_count=5)
    assert caught.value.field == "min_count"
    with pytest.raises(ConfigError, match="threshold") as caught:
        score.below(1.5)
    assert caught.value.field == "threshold"


TICKET = {
    "type": "object",
    "properties": {
        "intent": {"type": "string", "enum": ["refund", "delivery", "other"]},
        "priority": {"type": "integer", "minimum": 1, "maximum": 3},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["intent", "priority"],
}


@pytest.mark.parametrize(
    ("answer", "valid"),
    [
        ('{"intent": "refund", "priority": 2}', True),
        ('  {"priority": 1, "intent": "other", "tags": ["late"], "note": "extra fields pass"}\n', True),
        ('{"intent": "refund"}', False),  # a required field missing
        ('{"intent": "refund", "priority": "2"}', False),  # wrong type
        ('{"intent": "refund", "priority": 2.5}', False),  # not an integer
        ('{"intent": "cancel", "priority": 2}', False),  # not in the enum
        ('{"intent": "refund", "priority": 2, "tags": [1]}', False),
        ('[{"intent": "refund", "priority": 2}]', False),  # an array, not the object
        ('```json\n{"intent": "refund", "priority": 2}\n```', False),  # a fence around it
        ('Sure! {"intent": "refund", "priority": 2}', False),
        ('{"intent": "refund", "priority": 2', False),  # cut off
        ("", False),
    ],
)
def test_json_schema_validator(answer: str, valid: bool) -> None:
    assert json_schema_validator(TICKET)(answer) is valid


def test_validator_scores_feed_the_rolling_score() -> None:
    validator, score = json_schema_validator(TICKET), RollingScore(window=4)
    for answer in ('{"intent": "other", "priority": 3}', "not json", '{"intent": "other"}', "{}"):
        score.add(validator(answer))
    assert score.mean == pytest.approx(0.25)


def test_the_schema_draft_is_honoured_and_a_bad_schema_is_refused() -> None:
    draft4 = {"$schema": "http://json-schema.org/draft-04/schema#", "maximum": 5, "exclusiveMaximum": True}
    validator = json_schema_validator(draft4)
    assert validator("4.5") and not validator("5")
    with pytest.raises(ConfigError, match=r"not a valid JSON Schema at properties/priority") as caught:
        json_schema_validator({"type": "object", "properties": {"priority": {"type": "integr"}}})
    assert caught.value.field == "schema"
