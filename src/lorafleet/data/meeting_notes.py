"""A bundled example task: meeting notes → the one action item, as {owner, action, deadline}.

Each row is `{"prompt": <instruction + notes>, "completion": <JSON>}` with the fields

    owner     the attendee the action is assigned to, as the attendee list names them ("Maria Lopez"),
              even where the action line says only "Maria"
    action    the action as its short normalised phrase from ACTIONS ("send the budget report"),
              though the notes word it one of several ways ("circulate the budget report")
    deadline  when it is due, YYYY-MM-DD (written in one of several styles), or null when none is set

Notes name three to five attendees and the meeting date (a distractor date), record what was
discussed and decided, with other attendees doing things that are not the action, and state the
action item in one of many phrasings, in prose or as a bulleted list. Generated from a fixed
seed: no download, the same files every time.
"""

from __future__ import annotations

import datetime
import random
from pathlib import Path
from typing import Any

from lorafleet.data.example_text import FIRST_NAMES, LAST_NAMES, iso, random_date, written_date
from lorafleet.data.task_generation import ExampleTask

FIELDS = ("owner", "action", "deadline")
INSTRUCTION = "Extract the action item from these meeting notes as JSON (owner, action, deadline)."

# Each action: its normalised phrase, and the ways notes word it (each reads after "to ...").
ACTIONS: dict[str, tuple[str, ...]] = {
    "send the budget report": (
        "send the budget report",
        "circulate the budget report",
        "email the budget report",
    ),
    "book the venue": ("book the venue", "reserve the venue", "sort out the venue booking"),
    "update the roadmap": ("update the roadmap", "revise the roadmap", "bring the roadmap up to date"),
    "fix the login bug": ("fix the login bug", "patch the login bug", "resolve the login issue"),
    "draft the press release": ("draft the press release", "write a first draft of the press release"),
    "hire a contractor": ("hire a contractor", "find and hire a contractor", "bring in a contractor"),
    "review the contract": ("review the contract", "go through the contract", "check the contract terms"),
    "order new laptops": ("order new laptops", "place the order for new laptops", "buy the new laptops"),
    "schedule the customer demo": (
        "schedule the customer demo",
        "set up the customer demo",
        "arrange the demo",
    ),
    "prepare the quarterly slides": ("prepare the quarterly slides", "put together the quarterly deck"),
    "migrate the database": ("migrate the database", "move the database to the new server"),
    "collect survey feedback": ("collect survey feedback", "gather the survey responses"),
    "renew the software licences": ("renew the software licences", "get the software licences renewed"),
    "plan the team offsite": ("plan the team offsite", "organise the team offsite"),
    "write the onboarding guide": ("write the onboarding guide", "document the onboarding steps"),
    "contact the supplier": ("contact the supplier", "call the supplier", "get in touch with the supplier"),
}

_TITLES = (
    "Weekly sync", "Project kickoff", "Marketing stand-up", "Engineering review", "Budget meeting",
    "Product planning", "Ops check-in", "Sales pipeline review", "Design critique", "Board prep",
)  # fmt: skip
_HEADERS = (
    "{title} - {date}",
    "Meeting notes: {title}, {date}",
    "{title} ({date})",
    "Notes from the {title}, {date}",
)
_ATTENDEES = ("Attendees: {names}.", "Present: {names}.", "Participants: {names}", "In the room: {names}.")
_TOPICS = (
    "the Q3 numbers", "the hiring plan", "customer churn", "the launch timeline", "the office move",
    "the new pricing", "last month's incidents", "the vendor shortlist", "the team survey",
)  # fmt: skip
_DISCUSSION = (
    "{person} presented {topic}.",
    "{person} gave an update on {topic}.",
    "We discussed {topic} at length.",
    "{person} raised concerns about {topic}.",
    "The group agreed to revisit {topic} next time.",
    "{person} walked us through {topic}.",
    "No decision yet on {topic}.",
)
# {owner} is the name as the line gives it, {task} the action as worded, {by} " by <date>" or "".
_ACTION_LINES = (
    "Action: {owner} to {task}{by}.",
    "{owner} will {task}{by}.",
    "{owner} agreed to {task}{by}.",
    "Action item - {owner}: {task}{by}.",
    "Next step: {owner} is to {task}{by}.",
    "It was decided that {owner} should {task}{by}.",
    "TODO ({owner}): {task}{by}.",
    "{owner} volunteered to {task}{by}.",
)
_BY = (" by {date}", " before {date}", ", due {date}", " no later than {date}", " (deadline {date})")
_NO_DEADLINE = ("", "", " (no deadline set)", ", no fixed date")
_CLOSINGS = ("Next meeting in two weeks.", "Meeting adjourned.", "Thanks all.", "", "")


def make_meeting_notes(rng: random.Random) -> tuple[str, dict[str, Any]]:
    """One set of meeting notes and the record of its action item."""
    firsts = rng.sample(FIRST_NAMES, rng.randint(3, 5))  # distinct first names, so "Maria" is unambiguous
    attendees = [f"{first} {rng.choice(LAST_NAMES)}" for first in firsts]
    owner = rng.choice(attendees)
    others = [person for person in attendees if person != owner]
    action = rng.choice(list(ACTIONS))
    met = random_date(rng, 2024, 2026)
    deadline = None if rng.random() < 0.2 else met + datetime.timedelta(days=rng.randint(1, 45))
    by = (
        rng.choice(_NO_DEADLINE)
        if deadline is None
        else rng.choice(_BY).format(date=written_date(rng, deadline))
    )
    called = owner if rng.random() < 0.6 else owner.split()[0]
    action_line = rng.choice(_ACTION_LINES).format(owner=called, task=rng.choice(ACTIONS[action]), by=by)
    topics = rng.sample(_TOPICS, rng.randint(1, 3))
    discussion = [
        rng.choice(_DISCUSSION).format(person=rng.choice(others).split()[0], topic=topic) for topic in topics
    ]
    discussion.insert(rng.randrange(len(discussion) + 1), action_line)

    header = rng.choice(_HEADERS).format(title=rng.choice(_TITLES), date=written_date(rng, met))
    names = ", ".join(rng.sample(attendees, len(attendees)))
    attendance = rng.choice(_ATTENDEES).format(names=names)
    closing = rng.choice(_CLOSINGS)
    if rng.random() < 0.5:  # prose
        parts = [header, attendance, " ".join(discussion), closing]
    else:  # bullets
        parts = [header, attendance, *(f"- {line}" for line in discussion), closing]
    text = "\n".join(part for part in parts if part)
    record = {"owner": owner, "action": action, "deadline": None if deadline is None else iso(deadline)}
    return text, record


TASK = ExampleTask(
    name="meeting_notes",
    description="meeting notes → {owner, action, deadline} of their action item",
    instruction=INSTRUCTION,
    fields=FIELDS,
    generate=make_meeting_notes,
)


def write_example_dataset(
    directory: Path, *, train_rows: int = 1000, test_rows: int = 200, seed: int = 0
) -> tuple[Path, Path]:
    """Write `train.jsonl` and `test.jsonl` (held-out) into `directory`; same seed, same files."""
    return TASK.write(directory, train_rows=train_rows, test_rows=test_rows, seed=seed)
