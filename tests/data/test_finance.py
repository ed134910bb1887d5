"""The bank-transaction task: the merchant named is one of the category's (never the category itself),
the amount is written in the text, and the risk flag is set exactly when a sign of fraud is."""

from __future__ import annotations

import json
import random
import re
from typing import Any

import pytest

from lorafleet.data.finance import CATEGORIES, INSTRUCTION, MERCHANTS, RISK_SIGNS, TASK

# Each risk sign as a regex: its placeholders match anything.
SIGNS = [re.compile(re.sub(r"\\\{[a-z]+(?::\w+)?\\\}", ".+?", re.escape(sign))) for sign in RISK_SIGNS]


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    return TASK.rows(1000, random.Random(11), set())


def message_text(row: dict[str, Any]) -> str:
    return str(row["prompt"]).removeprefix(f"{INSTRUCTION}\n\n")


def test_the_merchant_named_belongs_to_the_category(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        text, record = message_text(row), json.loads(row["completion"])
        named = {c for c in CATEGORIES for merchant in MERCHANTS[c][0] if merchant in text}
        assert named == {record["category"]}, text
        assert not re.search(rf"\b{record['category']}\b", text, re.IGNORECASE), text

    assert {json.loads(row["completion"])["category"] for row in rows} == set(CATEGORIES)


def test_the_amount_is_written_in_the_text(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        text, record = message_text(row), json.loads(row["completion"])
        amount = record["amount"]
        assert isinstance(amount, int | float) and amount > 0
        if isinstance(amount, float):
            assert not amount.is_integer()  # whole amounts are ints: 250, not 250.0
        cents = f"{amount:.2f}"
        numbers = set(re.findall(r"\d+(?:\.\d+)?", text.replace(",", "")))
        assert {cents, cents.rstrip("0").rstrip(".")} & numbers, text


def test_the_risk_flag_is_set_exactly_when_a_sign_of_fraud_is_given(rows: list[dict[str, Any]]) -> None:
    flagged = 0
    for row in rows:
        text, record = message_text(row), json.loads(row["completion"])
        assert record["risk_flag"] is any(sign.search(text) for sign in SIGNS), text
        flagged += record["risk_flag"]

    assert 250 <= flagged <= 450
