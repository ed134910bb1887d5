"""The drifted support tickets: a type and a date style the training tickets never have, records as valid
as theirs, and the same rows for the same seed."""

from __future__ import annotations

import datetime
import json
import random
import re
from pathlib import Path
from typing import Any

import pytest

from lorafleet.data.support_tickets import (
    DRIFTED_DATE_STYLES,
    DRIFTED_TASK,
    DRIFTED_TYPES,
    FIELDS,
    INSTRUCTION,
    TASK,
    TICKET_TYPES,
)
from tests.data.written_dates import dates_written_in


@pytest.fixture(scope="module")
def drifted() -> list[dict[str, Any]]:
    return DRIFTED_TASK.rows(300, random.Random(2), set())


@pytest.fixture(scope="module")
def trained_on() -> list[dict[str, Any]]:
    return TASK.rows(300, random.Random(2), set())


def ticket_text(row: dict[str, Any]) -> str:
    return str(row["prompt"]).removeprefix(f"{INSTRUCTION}\n\n")


def written_drifted(row: dict[str, Any]) -> bool:
    """Whether the ticket writes its record's date in a drifted style."""
    date = datetime.date.fromisoformat(json.loads(row["completion"])["date"])
    return any(style(date) in ticket_text(row) for style in DRIFTED_DATE_STYLES)


def test_every_drifted_ticket_is_of_a_type_never_trained_on(drifted: list[dict[str, Any]]) -> None:
    assert set(DRIFTED_TYPES).isdisjoint(TICKET_TYPES)
    assert {json.loads(row["completion"])["type"] for row in drifted} == set(DRIFTED_TYPES)


def test_every_drifted_date_is_in_a_style_the_training_tickets_never_use(
    drifted: list[dict[str, Any]], trained_on: list[dict[str, Any]]
) -> None:
    assert all(written_drifted(row) for row in drifted)
    assert not any(written_drifted(row) for row in trained_on)
    assert not any(re.search(r"\d{2}\.\d{2}\.\d{4}", ticket_text(row)) for row in trained_on)


def test_every_drifted_record_is_valid_and_stated_in_its_ticket(drifted: list[dict[str, Any]]) -> None:
    for row in drifted:
        ticket, record = ticket_text(row), json.loads(row["completion"])
        assert row["prompt"].startswith(f"{INSTRUCTION}\n\n")
        assert list(record) == list(FIELDS)
        assert record["customer"] in ticket and len(record["customer"].split()) == 2
        assert record["order_id"] is None or (
            re.fullmatch(r"[A-Z]{2}-\d{5}", record["order_id"]) and record["order_id"] in ticket
        )
        assert record["amount"] is None or f"{record['amount']:.2f}" in ticket.replace(",", "")
        assert dates_written_in(ticket) == {datetime.date.fromisoformat(record["date"])}, ticket


def test_same_seed_same_drifted_files_and_another_seed_other_files(tmp_path: Path) -> None:
    first = DRIFTED_TASK.write(tmp_path / "a", train_rows=40, test_rows=10, seed=3)
    again = DRIFTED_TASK.write(tmp_path / "b", train_rows=40, test_rows=10, seed=3)
    other = DRIFTED_TASK.write(tmp_path / "c", train_rows=40, test_rows=10, seed=4)

    for mine, same, different in zip(first, again, other, strict=True):
        assert mine.read_bytes() == same.read_bytes()
        assert mine.read_bytes() != different.read_bytes()


def test_no_drifted_ticket_names_its_type(drifted: list[dict[str, Any]]) -> None:
    """The type is described, never named: an adapter that has not learned it cannot copy it from the text."""
    assert not any(kind in ticket_text(row).lower() for row in drifted for kind in DRIFTED_TYPES)
