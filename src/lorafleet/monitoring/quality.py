"""Answer quality of a served alias: a rolling feedback score, and task validators that score an answer.

Feedback arrives one score at a time, each in [0, 1] (a rating, or a label: thumbs up ↦ 1, down ↦ 0). The
monitor keeps the last W of them and reports

    mean = 1/c · Σ (the last c = min(count, W) scores),

flagging the alias when c ≥ min_count and mean < threshold (too few scores give no verdict, so a single
early complaint does not roll a version back).

A task validator turns an answer into such a score without a human: `json_schema_validator(schema)` says
whether the answer text is a JSON document valid against a JSON Schema (say, an object with the required
fields of the right types), so `RollingScore.add(validator(answer))` tracks the share of valid answers.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from lorafleet.errors import ConfigError


class RollingScore:
    """The mean of the last `window` feedback scores, each in [0, 1] (True/False count as 1/0)."""

    def __init__(self, window: int) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ConfigError(f"window must be an integer ≥ 1 (got {window!r})", field="window")
        self.window = window
        self._scores: deque[float] = deque(maxlen=window)

    def add(self, score: float | bool) -> None:
        """Record one score; the oldest falls out once `window` are held."""
        value = float(score) if isinstance(score, int | float) else math.nan
        if not 0.0 <= value <= 1.0:  # NaN fails too
            raise ConfigError(f"a feedback score must lie in [0, 1] (got {score!r})", field="score")
        self._scores.append(value)

    @property
    def count(self) -> int:
        """Scores in the window: min(scores added, window)."""
        return len(self._scores)

    @property
    def mean(self) -> float | None:
        """The mean of the scores in the window, or None before the first."""
        return math.fsum(self._scores) / len(self._scores) if self._scores else None

    def below(self, threshold: float, min_count: int = 1) -> bool:
        """True when the window holds at least `min_count` scores and their mean is below `threshold`."""
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"threshold must lie in [0, 1] (got {threshold!r})", field="threshold")
        if isinstance(min_count, bool) or not isinstance(min_count, int) or not 1 <= min_count <= self.window:
            raise ConfigError(
                f"min_count must be an integer in [1, window={self.window}] (got {min_count!r}); "
                "a larger one could never be reached",
                field="min_count",
            )
        mean = self.mean
        return mean is not None and self.count >= min_count and mean < threshold


def json_schema_validator(schema: Mapping[str, Any]) -> Callable[[str], bool]:
    """A function of an answer's text: True when it parses as JSON valid against `schema` (a JSON Schema).

    The schema's draft is read from its `$schema` (the latest draft when absent) and the schema is checked
    here, so a bad schema fails when the monitor is set up, not on the first answer. Answers are taken as
    they are: text around the JSON (a Markdown fence, a preamble) makes an answer invalid.
    """
    from jsonschema import validators
    from jsonschema.exceptions import SchemaError

    cls = validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except SchemaError as err:
        where = "/".join(str(part) for part in err.path) or "(root)"
        message = f"schema is not a valid JSON Schema at {where}: {err.message}"
        raise ConfigError(message, field="schema") from err
    validator = cls(schema)

    def is_valid(answer: str) -> bool:
        try:
            document = json.loads(answer)
        except (TypeError, ValueError):  # json.JSONDecodeError is a ValueError
            return False
        return bool(validator.is_valid(document))

    return is_valid
