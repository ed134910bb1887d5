"""The contract-clause task: both parties are named in the clause, the one bound comes first and is the
subject of "shall" (by name or by the role the preamble gives it), the obligation is worded one of its
ways, and the deadline is the later of the dates written."""

from __future__ import annotations

import datetime
import json
import random
from typing import Any

import pytest

from lorafleet.data.legal import CLAUSE_TYPES, INSTRUCTION, OBLIGATIONS, ROLES, TASK
from tests.data.written_dates import dates_written_in

ROLE_NAMES = {role for pair in ROLES for role in pair}


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    return TASK.rows(1000, random.Random(11), set())


def clause_text(row: dict[str, Any]) -> str:
    return str(row["prompt"]).removeprefix(f"{INSTRUCTION}\n\n")


def role_of(party: str, text: str) -> str:
    """The role the preamble gives `party`, in any of its three phrasings."""
    (role,) = [
        role
        for role in ROLE_NAMES
        if any(f in text for f in (f'{party} (the "{role}")', f'{party} ("{role}")', f"{party}, as {role}"))
    ]
    return role


def test_the_bound_party_comes_first_and_is_the_subject_of_shall(rows: list[dict[str, Any]]) -> None:
    by_role = 0
    for row in rows:
        text, record = clause_text(row), json.loads(row["completion"])
        bound, other = record["parties"]
        assert bound != other and bound in text and other in text
        role = role_of(bound, text)
        subjects = (f"{bound} shall", f"{bound} (the {role}) shall", f"The {role} shall")
        assert any(subject in text for subject in subjects), text
        by_role += f"The {role} shall" in text

    assert 200 <= by_role <= 500


def test_the_obligation_is_worded_one_of_its_ways(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        text, record = clause_text(row), json.loads(row["completion"])
        assert record["clause_type"] in CLAUSE_TYPES
        wordings = OBLIGATIONS[record["clause_type"]][record["obligation"]]
        others = (record["parties"][1], f"the {role_of(record['parties'][1], text)}")
        assert any(w.format(other=o) in text for w in wordings for o in others), text

    assert {json.loads(row["completion"])["clause_type"] for row in rows} == set(CLAUSE_TYPES)


def test_the_deadline_is_the_date_after_the_effective_date(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        text, record = clause_text(row), json.loads(row["completion"])
        dates = sorted(dates_written_in(text))
        if record["deadline"] is None:
            assert len(dates) == 1, text  # the effective date only
        else:
            effective, deadline = dates
            assert deadline == datetime.date.fromisoformat(record["deadline"]) > effective, text
