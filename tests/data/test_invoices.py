"""The invoice task: each record is stated in its invoice (vendor, total, currency, due date read back
from the text, relative terms included), and the wording varies."""

from __future__ import annotations

import datetime
import json
import random
import re
from typing import Any

import pytest

from lorafleet.data.invoices import CURRENCIES, INSTRUCTION, TASK
from lorafleet.training.metrics import json_field_scores
from tests.data.written_dates import dates_written_in

_MARKERS = {
    "USD": ("$", "USD", "US dollars"),
    "EUR": ("€", "EUR", "euros"),
    "GBP": ("£", "GBP", "pounds sterling"),
    "JPY": ("¥", "JPY", "yen"),
    "CHF": ("CHF", "Fr. ", "Swiss francs"),
    "CAD": ("C$", "CA$", "CAD", "Canadian dollars"),
}
_RELATIVE = re.compile(r"net (\d+)|(\d+) days")
_MONTH_END = re.compile(r"end of the (?:invoice )?month")


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    return TASK.rows(1000, random.Random(11), set())


def invoice_text(row: dict[str, Any]) -> str:
    return str(row["prompt"]).removeprefix(f"{INSTRUCTION}\n\n")


def test_vendor_total_and_currency_are_stated(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        text, record = invoice_text(row), json.loads(row["completion"])
        assert record["vendor"] in text
        total = record["total"]
        assert isinstance(total, int | float) and total > 0
        if isinstance(total, float):
            assert not total.is_integer()  # whole totals are written as ints: 250, not 250.0
        cents = f"{total:.2f}"
        numbers = set(re.findall(r"\d+(?:\.\d+)?", text.replace(",", "")))
        assert {cents, cents.rstrip("0").rstrip("."), str(total)} & numbers, text
        if record["currency"] is None:
            assert not any(marker in text for markers in _MARKERS.values() for marker in markers), text
        else:
            assert record["currency"] in CURRENCIES
            assert any(marker in text for marker in _MARKERS[record["currency"]]), text


def test_due_date_is_written_or_follows_from_the_issue_date(rows: list[dict[str, Any]]) -> None:
    kinds = {"written": 0, "relative": 0, "month end": 0, "none": 0}
    for row in rows:
        text, record = invoice_text(row), json.loads(row["completion"])
        dates = dates_written_in(text)
        relative, month_end = _RELATIVE.search(text), _MONTH_END.search(text)
        if record["due_date"] is None:
            assert len(dates) == 1 and not relative and not month_end, text
            kinds["none"] += 1
            continue
        due = datetime.date.fromisoformat(record["due_date"])
        if relative or month_end:
            (issued,) = dates
            if relative:
                days = int(relative.group(1) or relative.group(2))
                assert due == issued + datetime.timedelta(days=days), text
                kinds["relative"] += 1
            else:
                assert due.month == issued.month and (due + datetime.timedelta(days=1)).day == 1, text
                kinds["month end"] += 1
        else:
            issued, written_due = sorted(dates)  # the due date comes after the issue date
            assert due == written_due, text
            kinds["written"] += 1

    assert min(kinds.values()) >= 30, kinds


def test_every_currency_and_amount_style_occurs(rows: list[dict[str, Any]]) -> None:
    records = [json.loads(row["completion"]) for row in rows]

    assert {r["currency"] for r in records} == {*CURRENCIES, None}
    assert any(isinstance(r["total"], int) for r in records) and any(r["total"] > 10_000 for r in records)
    texts = "\n".join(invoice_text(row) for row in rows)
    for markers in _MARKERS.values():
        assert all(marker in texts for marker in markers), markers


def test_wording_varies(rows: list[dict[str, Any]]) -> None:
    skeletons = set()
    for row in rows[:200]:
        record = json.loads(row["completion"])
        text = invoice_text(row).replace(record["vendor"], "<vendor>")
        skeletons.add(re.sub(r"\d+", "<n>", text))
    first_lines = {invoice_text(row).splitlines()[0].split(" ")[0] for row in rows}

    assert len(skeletons) == 200
    assert len(first_lines) >= 4
    assert sum("\n" in invoice_text(row) and ": " in invoice_text(row) for row in rows) > 300


def test_json_fields_scores_invoice_answers_by_their_own_keys() -> None:
    reference = '{"vendor":"Atlas Freight Ltd","total":1234.5,"currency":"EUR","due_date":"2025-04-30"}'
    right = '{"vendor": "atlas freight ltd", "total": 1234.50, "currency": "EUR", "due_date": "2025-04-30"}'
    partly = '{"vendor": "Atlas Freight Ltd", "total": "1,234.50", "currency": "USD", "due_date": null}'

    scores = json_field_scores([right, partly, "Total: 1234.50 EUR"], [reference] * 3)

    assert (scores.rows, scores.valid_json, scores.exact_match) == (3, 2 / 3, 1 / 3)
    assert scores.field_accuracy == pytest.approx((4 + 2 + 0) / 12)
    assert scores.per_field == pytest.approx(
        {"vendor": 2 / 3, "total": 2 / 3, "currency": 1 / 3, "due_date": 1 / 3}
    )
