"""The clinical-notes task: every field of the record is stated in its note (dates read back from the
text), every note carries all five kinds of PHI, and other PHI sources give notes built from them."""

from __future__ import annotations

import datetime
import json
import random
import re
from typing import Any

import pytest

from lorafleet.data.healthcare import (
    DIAGNOSES,
    INSTRUCTION,
    MRN_FORMATS,
    PHONE_FORMATS,
    STREETS,
    TASK,
    PhiSources,
    healthcare_task,
)
from tests.data.written_dates import dates_written_in


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    return TASK.rows(1000, random.Random(11), set())


def note_text(row: dict[str, Any]) -> str:
    return str(row["prompt"]).removeprefix(f"{INSTRUCTION}\n\n")


def format_pattern(templates: tuple[str, ...]) -> re.Pattern[str]:
    """A regex that matches any identifier written from `templates` ("#" a digit, "@" a capital)."""
    alternatives = (
        re.escape(t).replace("\\#", "#").replace("#", r"\d").replace("@", "[A-Z]") for t in templates
    )
    return re.compile("|".join(f"(?:{a})" for a in alternatives))


def test_name_record_number_and_medication_are_copied_from_the_note(rows: list[dict[str, Any]]) -> None:
    mrn = format_pattern(MRN_FORMATS)
    for row in rows:
        text, record = note_text(row), json.loads(row["completion"])
        assert record["patient"] in text and record["mrn"] in text and record["medication"] in text
        assert mrn.fullmatch(record["mrn"]), record["mrn"]
        assert record["medication"] in DIAGNOSES[record["diagnosis"]][1]


def test_the_diagnosis_is_written_one_of_its_ways(rows: list[dict[str, Any]]) -> None:
    renamed = 0
    for row in rows:
        text, record = note_text(row), json.loads(row["completion"])
        wordings = DIAGNOSES[record["diagnosis"]][0]
        assert any(re.search(rf"\b{re.escape(w)}\b", text) for w in wordings), text
        renamed += not re.search(rf"\b{re.escape(record['diagnosis'])}\b", text)

    assert renamed > 200  # often not under its normalised name, so the model must map it


def test_birth_visit_and_follow_up_dates_are_written_in_the_note(rows: list[dict[str, Any]]) -> None:
    without_follow_up = 0
    for row in rows:
        text, record = note_text(row), json.loads(row["completion"])
        dates = sorted(dates_written_in(text))
        dob = datetime.date.fromisoformat(record["dob"])
        assert dates[0] == dob, text  # born 1935–2005; visits are 2024 and later
        if record["follow_up"] is None:
            assert len(dates) == 2, text  # the birth and the visit only
            without_follow_up += 1
        else:
            visit, follow_up = dates[1:]  # the follow-up comes after the visit
            assert follow_up == datetime.date.fromisoformat(record["follow_up"]) > visit, text

    assert 100 <= without_follow_up <= 300


def test_every_note_holds_a_phone_and_an_address(rows: list[dict[str, Any]]) -> None:
    phone = format_pattern(PHONE_FORMATS)
    street = re.compile(rf"\b\d{{1,4}} (?:{'|'.join(STREETS)}), [A-Z][a-z]+, [A-Z]{{2}} \d{{5}}\b")
    for row in rows:
        text = note_text(row)
        assert phone.search(text) and street.search(text), text


def test_other_phi_sources_give_notes_built_from_them() -> None:
    sources = PhiSources(
        first_names=("Zebulon",),
        last_names=("Quartermaine",),
        mrn_formats=("PT/####-@",),
        phone_formats=("0### ######",),
        streets=("Rue Verte",),
        cities=(("Lyon", "FR"),),
    )
    text, record = healthcare_task(sources).generate(random.Random(0))

    assert record["patient"] == "Zebulon Quartermaine" and record["patient"] in text
    assert re.fullmatch(r"PT/\d{4}-[A-Z]", record["mrn"]) and record["mrn"] in text
    assert re.search(r"\b0\d{3} \d{6}\b", text) and "Rue Verte, Lyon, FR" in text
