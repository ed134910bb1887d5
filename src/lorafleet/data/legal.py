"""A domain task: contract clauses → {clause_type, parties, obligation, deadline}.

Each row is `{"prompt": <instruction + clause>, "completion": <JSON>}` with the fields

    clause_type  one of CLAUSE_TYPES ("confidentiality", "payment", ...), implied by what the clause
                 says; its heading, when it has one, is a section number, never the type
    parties      the two parties as a list, the one bound by the obligation first, each exactly as the
                 contract names it ("Northwind Supplies Ltd"), though the clause may use the defined
                 role ("the Supplier") once the preamble has tied the name to it
    obligation   what that party must do, as its short normalised phrase from the clause type's
                 OBLIGATIONS ("return all confidential information"), worded one of several ways
    deadline     the date it must be done by, YYYY-MM-DD, or null when the clause sets none

A clause names the agreement and its effective date (a distractor for the deadline), defines the two
parties and their roles, then states the obligation in legal phrasing. Company names come from the
invoice task's vendor parts. Generated from a fixed seed: the same files every time.
"""

from __future__ import annotations

import datetime
import random
from typing import Any

from lorafleet.data.example_text import iso, random_date, written_date
from lorafleet.data.invoices import company_name
from lorafleet.data.task_generation import ExampleTask

FIELDS = ("clause_type", "parties", "obligation", "deadline")
INSTRUCTION = "Extract this contract clause as JSON (clause_type, parties, obligation, deadline)."

# Each clause type: its obligations, each a normalised phrase and the ways a clause words it
# (each reads after "shall ...").
OBLIGATIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "confidentiality": {
        "return all confidential information": (
            "return all Confidential Information received from {other}",
            "deliver back to {other} every copy of its Confidential Information",
        ),
        "destroy all confidential information": (
            "destroy all Confidential Information of {other} and certify its destruction",
            "permanently erase every record of the Confidential Information disclosed by {other}",
        ),
    },
    "payment": {
        "pay the outstanding fees": (
            "pay {other} all fees then outstanding",
            "settle every undisputed invoice issued by {other}",
        ),
        "pay the license fee": (
            "remit the annual license fee to {other}",
            "pay {other} the license fee set out in Schedule 1",
        ),
    },
    "termination": {
        "give written notice of termination": (
            "give {other} written notice of its intent to terminate",
            "notify {other} in writing that it elects to end this Agreement",
        ),
        "cease using the licensed materials": (
            "stop all use of the materials licensed by {other}",
            "discontinue any use of {other}'s licensed materials",
        ),
    },
    "indemnification": {
        "indemnify against third-party claims": (
            "indemnify and hold harmless {other} from any third-party claim",
            "defend {other} against all claims brought by third parties",
        ),
    },
    "delivery": {
        "deliver the goods": (
            "deliver the Goods to the premises of {other}",
            "ship the ordered Goods to {other}",
        ),
        "complete the installation": (
            "complete installation of the Equipment at {other}'s site",
            "finish installing the Equipment for {other}",
        ),
    },
    "insurance": {
        "maintain liability insurance": (
            "maintain general liability insurance naming {other} as additional insured",
            "keep in force a liability policy covering its work for {other}",
        ),
    },
    "audit": {
        "provide records for audit": (
            "make its books and records available to {other} for inspection",
            "give {other} access to all records needed for an audit",
        ),
    },
}
CLAUSE_TYPES = tuple(OBLIGATIONS)
ROLES = (
    ("Supplier", "Customer"),
    ("Licensor", "Licensee"),
    ("Contractor", "Client"),
    ("Seller", "Buyer"),
    ("Service Provider", "Company"),
)
AGREEMENTS = (
    "Master Services Agreement", "Supply Agreement", "License Agreement", "Consulting Agreement",
    "Purchase Agreement", "Framework Agreement",
)  # fmt: skip

_PREAMBLE = (
    'This {agreement} (the "Agreement") is made on {effective} between {first} (the "{first_role}") '
    'and {second} (the "{second_role}").',
    'Under the {agreement} dated {effective} between {first} ("{first_role}") and {second} '
    '("{second_role}"):',
    "{agreement}, effective {effective}. Parties: {first}, as {first_role}; {second}, as {second_role}.",
)
_HEADINGS = ("Section {n}.", "{n}.", "Clause {n}", "Article {n} -", "")
_DEADLINE = (
    "no later than {date}",
    "on or before {date}",
    "by {date}",
    "before {date}",
)
_NO_DEADLINE = (
    "promptly upon request",
    "within a reasonable time",
    "at all times during the Term",
    "as and when required",
)
_BOUND = ("The {role} shall {duty}", "{name} shall {duty}", "{name} (the {role}) shall {duty}")
_TAILS = (
    "",
    " Failure to do so is a material breach.",
    " This obligation survives the end of the Agreement.",
    " Notices under this clause must be in writing.",
)


def make_clause(rng: random.Random) -> tuple[str, dict[str, Any]]:
    """One contract clause and its reference record."""
    names = company_name(rng), company_name(rng)
    while names[1] == names[0]:
        names = names[0], company_name(rng)
    roles = rng.choice(ROLES)
    bound = rng.randrange(2)  # which of the two parties the clause binds
    clause_type = rng.choice(CLAUSE_TYPES)
    obligation = rng.choice(list(OBLIGATIONS[clause_type]))
    other = rng.choice((f"the {roles[1 - bound]}", names[1 - bound]))
    duty = rng.choice(OBLIGATIONS[clause_type][obligation]).format(other=other)
    effective = random_date(rng, 2023, 2025)
    deadline = None if rng.random() < 0.25 else effective + datetime.timedelta(days=rng.randint(20, 400))
    when = (
        rng.choice(_NO_DEADLINE)
        if deadline is None
        else rng.choice(_DEADLINE).format(date=written_date(rng, deadline))
    )
    preamble = rng.choice(_PREAMBLE).format(
        agreement=rng.choice(AGREEMENTS),
        effective=written_date(rng, effective),
        first=names[0],
        second=names[1],
        first_role=roles[0],
        second_role=roles[1],
    )
    sentence = rng.choice(_BOUND).format(role=roles[bound], name=names[bound], duty=duty)
    heading = rng.choice(_HEADINGS).format(n=f"{rng.randint(2, 19)}.{rng.randint(1, 9)}")
    body = f"{sentence} {when}.{rng.choice(_TAILS)}"
    text = "\n".join(part for part in (preamble, f"{heading} {body}".strip()) if part)
    record = {
        "clause_type": clause_type,
        "parties": [names[bound], names[1 - bound]],
        "obligation": obligation,
        "deadline": None if deadline is None else iso(deadline),
    }
    return text, record


TASK = ExampleTask(
    name="legal",
    description="contract clauses → {clause_type, parties, obligation, deadline}",
    instruction=INSTRUCTION,
    fields=FIELDS,
    generate=make_clause,
)
