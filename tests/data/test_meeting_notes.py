"""The meeting-notes task: the owner is an attendee named in the notes, the action is worded one of its
ways in the text, the deadline is the later of the dates written, and the wording varies."""

from __future__ import annotations

import datetime
import json
import random
import re
from typing import Any

import pytest

from lorafleet.data.meeting_notes import ACTIONS, INSTRUCTION, TASK
from tests.data.written_dates import dates_written_in


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    return TASK.rows(1000, random.Random(11), set())


def notes_text(row: dict[str, Any]) -> str:
    return str(row["prompt"]).removeprefix(f"{INSTRUCTION}\n\n")


def attendees(text: str) -> list[str]:
    line = next(
        line for line in text.splitlines() if re.match(r"(Attendees|Present|Participants|In the room):", line)
    )
    return line.split(": ", 1)[1].removesuffix(".").split(", ")


def test_the_owner_is_an_attendee_named_in_the_action_line(rows: list[dict[str, Any]]) -> None:
    by_first_name_only = 0
    for row in rows:
        text, record = notes_text(row), json.loads(row["completion"])
        people = attendees(text)
        assert 3 <= len(people) <= 5 and record["owner"] in people
        first = record["owner"].split()[0]
        assert [person.split()[0] for person in people].count(first) == 1  # "Maria" names one attendee
        wording = next(w for w in ACTIONS[record["action"]] if w in text)
        action_line = next(part for part in re.split(r"(?<=\.)\s|\n", text) if wording in part)
        assert first in action_line, text
        by_first_name_only += record["owner"] not in action_line

    assert 200 <= by_first_name_only <= 600


def test_the_action_is_worded_one_of_its_ways_and_no_other_action_is(rows: list[dict[str, Any]]) -> None:
    used = set()
    for row in rows:
        text, record = notes_text(row), json.loads(row["completion"])
        assert record["action"] in ACTIONS
        mentioned = [action for action, wordings in ACTIONS.items() if any(w in text for w in wordings)]
        assert mentioned == [record["action"]], text
        used |= {w for w in ACTIONS[record["action"]] if w in text}

    assert used == {wording for wordings in ACTIONS.values() for wording in wordings}


def test_the_deadline_is_the_date_after_the_meeting_or_null(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        text, record = notes_text(row), json.loads(row["completion"])
        dates = sorted(dates_written_in(text))
        if record["deadline"] is None:
            assert len(dates) == 1, text  # the meeting's own date
        else:
            met, deadline = dates
            assert datetime.date.fromisoformat(record["deadline"]) == deadline and met < deadline, text


def test_wording_varies(rows: list[dict[str, Any]]) -> None:
    skeletons = set()
    for row in rows[:200]:
        text = notes_text(row)
        for person in attendees(text):
            text = text.replace(person, "<name>").replace(person.split()[0], "<name>")
        for wording in (w for wordings in ACTIONS.values() for w in wordings):
            text = text.replace(wording, "<action>")
        skeletons.add(re.sub(r"\d+", "<n>", text))
    action_lines = {
        re.sub(r"[A-Z][a-z]+( [A-Z][a-z]+)?", "<name>", line.split(":")[0])
        for row in rows
        for line in re.split(r"(?<=\.)\s|\n", notes_text(row))
        if any(w in line for ws in ACTIONS.values() for w in ws)
    }

    assert len(skeletons) >= 190
    assert len(action_lines) >= 8
