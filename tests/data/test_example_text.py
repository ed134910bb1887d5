"""Shared wording of the example tasks: every date style reads back as its date; ordinals; names."""

from __future__ import annotations

import datetime
import random

import pytest

from lorafleet.data.example_text import (
    DATE_STYLES,
    TICKET_DATE_STYLES,
    full_name,
    iso,
    ordinal,
    random_date,
    written_date,
)
from tests.data.written_dates import dates_written_in


@pytest.mark.parametrize("style", range(len(DATE_STYLES)))
def test_every_date_style_reads_back_as_its_date(style: int) -> None:
    for date in (datetime.date(2025, 3, 5), datetime.date(2024, 12, 23), datetime.date(2026, 5, 11)):
        written = DATE_STYLES[style](date)
        assert dates_written_in(f"It was on {written}. Then nothing.") == {date}, written


def test_written_date_draws_one_style_and_tickets_keep_their_four() -> None:
    date = datetime.date(2025, 3, 5)
    assert [style(date) for style in TICKET_DATE_STYLES] == [
        "2025-03-05",
        "March 5, 2025",
        "5 March 2025",
        "Mar 5 2025",
    ]
    rng = random.Random(0)
    written = {written_date(rng, date) for _ in range(200)}
    assert written == {style(date) for style in DATE_STYLES}
    assert iso(date) == "2025-03-05"


def test_ordinals_and_random_dates() -> None:
    assert [ordinal(day) for day in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 28)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "28th",
    ]  # fmt: skip
    rng = random.Random(1)
    dates = [random_date(rng, 2024, 2026) for _ in range(300)]
    assert {d.year for d in dates} == {2024, 2025, 2026} and max(d.day for d in dates) <= 28
    assert len(full_name(rng).split()) == 2
